"""Named multi-step studies of the HUSAI line, each ending in one summary: `python -m sae_lab.studies`.

    python -m sae_lab.studies adaptive_l0     [options] [hydra overrides for every sweep]
    python -m sae_lab.studies consistency_reg [options] [hydra overrides for every sweep]
    python -m sae_lab.studies adaptive_l0 --dry-run          # print the plan, run nothing

adaptive_l0, stages search -> select -> retrain -> aggregate_retrain: sweep k at d_sae 128
(experiment=adaptive_l0_search), aggregate, pick k by the rule of `sae_lab.selection`, retrain it on
8 seeds for 40 epochs (experiment=adaptive_l0_retrain sae.k=<winner>), aggregate.

consistency_reg, stages reference -> reference_sae -> lambdas -> select: train a reference SAE
(experiment=consistency_reg_reference, seed 42, lambda 0), then sweep lambda x seeds with
loss += lambda * (1 - mean_i max_j |cos(d_i, r_j)|) towards its frozen decoder
(experiment=consistency_reg), aggregate, pick lambda by the rule of `sae_lab.selection`.

Each study is a `labcore.orchestrate.Pipeline`. Each sweep is a subprocess `python -m sae_lab.train -m
...` with its own `hydra.sweep.dir` under one study directory (default
`multirun/<study>/<date_time>/`), so any launcher works (`hydra/launcher=slurm_gpu`). Running again
with `--study-dir` of an earlier run resumes it: finished stages are skipped (`--restart` redoes
them, `--only STAGE` runs one). The study writes there, atomically: `<stage>.log` per stage,
`<stage>.done.json` when a stage finished, `selection.json` (rule, candidate table with the ranking
key values, winner) and `summary.md` (`sae_lab.study_report`).
Exit status: 0 done, 1 a stage failed or a sweep left broken jobs (named in summary.md), 2 bad
usage, 3 no candidate passed the rule (nothing retrained / selected).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from labcore.orchestrate import (
    EXIT_FAILED,
    EXIT_USAGE,
    Pipeline,
    Stage,
    StageFailed,
    StopRun,
    add_pipeline_arguments,
    run_pipeline_cli,
)
from sae_lab.selection import EV_FLOOR, MAX_EV_DROP, NAN, select_adaptive_l0, select_consistency
from sae_lab.study_report import adaptive_l0_report, consistency_reg_report, write_study_report


class StudyError(RuntimeError):
    """A sweep of a study cannot be used; the message says which and why."""


# ---- what the stages do ------------------------------------------------------------------------

def sweep_command(experiment: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """`python -m sae_lab.train -m experiment=<x>` into `sweep_dir`. The study aggregates each sweep
    itself (Hydra skips its aggregate callback when a job fails), so the callback is turned off."""
    return [sys.executable, "-m", "sae_lab.train", "-m", f"experiment={experiment}", f"hydra.sweep.dir={sweep_dir}",
            "hydra.callbacks.aggregate.enabled=false", *overrides]


def aggregate_complete_sweep(name: str, sweep_dir: Path, n_resamples: int) -> dict:
    """Aggregate one sweep (the `aggregate()` result: rows, pairs, ...); refuse to go on when any job
    failed (a selection over incomplete groups would compare different numbers of seeds)."""
    from sae_lab.aggregate import aggregate
    result = aggregate(sweep_dir, n_resamples=n_resamples)
    if result["problems"]:
        named = "; ".join(f"{p} ({status}: {why})" for p, status, why in result["problems"])
        raise StudyError(f"the {name} sweep has jobs without results: {named}")
    return result


def reference_sae_dir(sweep_dir: Path) -> Path:
    """The `sae/` of the single finished job of the reference sweep."""
    from labcore.sweep import find_jobs
    from sae_lab.aggregate import REQUIRED_METRICS
    jobs = find_jobs(sweep_dir, REQUIRED_METRICS)
    ok = [j for j in jobs if j.ok and (j.path / "sae" / "cfg.json").exists()]
    if len(ok) != 1:
        raise StudyError(f"expected exactly one finished reference job under {sweep_dir}, found {len(ok)} "
                         f"of {len(jobs)}: " + "; ".join(f"{j.path} ({j.status})" for j in jobs))
    return ok[0].path / "sae"


def add_consistency_columns(rows: list[dict], pairs: dict[str, dict[tuple, float]], sweep_dir: Path,
                            n_resamples: int) -> list[dict]:
    """Per lambda group: its lambda, mean alignment to the reference, and the PWMCC gain over lambda 0
    on the same seed pairs (mean of paired differences, 95% CI resampling seeds). `pairs` is aggregate()'s
    {group: {(seed_a, seed_b): pwmcc}}."""
    import numpy as np

    from labcore.stats import pairwise_bootstrap_ci
    from labcore.sweep import find_jobs
    from sae_lab.aggregate import REQUIRED_METRICS
    jobs = [j for j in find_jobs(sweep_dir, REQUIRED_METRICS) if j.ok]
    out = []
    for row in rows:
        members = [j for j in jobs if j.group == row["group"]]
        row = {**row, "consistency_lambda": float(members[0].config["train"]["consistency_lambda"]),
               "reference_alignment_mean": float(np.mean([j.metrics["reference_alignment"] for j in members]))}
        out.append(row)
    base = next((r["group"] for r in out if r["consistency_lambda"] == 0), None)
    for row in out:
        common = sorted(set(pairs.get(row["group"], {})) & set(pairs.get(base, {}))) if base else []
        diffs = {p: pairs[row["group"]][p] - pairs[base][p] for p in common}
        # pairs share seeds: the CI resamples seeds (labcore.stats.pairwise_bootstrap_ci), not pairs
        seeds = sorted({s for p in diffs for s in p})
        matrix = np.zeros((len(seeds), len(seeds)))
        for (a, b), d in diffs.items():
            matrix[seeds.index(a), seeds.index(b)] = matrix[seeds.index(b), seeds.index(a)] = d
        complete = len(diffs) == len(seeds) * (len(seeds) - 1) // 2
        low, high = (pairwise_bootstrap_ci(matrix, n_resamples=n_resamples) if complete and len(seeds) >= 3
                     else (NAN, NAN))
        row.update(gain_vs_lambda0=float(np.mean(list(diffs.values()))) if diffs else NAN,
                   gain_ci_low=low, gain_ci_high=high)
    return sorted(out, key=lambda r: r["consistency_lambda"])


def default_study_dir(study: str) -> Path:
    return Path("multirun") / study / time.strftime("%Y-%m-%d_%H-%M-%S")


# ---- the studies as stages -----------------------------------------------------------------------

def adaptive_l0_stages(args, overrides: list[str], study_dir: Path) -> list[Stage]:
    search = sweep_command("adaptive_l0_search", study_dir / "search",
                           [*overrides, *(["sae.k=" + args.k] if args.k else []),
                            *(["seed=" + args.seeds] if args.seeds else [])])

    def retrain(values) -> list[str]:
        seeds = ["seed=" + args.retrain_seeds] if args.retrain_seeds else []
        k = values["select"]["winner"]["k"]
        return sweep_command("adaptive_l0_retrain", study_dir / "retrain", [*overrides, *seeds, f"sae.k={k}"])

    def select(values) -> dict:
        rows = aggregate_complete_sweep("search", study_dir / "search", args.resamples)["rows"]
        chosen = select_adaptive_l0(rows, args.ev_floor)
        if chosen["winner"] is None:
            raise StopRun("no k passes the selection rule, so nothing is retrained", value=chosen)
        return chosen

    def aggregate_retrain(values) -> dict:
        return aggregate_complete_sweep("retrain", study_dir / "retrain", args.resamples)["rows"][0]

    return [
        Stage("search", command=search, what="sweep k at d_sae 128"),
        Stage("select", call=select, what="aggregate the search sweep and pick k by the selection rule",
              dry_run_value={"winner": {"k": "<winner>"}}),
        Stage("retrain", command=retrain, what="retrain the selected k on the retrain seeds"),
        Stage("aggregate_retrain", call=aggregate_retrain, what="aggregate the retrain sweep"),
    ]


def consistency_reg_stages(args, overrides: list[str], study_dir: Path) -> list[Stage]:
    reference = sweep_command("consistency_reg_reference", study_dir / "reference",
                              [*overrides, *(["seed=" + args.reference_seed] if args.reference_seed else [])])

    def lambdas(values) -> list[str]:
        return sweep_command("consistency_reg", study_dir / "lambdas",
                             [*overrides, f"train.consistency_reference={values['reference_sae']}",
                              *(["train.consistency_lambda=" + args.lambdas] if args.lambdas else []),
                              *(["seed=" + args.seeds] if args.seeds else [])])

    def select(values) -> dict:
        result = aggregate_complete_sweep("lambdas", study_dir / "lambdas", args.resamples)
        rows = add_consistency_columns(result["rows"], result["pairs"], study_dir / "lambdas", args.resamples)
        chosen = select_consistency(rows, args.max_ev_drop)
        if chosen["winner"] is None:
            raise StopRun("no lambda passes the selection rule", value=chosen)
        return chosen

    return [
        Stage("reference", command=reference, what="train the reference SAE (lambda 0)"),
        Stage("reference_sae", call=lambda values: str(reference_sae_dir(study_dir / "reference")),
              what="find the reference sweep's one finished SAE",
              dry_run_value=str(study_dir / "reference" / "0" / "sae")),
        Stage("lambdas", command=lambdas, what="sweep lambda x seeds towards the reference"),
        Stage("select", call=select, what="aggregate the lambda sweep and pick lambda by the selection rule"),
    ]


StageBuilder = Callable[[argparse.Namespace, list, Path], list]
Report = Callable[[dict], tuple]
STUDIES: dict[str, tuple[str, StageBuilder, Report]] = {
    "adaptive_l0": ("Adaptive L0 study", adaptive_l0_stages, adaptive_l0_report),
    "consistency_reg": ("Consistency regularisation study", consistency_reg_stages, consistency_reg_report),
}


def run_study(study: str, args: argparse.Namespace, overrides: list[str]) -> int:
    """Run (or plan) the study's stages, then write summary.md and selection.json from whatever the
    stages produced, also when one failed."""
    title, stages, report = STUDIES[study]
    study_dir = Path(args.study_dir or default_study_dir(study)).resolve()
    pipeline = Pipeline(study, stages(args, overrides, study_dir), study_dir)
    t0 = time.time()
    status = run_pipeline_cli(pipeline, args)
    if args.dry_run or status == EXIT_USAGE:
        return status
    body, selection = report(pipeline.values)
    failure = str(pipeline.error) if isinstance(pipeline.error, StageFailed) else ""
    text = write_study_report(study_dir, title, overrides, pipeline.records, body, selection, failure, time.time() - t0)
    print(text, flush=True)
    print(f"[{study}] wrote {study_dir / 'summary.md'} (exit status {status})", flush=True)
    if status == EXIT_FAILED:
        print(f"[{study}] to resume from the failed stage, run the same command with --study-dir {study_dir}",
              flush=True)
    return status


# ---- CLI ---------------------------------------------------------------------------------------------

def _csv_of_numbers(text: str) -> str:
    """A comma list of numbers, passed to Hydra as a sweep (`sae.k=4,8`)."""
    try:
        [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return text


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    """One parser per study (argparse cannot mix subcommands with options after positionals)."""
    epilog = "Other arguments are Hydra overrides passed to every sweep (e.g. hydra/launcher=slurm_gpu)."

    def parser(study: str, what: str) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python -m sae_lab.studies {study}", description=what, epilog=epilog)
        p.add_argument("--study-dir", type=Path, default=None,
                       help=f"where everything goes; an earlier run's directory resumes it "
                            f"(default: a new multirun/{study}/<date_time>)")
        p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
        p.add_argument("overrides", nargs="*", help="Hydra overrides for every sweep")
        add_pipeline_arguments(p)
        return p

    a = parser("adaptive_l0", "k search at d_sae 128, selection by the rule, retrain of the winner")
    a.add_argument("--k", type=_csv_of_numbers, help="k candidates, e.g. 4,8 (default: the search overlay's)")
    a.add_argument("--seeds", type=_csv_of_numbers, help="search seeds (default: the search overlay's)")
    a.add_argument("--retrain-seeds", type=_csv_of_numbers, help="retrain seeds (default: the retrain overlay's)")
    a.add_argument("--ev-floor", type=float, default=EV_FLOOR, help=f"minimum mean EV (default {EV_FLOOR})")
    c = parser("consistency_reg", "reference SAE, lambda sweep, selection by the rule")
    c.add_argument("--lambdas", type=_csv_of_numbers, help="lambda values, including 0 (default: the overlay's)")
    c.add_argument("--seeds", type=_csv_of_numbers, help="seeds of the lambda sweep (default: the overlay's)")
    c.add_argument("--reference-seed", type=_csv_of_numbers,
                   help="seed of the reference SAE (default: the overlay's, 42)")
    c.add_argument("--max-ev-drop", type=float, default=MAX_EV_DROP,
                   help=f"EV budget vs lambda 0 (default {MAX_EV_DROP})")
    return {"adaptive_l0": a, "consistency_reg": c}


# keys each study sets per stage; a pass-through override of one would apply to every stage
OWNED_KEYS = {
    "adaptive_l0": {"sae.k": "--k", "seed": "--seeds / --retrain-seeds", "hydra.sweep.dir": "--study-dir"},
    "consistency_reg": {"train.consistency_lambda": "--lambdas", "seed": "--seeds / --reference-seed",
                        "train.consistency_reference": "nothing (the study trains its reference)",
                        "hydra.sweep.dir": "--study-dir"},
}


def _require_k(parser, overrides) -> None:
    """adaptive_l0 searches over sae.k: refuse an architecture without k before any stage runs."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "sae"]
    if not chosen:
        return
    from sae_lab.architectures import REGISTRY  # imports torch: only when an architecture is chosen
    if chosen[-1] in REGISTRY and "k" not in REGISTRY[chosen[-1]].config_keys:
        with_k = ", ".join(n for n, cls in REGISTRY.items() if "k" in cls.config_keys)
        parser.error(f"sae={chosen[-1]} has no sae.k, which adaptive_l0 searches over; "
                     f"use an architecture with k ({with_k})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parsers = build_parsers()
    if not argv or argv[0] not in parsers:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        print(f"error: the first argument must be one of {', '.join(parsers)}", file=sys.stderr)
        return EXIT_USAGE
    study, parser = argv[0], parsers[argv[0]]
    args = parser.parse_intermixed_args(argv[1:])
    for o in args.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in OWNED_KEYS[study]:
            parser.error(f"{key} is set by the study per stage; use {OWNED_KEYS[study][key]} instead of {o!r}")
    if study == "adaptive_l0":
        _require_k(parser, args.overrides)
    if study == "consistency_reg" and args.lambdas and 0 not in [float(v) for v in args.lambdas.split(",")]:
        parser.error("--lambdas must include 0: the EV drop and the gain are measured against it")
    return run_study(study, args, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
