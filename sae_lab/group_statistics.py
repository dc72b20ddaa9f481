"""Per-group statistics of an SAE sweep: reconstruction metrics over seeds, and seed consistency
as PWMCC between every pair of trained decoders against the same number of random dictionaries of
identical shape (seeds 1000+i), compared by `labcore.stats.compare_groups` (bootstrap CIs,
one-sided Mann-Whitney, Cohen's d, "training_signal_present" iff delta > 0 and p < 0.05)."""

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


def summarise_group(name: str, jobs: list[Job], matching: bool = True,
                    n_resamples: int = 10_000) -> tuple[dict, list, list]:
    """(summary row, trained pairs, random pairs) of one group; pairs are [(seed_a, seed_b, pwmcc)]."""
    from labcore.stats import bootstrap_ci, compare_groups
    from sae_lab.consistency import matched_fraction, pairwise_pwmcc, random_dictionary

    ok = [j for j in jobs if j.ok]
    row = {"group": name, "n_jobs": len(jobs), "n_ok": len(ok), "seeds": " ".join(str(j.seed) for j in ok)}
    sae_cfg = (ok[0].config if ok else jobs[0].config).get("sae", {})
    row.update({"architecture": sae_cfg.get("architecture"), "d_sae": sae_cfg.get("d_sae"), "k": sae_cfg.get("k")})
    for key in METRICS:
        values = [j.metrics.get(key) for j in ok if isinstance(j.metrics.get(key), (int, float))]
        row[f"{key}_mean"] = finite_mean(values)
        if key in METRICS_WITH_CI and len(values) > 1:
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = bootstrap_ci(values, n_resamples=n_resamples)
    decoders = {j.seed: d for j in ok if (d := load_decoder(j)) is not None}
    if len(decoders) < 2:
        row["conclusion"] = "too_few_seeds"
        return row, [], []
    trained_pairs = pairwise_pwmcc(decoders)
    d_sae, d_in = next(iter(decoders.values())).shape
    randoms = {RANDOM_SEED_BASE + i: random_dictionary(d_sae, d_in, seed=RANDOM_SEED_BASE + i)
               for i in range(len(decoders))}
    random_pairs = pairwise_pwmcc(randoms)
    stats = compare_groups(treatment=[p for *_, p in trained_pairs], baseline=[p for *_, p in random_pairs])
    row.update({
        "pwmcc_trained_mean": stats["treatment"]["mean"], "pwmcc_trained_ci_low": stats["treatment"]["ci_low"],
        "pwmcc_trained_ci_high": stats["treatment"]["ci_high"], "pwmcc_random_mean": stats["baseline"]["mean"],
        "pwmcc_random_ci_low": stats["baseline"]["ci_low"], "pwmcc_random_ci_high": stats["baseline"]["ci_high"],
        "pwmcc_delta": stats["delta"], "pwmcc_ratio": stats["ratio"], "mann_whitney_U": stats["U"],
        "p_value": stats["p"], "cohens_d": stats["cohens_d"], "conclusion": stats["conclusion"],
    })
    if matching and d_sae <= MAX_MATCHED_LATENTS:
        row["matched_fraction_0.7_mean"] = finite_mean(
            [matched_fraction(decoders[a], decoders[b]) for a, b, _ in trained_pairs])
    return row, trained_pairs, random_pairs
