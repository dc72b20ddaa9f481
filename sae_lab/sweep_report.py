"""The files an SAE sweep's aggregation leaves: summary.csv, summary.md, jobs.csv and per group
pairwise_<group>.csv (trained pairs), pairwise_random_<group>.csv (baseline pairs) and
pairwise_cross_<group>.csv (trained with random, which the permutation test also uses)."""

from __future__ import annotations

import re
from pathlib import Path

from labcore.sweep import DUPLICATE_RULE, MULTIRUN_FILE, Job, SweepPlan
from labcore.tables import markdown_table, write_csv

SUMMARY_COLUMNS = ["group", "n_ok", "explained_variance_mean", "l0_mean", "pwmcc_trained_mean", "pwmcc_trained_ci_low",
                   "pwmcc_trained_ci_high", "pwmcc_random_mean", "pwmcc_delta", "pwmcc_ratio", "p_value", "p_min",
                   "cohens_d", "conclusion"]

STATISTICS = (
    "PWMCC: 1/2 [mean_i max_j |cos(a_i, b_j)| + mean_j max_i |cos(a_i, b_j)|] between the decoder rows of two "
    "SAEs; trained: mean over every pair of seeds; random: the same number of random unit dictionaries of identical "
    "shape. The seed is the unit of inference (pairs share seeds, each seed is in n - 1 pairs, so pairs are not "
    "independent samples): CIs are percentile bootstrap 95% resampling seeds (the mean over the pairs of distinct "
    "drawn seeds); p: one-sided permutation test over seed labels, all C(2n, n) ways to call n of the 2n "
    "dictionaries \"trained\" (H0: trained dictionaries are no more alike than random ones; statistic: mean trained "
    "pair - mean random pair; it also uses the trained-random pairs in pairwise_cross_<group>.csv); p_min: the "
    "smallest p the design can give, 1 / C(2n, n) (3 seeds 0.05, 4 0.014, 5 0.004, 8 7.8e-5); Cohen's d: of the "
    "per-seed mean PWMCC (each seed's mean over its pairs), description. Conclusion: `insufficient_seeds` when "
    "p_min >= 0.05 (3 seeds or fewer: no outcome could be significant), else `training_signal_present` iff delta "
    "> 0 and p < 0.05, else `no_training_signal`; `too_few_seeds`: fewer than 2 decoders. The pairwise CSVs "
    "describe the pairs.")


def slug(name: str) -> str:
    """A group label as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:120] or "default"


def _rel(path: Path, sweep_dir: Path) -> str:
    return str(path.relative_to(sweep_dir)) if path.is_relative_to(sweep_dir) else str(path)


def counts_line(jobs: list[Job], plan: SweepPlan | None) -> str:
    """How many jobs were found, aggregated, broken, excluded, and launched without a directory."""
    found = [j for j in jobs if j.status != "not_started"]
    ok = [j for j in found if j.ok]
    duplicates = [j for j in found if j.status == "duplicate"]
    problems = len(found) - len(ok) - len(duplicates)
    line = f"{len(found)} jobs found, {len(ok)} aggregated, {problems} with problems"
    line += f", {len(duplicates)} excluded as duplicates." if duplicates else "."
    never = len(jobs) - len(found)
    if plan is None:
        return line
    if plan.jobs is None:
        return line + f" ({plan.note}.)"
    return line + f" The sweep launched {len(plan.jobs)} jobs ({MULTIRUN_FILE}): " + (
        f"{never} never started." if never else "all started.")


def summary_markdown(sweep_dir: Path, rows: list[dict], jobs: list[Job], plan: SweepPlan | None = None) -> str:
    problems = [j for j in jobs if not j.ok and j.status != "duplicate"]
    duplicates = [j for j in jobs if j.status == "duplicate"]
    lines = [f"# Sweep summary: `{sweep_dir}`", "", counts_line(jobs, plan), "",
             markdown_table(rows, SUMMARY_COLUMNS), "", STATISTICS]
    short = [r for r in rows if r.get("n_decoders", 0) < r.get("n_ok", 0)]
    if short:
        lines += ["", "Finished jobs without a saved decoder are left out of PWMCC: "
                  + "; ".join(f"{r['group']}: {r['n_decoders']} of {r['n_ok']}" for r in short) + "."]
    if problems:
        lines += ["", "## Problems", ""]
        lines += [f"- `{_rel(j.path, sweep_dir)}` ({j.group}, seed {j.seed}): **{j.status}**: {j.problem}"
                  for j in problems]
    if duplicates:
        lines += ["", "## Duplicates", "", f"Rule: {DUPLICATE_RULE}.", ""]
        lines += [f"- {j.group}, seed {j.seed}: `{_rel(j.path, sweep_dir)}` and `{_rel(j.duplicate_of, sweep_dir)}` "
                  f"both finished; `{_rel(j.duplicate_of, sweep_dir)}` finished later and counts, "
                  f"`{_rel(j.path, sweep_dir)}` is excluded" for j in duplicates]
    return "\n".join(lines) + "\n"


def pair_rows(pairs: list, names: tuple[str, str] = ("seed_a", "seed_b")) -> list[dict]:
    return [{names[0]: a, names[1]: b, "pwmcc": p} for a, b, p in pairs]


def write_sweep_summary(out: Path, sweep_dir: Path, rows: list[dict], jobs: list[Job],
                        pairs: dict[str, dict[str, list]], plan: SweepPlan | None = None) -> str:
    """Write every summary file into `out`; `pairs` is {group: {"trained", "random", "trained_random":
    [(seed_a, seed_b, pwmcc)]}}. Returns the Markdown summary."""
    from labcore.artifacts import atomic_write_text
    for stale in out.glob("pairwise_*.csv"):   # from an earlier aggregation with other groups
        stale.unlink()
    for group, sets in pairs.items():
        if sets["trained"]:
            write_csv(out / f"pairwise_{slug(group)}.csv", pair_rows(sets["trained"]))
            write_csv(out / f"pairwise_random_{slug(group)}.csv", pair_rows(sets["random"]))
            write_csv(out / f"pairwise_cross_{slug(group)}.csv",
                      pair_rows(sets["trained_random"], ("trained_seed", "random_seed")))
    write_csv(out / "summary.csv", rows)
    write_csv(out / "jobs.csv", [{"path": _rel(j.path, sweep_dir), "group": j.group, "seed": j.seed,
                                  "status": j.status, "problem": j.problem,
                                  "duplicate_of": _rel(j.duplicate_of, sweep_dir) if j.duplicate_of else ""}
                                 for j in jobs])
    md = summary_markdown(sweep_dir, rows, jobs, plan)
    atomic_write_text(out / "summary.md", md)
    return md
