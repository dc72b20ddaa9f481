"""`python -m sae_lab.aggregate <sweep_dir>`: one trustworthy summary of an SAE sweep.

Reads every job directory of a Hydra multirun (`labcore.sweep`), groups jobs by all overrides
except `seed`, and per group reports reconstruction metrics and seed consistency
(`sae_lab.group_statistics`): PWMCC between every pair of trained SAEs vs the same number of random
dictionaries of identical shape (seeds 1000+i), with the seed as the unit: bootstrap CIs over
seeds, a one-sided permutation test over seed labels, Cohen's d of per-seed means, and the
conclusion `insufficient_seeds` / `training_signal_present` / `no_training_signal`.

No job is left out without a word: jobs that failed, never finished, or left a corrupt or partial
metrics.json are named; so are jobs the sweep launched (multirun.yaml) that never started, and
finished jobs excluded as duplicates of a seed (`labcore.sweep.DUPLICATE_RULE`). The rest are
aggregated.

Writes into `<sweep_dir>/aggregate/` (or --out): summary.csv, summary.md, pairwise_<group>.csv,
jobs.csv (`sae_lab.sweep_report`) and figures/ (`sae_lab.sweep_figures`). Also runs at the end of
a multirun through `labcore.sweep_callback.CallOnMultirunEnd` (Hydra skips callbacks when a job
raised, so this command stands on its own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REQUIRED_METRICS = ("explained_variance", "l0", "mse")


def aggregate(sweep_dir: str | Path, out_dir: str | Path | None = None, matching: bool = True,
              n_resamples: int = 10_000, wandb_project: str | None = None, log=print) -> dict:
    """Aggregate a sweep directory; returns {"rows": [...], "pairs": {group: {(seed_a, seed_b): pwmcc}},
    "problems": [(path, status, problem)] (jobs without a usable result, never-started ones included),
    "duplicates": [(excluded path, kept path)], "out_dir": ...}."""
    from labcore.sweep import find_jobs, group_jobs, sweep_plan
    from sae_lab.group_statistics import summarise_group
    from sae_lab.sweep_figures import sweep_figures
    from sae_lab.sweep_report import write_sweep_summary

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory does not exist: {sweep_dir}")
    out = Path(out_dir) if out_dir else sweep_dir / "aggregate"
    jobs = find_jobs(sweep_dir, REQUIRED_METRICS)
    if not jobs:
        raise FileNotFoundError(f"no job directories (with .hydra/ or manifest.json) under {sweep_dir}")
    rows, pairs = [], {}
    for name, members in group_jobs(jobs).items():
        row, pairs[name] = summarise_group(name, members, matching=matching, n_resamples=n_resamples)
        rows.append(row)
    md = write_sweep_summary(out, sweep_dir, rows, jobs, pairs, plan=sweep_plan(sweep_dir))
    figures = sweep_figures(rows, jobs, out / "figures")
    for j in jobs:
        if not j.ok:   # duplicates too: their problem names the job counted instead
            log(f"[aggregate] {j.status}: {j.path} ({j.problem})")
    problems = [j for j in jobs if not j.ok and j.status != "duplicate"]
    log(md)
    log(f"[aggregate] wrote {out}")
    if wandb_project:
        from labcore.loggers import wandb_summary_run
        wandb_summary_run(wandb_project, sweep_dir, out, rows, figures)
    return {"rows": rows, "pairs": {g: {(a, b): p for a, b, p in sets["trained"]} for g, sets in pairs.items()},
            "problems": [(str(j.path), j.status, j.problem) for j in problems],
            "duplicates": [(str(j.path), str(j.duplicate_of)) for j in jobs if j.status == "duplicate"], "out_dir": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sae_lab.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory, e.g. multirun/sae_lab/<date>")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <sweep_dir>/aggregate)")
    parser.add_argument("--no-matching", action="store_true", help="skip the Hungarian matched-fraction metric")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--wandb", metavar="PROJECT", default=None, help="also log a W&B summary run to PROJECT")
    args = parser.parse_args(argv)
    try:
        result = aggregate(args.sweep_dir, args.out, matching=not args.no_matching, n_resamples=args.resamples,
                           wandb_project=args.wandb)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if not any(r.get("n_ok") for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
