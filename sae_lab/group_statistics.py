"""Per-group statistics of an SAE sweep: reconstruction metrics over seeds, and seed consistency:
PWMCC between every pair of trained decoders against the same number of random dictionaries of
identical shape (seeds 1000+i), compared by `labcore.stats.compare_pairwise_groups` with the seed as
the unit: bootstrap CIs over seeds, a one-sided permutation test over seed labels (trained vs
random), Cohen's d of per-seed mean PWMCC, and the conclusion "insufficient_seeds" (the design cannot
reach p < 0.05), "training_signal_present" (delta > 0 and p < 0.05) or "no_training_signal"."""

from __future__ import annotations

import math

from labcore.sweep import Job

RANDOM_SEED_BASE = 1000
METRICS = ("explained_variance", "l0", "mse", "dead_fraction", "acc_with_sae", "loss_recovered", "wall_time_s")
METRICS_WITH_CI = ("explained_variance", "l0")
MAX_MATCHED_LATENTS = 4096   # Hungarian matching is O(n^3): the matched fraction is left out above this


def load_decoder(job: Job):
    """The job's SAE decoder [d_sae, d_in] (SAELens layout, rows are latents), or None if it saved none."""
    from safetensors.torch import load_file
    path = job.path / "sae" / "sae_weights.safetensors"
    if not path.exists():
        return None
    return load_file(path)["W_dec"]


def finite_mean(values) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def trained_decoders(ok: list[Job]) -> dict:
    """{seed: decoder} of the finished jobs that saved one. Seeds must be unique: a dict would keep one
    of two decoders of one seed without a word, so duplicates must have been settled before
    (`labcore.sweep.mark_duplicates`, which `find_jobs` applies)."""
    seen: dict[str, Job] = {}
    for j in ok:
        if str(j.seed) in seen:
            raise ValueError(f"two finished jobs with seed {j.seed} in one group: {seen[str(j.seed)].path} and "
                             f"{j.path}; labcore.sweep.mark_duplicates decides which one counts")
        seen[str(j.seed)] = j
    return {j.seed: d for j in ok if (d := load_decoder(j)) is not None}


def pwmcc_matrix(decoders: dict, randoms: dict):
    """(PWMCC matrix over trained then random dictionaries, {"trained", "random", "trained_random"}:
    [(seed_a, seed_b, pwmcc)]). The cross pairs (trained with random) are what the permutation test
    needs: under its null a trained dictionary could as well have been a random one."""
    import numpy as np

    from sae_lab.consistency import pairwise_pwmcc
    # (kind, seed) keys: a trained seed may equal a random one
    both = {("trained", s): d for s, d in decoders.items()} | {("random", s): r for s, r in randoms.items()}
    index = {k: i for i, k in enumerate(both)}
    matrix = np.zeros((len(both), len(both)))
    pairs: dict[str, list] = {"trained": [], "random": [], "trained_random": []}
    for (kind_a, a), (kind_b, b), value in pairwise_pwmcc(both):
        i, j = index[(kind_a, a)], index[(kind_b, b)]
        matrix[i, j] = matrix[j, i] = value
        pairs[kind_a if kind_a == kind_b else "trained_random"].append((a, b, value))
    return matrix, pairs


def summarise_group(name: str, jobs: list[Job], matching: bool = True,
                    n_resamples: int = 10_000) -> tuple[dict, dict[str, list]]:
    """(summary row, pairs) of one group; pairs is {"trained", "random", "trained_random"}:
    [(seed_a, seed_b, pwmcc)], empty below two trained decoders."""
    from labcore.stats import bootstrap_ci, compare_pairwise_groups
    from sae_lab.consistency import matched_fraction, random_dictionary

    ok = [j for j in jobs if j.ok]
    row = {"group": name, "n_jobs": len(jobs), "n_ok": len(ok), "seeds": " ".join(str(j.seed) for j in ok)}
    sae_cfg = (ok[0].config if ok else jobs[0].config).get("sae", {})
    row.update({"architecture": sae_cfg.get("architecture"), "d_sae": sae_cfg.get("d_sae"), "k": sae_cfg.get("k")})
    for key in METRICS:
        values = [j.metrics.get(key) for j in ok if isinstance(j.metrics.get(key), (int, float))]
        row[f"{key}_mean"] = finite_mean(values)
        if key in METRICS_WITH_CI and len(values) > 1:
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = bootstrap_ci(values, n_resamples=n_resamples)
    decoders = trained_decoders(ok)
    row["n_decoders"] = len(decoders)   # below n_ok when a finished job saved no decoder
    if len(decoders) < 2:
        row["conclusion"] = "too_few_seeds"
        return row, {"trained": [], "random": [], "trained_random": []}
    d_sae, d_in = next(iter(decoders.values())).shape
    randoms = {RANDOM_SEED_BASE + i: random_dictionary(d_sae, d_in, seed=RANDOM_SEED_BASE + i)
               for i in range(len(decoders))}
    matrix, pairs = pwmcc_matrix(decoders, randoms)
    stats = compare_pairwise_groups(matrix, n_treatment=len(decoders), n_resamples=n_resamples)
    row.update({
        "pwmcc_trained_mean": stats["treatment"]["mean"], "pwmcc_trained_ci_low": stats["treatment"]["ci_low"],
        "pwmcc_trained_ci_high": stats["treatment"]["ci_high"], "pwmcc_random_mean": stats["baseline"]["mean"],
        "pwmcc_random_ci_low": stats["baseline"]["ci_low"], "pwmcc_random_ci_high": stats["baseline"]["ci_high"],
        "pwmcc_delta": stats["delta"], "pwmcc_ratio": stats["ratio"], "p_value": stats["p"],
        "p_min": stats["p_min"], "cohens_d": stats["cohens_d"], "conclusion": stats["conclusion"],
    })
    if matching and d_sae <= MAX_MATCHED_LATENTS:
        row["matched_fraction_0.7_mean"] = finite_mean(
            [matched_fraction(decoders[a], decoders[b]) for a, b, _ in pairs["trained"]])
    return row, pairs
