"""The files an SAE sweep's aggregation leaves: summary.csv, summary.md, jobs.csv and one
pairwise_<group>.csv (trained) and pairwise_random_<group>.csv (baseline) per group."""

from __future__ import annotations

import re
from pathlib import Path

from labcore.sweep import Job
from labcore.tables import markdown_table, write_csv

SUMMARY_COLUMNS = ["group", "n_ok", "explained_variance_mean", "l0_mean", "pwmcc_trained_mean", "pwmcc_trained_ci_low",
                   "pwmcc_trained_ci_high", "pwmcc_random_mean", "pwmcc_delta", "pwmcc_ratio", "p_value", "cohens_d",
                   "conclusion"]


def slug(name: str) -> str:
    """A group label as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")[:120] or "default"


def summary_markdown(sweep_dir: Path, rows: list[dict], jobs: list[Job]) -> str:
    problems = [j for j in jobs if not j.ok]
    lines = [f"# Sweep summary: `{sweep_dir}`", "",
             f"{len(jobs)} jobs found, {len(jobs) - len(problems)} aggregated, {len(problems)} with problems.", "",
             markdown_table(rows, SUMMARY_COLUMNS), "",
             "PWMCC: mean over pairs of seeds of 1/2 [mean_i max_j |cos(a_i, b_j)| + mean_j max_i |cos(a_i, b_j)|] "
             "between decoder rows; random: the same number of random unit dictionaries of identical shape. "
             "CIs: bootstrap percentile 95%; p: one-sided Mann-Whitney U (trained > random); "
             "conclusion `training_signal_present` iff delta > 0 and p < 0.05."]
    if problems:
        lines += ["", "## Problems", ""]
        lines += [f"- `{j.path.relative_to(sweep_dir)}` ({j.group}, seed {j.seed}): **{j.status}**: {j.problem}"
                  for j in problems]
    return "\n".join(lines) + "\n"


def write_sweep_summary(out: Path, sweep_dir: Path, rows: list[dict], jobs: list[Job],
                        pairs: dict[str, tuple[list, list]]) -> str:
    """Write every summary file into `out`; `pairs` is {group: (trained pairs, random pairs)}.
    Returns the Markdown summary."""
    from labcore.artifacts import atomic_write_text
    for stale in out.glob("pairwise_*.csv"):   # from an earlier aggregation with other groups
        stale.unlink()
    for group, (trained, random) in pairs.items():
        if trained:
            write_csv(out / f"pairwise_{slug(group)}.csv", [{"seed_a": a, "seed_b": b, "pwmcc": p} for a, b, p in trained])
            write_csv(out / f"pairwise_random_{slug(group)}.csv",
                      [{"seed_a": a, "seed_b": b, "pwmcc": p} for a, b, p in random])
    write_csv(out / "summary.csv", rows)
    write_csv(out / "jobs.csv", [{"path": str(j.path.relative_to(sweep_dir)), "group": j.group, "seed": j.seed,
                                  "status": j.status, "problem": j.problem} for j in jobs])
    md = summary_markdown(sweep_dir, rows, jobs)
    atomic_write_text(out / "summary.md", md)
    return md
