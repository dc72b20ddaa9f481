"""Named multi-step studies of the HUSAI line, each ending in one summary: `python -m sae_lab.studies`.

    python -m sae_lab.studies adaptive_l0     [options] [hydra overrides for every sweep]
    python -m sae_lab.studies consistency_reg [options] [hydra overrides for every sweep]
    python -m sae_lab.studies adaptive_l0 --dry-run          # print the commands, run nothing

adaptive_l0: sweep k at d_sae 128 (experiment=adaptive_l0_search), aggregate, pick k by the rule
below, retrain it on 8 seeds for 40 epochs (experiment=adaptive_l0_retrain sae.k=<winner>), aggregate.

consistency_reg: train a reference SAE (experiment=consistency_reg_reference, seed 42, lambda 0),
then sweep lambda x seeds with loss += lambda * (1 - mean_i max_j |cos(d_i, r_j)|) towards its
frozen decoder (experiment=consistency_reg), aggregate, pick lambda by the rule below.

Selection rules (pure functions, `select_adaptive_l0` / `select_consistency`):
* a group is ranked by (trained PWMCC CI low - random PWMCC CI high, then PWMCC delta, then mean
  EV), larger first; the first element is the margin by which the trained pairs' 95% CI clears the
  random band. A later key only decides when the earlier ones are exactly equal.
* adaptive_l0: only k with mean EV >= 0.20 compete; remaining exact ties go to the smaller k.
* consistency_reg: only lambda whose mean EV is at most 0.05 below lambda 0's compete (lambda 0
  itself always does, so "no regularisation" can win); then mean alignment to the reference breaks
  ties, then the smaller lambda.

Each sweep is a subprocess `python -m sae_lab.train -m ...` with its own `hydra.sweep.dir` under one
study directory (default `multirun/<study>/<date_time>/`), so any launcher works
(`hydra/launcher=slurm_gpu`). The study writes there, atomically: `<stage>.log` per sweep,
`selection.json` (rule, candidate table with the ranking key values, winner) and `summary.md`.
Exit status: 0 done, 1 a sweep failed or left broken jobs (named in summary.md), 2 bad usage,
3 no candidate passed the rule (nothing retrained / selected).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

EV_FLOOR = 0.20      # adaptive_l0: a k must explain at least this much variance to compete
MAX_EV_DROP = 0.05   # consistency_reg: a lambda may cost at most this much EV vs lambda 0
NAN = float("nan")

EXIT_OK, EXIT_FAILED, EXIT_NO_WINNER = 0, 1, 3


class StudyError(RuntimeError):
    """A step of a study failed; the message says which and where to look."""


# ----------------------------------------------------------------------------------------------
# Selection rules: pure functions of aggregate rows (dicts as `sae_lab.aggregate.aggregate` returns)
# ----------------------------------------------------------------------------------------------

def _num(row: dict, key: str) -> float:
    """A row value as a float; missing or None (aggregate leaves PWMCC out below 2 seeds) is nan."""
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else NAN


def margin(row: dict) -> float:
    """Trained PWMCC CI low - random PWMCC CI high: > 0 when the two 95% CIs do not overlap."""
    return _num(row, "pwmcc_trained_ci_low") - _num(row, "pwmcc_random_ci_high")


def ranking_key(row: dict) -> tuple[float, float, float]:
    """(margin, delta, EV), compared in order, larger is better."""
    return margin(row), _num(row, "pwmcc_delta"), _num(row, "explained_variance_mean")


def _tiebreak(value: float) -> float:
    """Tie-break values sort last when undefined (nan would compare as neither larger nor smaller)."""
    return value if math.isfinite(value) else -math.inf


def _rank(rows: list[dict], why_not: Callable[[dict], str], key: Callable[[dict], tuple]) -> list[dict]:
    """Candidate table: each row with `margin`, `eligible`, `excluded_because` and `rank` (1 = winner).

    Rows whose ranking key is not finite (too few seeds for PWMCC) are excluded: nan never compares,
    so it would silently land anywhere in a sort.
    """
    table = []
    for row in rows:
        reason = why_not(row)
        if not reason and not all(math.isfinite(v) for v in ranking_key(row)):
            reason = "no PWMCC CI (fewer than 3 finished seeds: one seed pair has no CI)"
        table.append({**row, "margin": margin(row), "eligible": not reason, "excluded_because": reason, "rank": None})
    ranked = sorted((c for c in table if c["eligible"]), key=key, reverse=True)
    for i, c in enumerate(ranked, 1):
        c["rank"] = i
    return sorted(table, key=lambda c: (c["rank"] is None, c["rank"] or 0))


def select_adaptive_l0(rows: list[dict], ev_floor: float = EV_FLOOR) -> dict:
    """Among k with mean EV >= ev_floor, the best (margin, delta, EV); exact ties go to the smaller k."""
    def why_not(row):
        ev = _num(row, "explained_variance_mean")
        return "" if ev >= ev_floor else f"mean EV {ev:.4g} < floor {ev_floor:g}"

    # -k last: among exact ties the sparser (cheaper, more interpretable) dictionary wins
    table = _rank(rows, why_not, key=lambda r: (*ranking_key(r), _tiebreak(-_num(r, "k"))))
    winner = next((c for c in table if c["rank"] == 1), None)
    rule = (f"among k with mean explained variance >= {ev_floor:g}, rank by (pwmcc_trained_ci_low - "
            f"pwmcc_random_ci_high, then pwmcc_delta, then explained_variance_mean), larger first; "
            f"exact ties: smaller k")
    reason = (f"k={winner['k']} ranks first" if winner else
              f"no k passes the rule: none has mean explained variance >= {ev_floor:g} and a PWMCC CI")
    return {"rule": rule, "ev_floor": ev_floor, "candidates": table, "winner": winner, "reason": reason}


def select_consistency(rows: list[dict], max_ev_drop: float = MAX_EV_DROP) -> dict:
    """Among lambda whose mean EV is <= max_ev_drop below lambda 0's, the best (margin, delta, EV,
    alignment to the reference); exact ties go to the smaller lambda. Rows need `consistency_lambda`
    and `reference_alignment_mean` besides the aggregate keys."""
    baseline = next((r for r in rows if _num(r, "consistency_lambda") == 0), None)
    if baseline is None:
        raise ValueError("no lambda = 0 group: the EV drop and the gain are measured against it")
    ev0 = _num(baseline, "explained_variance_mean")

    def why_not(row):
        drop = ev0 - _num(row, "explained_variance_mean")
        # the tolerance keeps a drop of exactly the budget inside it (0.80 - 0.75 = 0.05000000000000004)
        return "" if drop <= max_ev_drop + 1e-12 else f"EV drop {drop:.4g} vs lambda 0 > {max_ev_drop:g}"

    table = _rank(rows, why_not, key=lambda r: (*ranking_key(r), _tiebreak(_num(r, "reference_alignment_mean")),
                                                  -_num(r, "consistency_lambda")))
    for c in table:
        c["ev_drop"] = ev0 - _num(c, "explained_variance_mean")
        c["margin_gain"] = c["margin"] - margin(baseline)
    winner = next((c for c in table if c["rank"] == 1), None)
    rule = (f"among lambda with mean explained variance at most {max_ev_drop:g} below lambda 0's, rank by "
            f"(pwmcc_trained_ci_low - pwmcc_random_ci_high, then pwmcc_delta, then explained_variance_mean, "
            f"then reference_alignment_mean), larger first; exact ties: smaller lambda")
    reason = (f"lambda={winner['consistency_lambda']:g} ranks first" if winner else
              "no lambda passes the rule (lambda 0 itself has no PWMCC CI)")
    return {"rule": rule, "max_ev_drop": max_ev_drop, "baseline_explained_variance": ev0,
            "candidates": table, "winner": winner, "reason": reason}


# ----------------------------------------------------------------------------------------------
# Running sweeps
# ----------------------------------------------------------------------------------------------

def sweep_command(experiment: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """`python -m sae_lab.train -m experiment=<x>` into `sweep_dir`. The study aggregates each sweep
    itself (Hydra skips its aggregate callback when a job fails), so the callback is turned off."""
    return [sys.executable, "-m", "sae_lab.train", "-m", f"experiment={experiment}", f"hydra.sweep.dir={sweep_dir}",
            "hydra.callbacks.aggregate.enabled=false", *overrides]


def run_logged(cmd: list[str], log_path: Path) -> int:
    """Run `cmd`, streaming its output to the console and to `log_path`; return its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[study] $ {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env) as proc:
        log.write(f"$ {shlex.join(cmd)}\n")
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    return proc.returncode


def run_stage(name: str, cmd: list[str], study_dir: Path, stages: list[dict]) -> None:
    """Run one sweep, recording its command and wall time for the summary; StudyError if it fails."""
    t0 = time.time()
    rc = run_logged(cmd, study_dir / f"{name}.log")
    stages.append({"stage": name, "command": cmd, "exit_status": rc, "wall_s": round(time.time() - t0, 1)})
    print(f"[study] {name}: exit {rc} after {stages[-1]['wall_s']:.0f} s", flush=True)
    if rc != 0:
        raise StudyError(f"the {name} sweep exited with status {rc}; its output is in {study_dir / f'{name}.log'}")


def aggregate_stage(name: str, sweep_dir: Path, n_resamples: int) -> dict:
    """Aggregate one sweep (the `aggregate()` result: rows, pairs, ...); refuse to go on when any job
    failed (a selection over incomplete groups would compare different numbers of seeds)."""
    from sae_lab.aggregate import aggregate
    result = aggregate(sweep_dir, n_resamples=n_resamples)
    if result["problems"]:
        named = "; ".join(f"{p} ({status}: {why})" for p, status, why in result["problems"])
        raise StudyError(f"the {name} sweep has jobs without results: {named}")
    return result


def default_study_dir(study: str) -> Path:
    return Path("multirun") / study / time.strftime("%Y-%m-%d_%H-%M-%S")


# ----------------------------------------------------------------------------------------------
# Reporting helpers
# ----------------------------------------------------------------------------------------------

def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def md_table(rows: list[dict], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]


def ci(row: dict, prefix: str) -> str:
    """`mean [low, high]` of an aggregate statistic, e.g. prefix "pwmcc_trained"."""
    mean, low, high = (fmt(_num(row, f"{prefix}_{s}")) for s in ("mean", "ci_low", "ci_high"))
    return f"{mean} [{low}, {high}]"


def versus_random(row: dict) -> str:
    """One sentence: trained PWMCC vs its matched random baseline, with CIs, p, d and conclusion."""
    return (f"trained PWMCC {ci(row, 'pwmcc_trained')} vs random {ci(row, 'pwmcc_random')} "
            f"(95% bootstrap CIs; {fmt(row.get('n_ok'))} seeds), delta {fmt(_num(row, 'pwmcc_delta'))}, "
            f"ratio {fmt(_num(row, 'pwmcc_ratio'))}, one-sided Mann-Whitney p = {fmt(_num(row, 'p_value'))}, "
            f"Cohen's d = {fmt(_num(row, 'cohens_d'))}: **{row.get('conclusion')}**")


def header(title: str, study_dir: Path, overrides: list[str], stages: list[dict], wall_s: float) -> list[str]:
    lines = [f"# {title}", "", f"Study directory: `{study_dir}`; wall time {wall_s:.0f} s.", ""]
    lines.append("Overrides passed to every sweep: " + (" ".join(f"`{o}`" for o in overrides) if overrides
                                                        else "none (the study as specified)"))
    lines += ["", "Sweeps run:", "", "```"]
    for st in stages:
        lines += [f"# {st['stage']}: exit {st['exit_status']}, {st['wall_s']:.0f} s", shlex.join(st["command"])]
    return lines + ["```", ""]


def json_table(selection: dict, cols: list[str]) -> dict:
    """The candidates and the winner of a selection reduced to the table's columns, for selection.json."""
    def pick(r):
        return None if r is None else {c: r.get(c) for c in cols}
    return {"candidates": [pick(r) for r in selection["candidates"]], "winner": pick(selection["winner"])}


def run_study(title: str, study_dir: Path, overrides: list[str], steps: Callable[[list, list, dict], int]) -> int:
    """Run `steps(stages, body, selection)` and always leave summary.md (and selection.json once a
    selection was made), also when a step failed: the reader sees how far the study got and why."""
    from labcore.artifacts import atomic_write_json, atomic_write_text
    t0 = time.time()
    stages: list[dict] = []
    body: list[str] = []
    selection: dict = {}
    try:
        status = steps(stages, body, selection)
    except StudyError as e:
        body += ["", f"**Stopped: {e}**"]
        status = EXIT_FAILED
    if selection:
        atomic_write_json(study_dir / "selection.json", {**selection, "stages": stages})
    text = "\n".join(header(title, study_dir, overrides, stages, time.time() - t0) + body) + "\n"
    atomic_write_text(study_dir / "summary.md", text)
    print(text, flush=True)
    print(f"[study] wrote {study_dir / 'summary.md'} (exit status {status})", flush=True)
    return status


# ----------------------------------------------------------------------------------------------
# Study 1: adaptive L0
# ----------------------------------------------------------------------------------------------

SEARCH_COLS = ["group", "k", "n_ok", "explained_variance_mean", "l0_mean", "pwmcc_trained_mean",
               "pwmcc_trained_ci_low", "pwmcc_random_ci_high", "margin", "pwmcc_delta", "p_value",
               "eligible", "excluded_because", "rank"]


def adaptive_l0(args, overrides: list[str]) -> int:
    study_dir = Path(args.study_dir or default_study_dir("adaptive_l0")).resolve()
    search = sweep_command("adaptive_l0_search", study_dir / "search",
                           [*overrides, *(["sae.k=" + args.k] if args.k else []),
                            *(["seed=" + args.seeds] if args.seeds else [])])

    def retrain(k) -> list[str]:
        seeds = ["seed=" + args.retrain_seeds] if args.retrain_seeds else []
        return sweep_command("adaptive_l0_retrain", study_dir / "retrain", [*overrides, *seeds, f"sae.k={k}"])

    if args.dry_run:
        print(shlex.join(search))
        print("# then, with <winner> chosen from search/aggregate/summary.csv by the selection rule:")
        print(shlex.join(retrain("<winner>")))
        return EXIT_OK

    def steps(stages: list, body: list, selection: dict) -> int:
        run_stage("search", search, study_dir, stages)
        rows = aggregate_stage("search", study_dir / "search", args.resamples)["rows"]
        chosen = select_adaptive_l0(rows, args.ev_floor)
        selection.update({"study": "adaptive_l0", **chosen, **json_table(chosen, SEARCH_COLS)})
        body += ["## Search", ""] + md_table(selection["candidates"], SEARCH_COLS)
        body += ["", f"Rule: {selection['rule']}.", "", f"Selection: {selection['reason']}.", ""]
        if selection["winner"] is None:
            body.append("**Stopped: no k passes the selection rule, so nothing was retrained.**")
            return EXIT_NO_WINNER
        k = int(selection["winner"]["k"])
        run_stage("retrain", retrain(k), study_dir, stages)
        row = aggregate_stage("retrain", study_dir / "retrain", args.resamples)["rows"][0]
        selection["retrain"] = dict(row)
        body += [f"## Retrain of k = {k}", "",
                 f"Explained variance {ci(row, 'explained_variance')}, L0 {fmt(_num(row, 'l0_mean'))}; "
                 f"{versus_random(row)}.", "",
                 "## Conclusion", "", adaptive_l0_conclusion(k, chosen["winner"], row)
                 + edge_note("k", k, searched(chosen, "k"))]
        return EXIT_OK

    return run_study("Adaptive L0 study", study_dir, overrides, steps)


def seed_overlap(search_row: dict, retrain_row: dict) -> str:
    """Whether the retrain is a fresh test: seeds that also selected k favour k by construction."""
    shared = set(str(search_row.get("seeds", "")).split()) & set(str(retrain_row.get("seeds", "")).split())
    return "disjoint from the search's" if not shared else f"{len(shared)} of them also used in the search"


def edge_note(name: str, value: float, grid: list[float]) -> str:
    """A winner at the end of the searched grid says the rule's optimum may lie outside the grid."""
    if len(grid) < 2 or min(grid) < value < max(grid):
        return ""
    end = "smallest" if value == min(grid) else "largest"
    return (f" {name} = {value:g} is the {end} value searched, so the rule's optimum may lie beyond the grid; "
            f"a wider grid would tell.")


def adaptive_l0_conclusion(k: int, winner: dict, row: dict) -> str:
    held = row.get("conclusion") == "training_signal_present"
    return (f"The search selects k = {k} (search: margin {fmt(winner['margin'])}, "
            f"delta {fmt(_num(winner, 'pwmcc_delta'))}, EV {fmt(_num(winner, 'explained_variance_mean'))}). "
            f"Retrained on {fmt(row.get('n_ok'))} seeds ({seed_overlap(winner, row)}), its decoders "
            + ("agree more than random dictionaries of the same shape" if held else
               "do **not** agree significantly more than random dictionaries of the same shape")
            + f" (margin {fmt(margin(row))}: the trained 95% CI "
            + ("clears" if margin(row) > 0 else "overlaps") + " the random band). "
            "CIs treat the seed pairs as independent, although pairs share seeds, so they are somewhat narrow.")


def searched(selection: dict, key: str) -> list[float]:
    """Every value searched, eligible or not: a winner next to excluded values is bounded by the rule."""
    return [_num(c, key) for c in selection["candidates"]]


# ----------------------------------------------------------------------------------------------
# Study 2: consistency regularisation
# ----------------------------------------------------------------------------------------------

LAMBDA_COLS = ["group", "consistency_lambda", "n_ok", "explained_variance_mean", "ev_drop", "pwmcc_trained_mean",
               "pwmcc_trained_ci_low", "pwmcc_random_ci_high", "margin", "margin_gain", "pwmcc_delta",
               "gain_vs_lambda0", "gain_ci_low", "gain_ci_high", "reference_alignment_mean", "p_value",
               "cohens_d", "eligible", "excluded_because", "rank"]


def reference_sae_dir(sweep_dir: Path) -> Path:
    """The `sae/` of the single finished job of the reference sweep."""
    from sae_lab.aggregate import find_jobs
    jobs = find_jobs(sweep_dir)
    ok = [j for j in jobs if j.status == "ok" and (j.path / "sae" / "cfg.json").exists()]
    if len(ok) != 1:
        raise StudyError(f"expected exactly one finished reference job under {sweep_dir}, found {len(ok)} "
                         f"of {len(jobs)}: " + "; ".join(f"{j.path} ({j.status})" for j in jobs))
    return ok[0].path / "sae"


def add_consistency_columns(rows: list[dict], pairs: dict[str, dict[tuple, float]], sweep_dir: Path,
                            n_resamples: int) -> list[dict]:
    """Per lambda group: its lambda, mean alignment to the reference, and the PWMCC gain over lambda 0
    on the same seed pairs (mean of paired differences, bootstrap 95% CI). `pairs` is aggregate()'s
    {group: {(seed_a, seed_b): pwmcc}}."""
    import numpy as np

    from labcore.stats import bootstrap_ci
    from sae_lab.aggregate import find_jobs
    jobs = [j for j in find_jobs(sweep_dir) if j.status == "ok"]
    out = []
    for row in rows:
        members = [j for j in jobs if j.group == row["group"]]
        row = {**row, "consistency_lambda": float(members[0].config["train"]["consistency_lambda"]),
               "reference_alignment_mean": float(np.mean([j.metrics["reference_alignment"] for j in members]))}
        out.append(row)
    base = next((r["group"] for r in out if r["consistency_lambda"] == 0), None)
    for row in out:
        common = sorted(set(pairs.get(row["group"], {})) & set(pairs.get(base, {}))) if base else []
        diffs = [pairs[row["group"]][p] - pairs[base][p] for p in common]
        low, high = bootstrap_ci(diffs, n_resamples=n_resamples) if len(diffs) >= 2 else (NAN, NAN)
        row.update(gain_vs_lambda0=float(np.mean(diffs)) if diffs else NAN, gain_ci_low=low, gain_ci_high=high)
    return sorted(out, key=lambda r: r["consistency_lambda"])


def consistency_reg(args, overrides: list[str]) -> int:
    study_dir = Path(args.study_dir or default_study_dir("consistency_reg")).resolve()
    reference = sweep_command("consistency_reg_reference", study_dir / "reference",
                              [*overrides, *(["seed=" + args.reference_seed] if args.reference_seed else [])])

    def lambdas(ref) -> list[str]:
        return sweep_command("consistency_reg", study_dir / "lambdas",
                             [*overrides, f"train.consistency_reference={ref}",
                              *(["train.consistency_lambda=" + args.lambdas] if args.lambdas else []),
                              *(["seed=" + args.seeds] if args.seeds else [])])

    if args.dry_run:
        print(shlex.join(reference))
        print(shlex.join(lambdas(study_dir / "reference" / "0" / "sae")))
        return EXIT_OK

    def steps(stages: list, body: list, selection: dict) -> int:
        run_stage("reference", reference, study_dir, stages)
        ref_dir = reference_sae_dir(study_dir / "reference")
        run_stage("lambdas", lambdas(ref_dir), study_dir, stages)
        result = aggregate_stage("lambdas", study_dir / "lambdas", args.resamples)
        rows = add_consistency_columns(result["rows"], result["pairs"], study_dir / "lambdas", args.resamples)
        chosen = select_consistency(rows, args.max_ev_drop)
        selection.update({"study": "consistency_reg", "reference": str(ref_dir), **chosen,
                          **json_table(chosen, LAMBDA_COLS)})
        body += [f"Reference SAE: `{ref_dir}` (lambda 0).", "", "## Lambda sweep", ""]
        body += md_table(selection["candidates"], LAMBDA_COLS)
        body += ["", "gain_vs_lambda0: mean over the same seed pairs of PWMCC(lambda) - PWMCC(lambda 0), "
                 "bootstrap 95% CI (pairs share seeds, so the CI is somewhat narrow). "
                 "reference_alignment: mean_i max_j |cos(d_i, r_j)| to the reference decoder.", "",
                 f"Rule: {selection['rule']}.", "", f"Selection: {selection['reason']}.", ""]
        if selection["winner"] is None:
            body.append("**Stopped: no lambda passes the selection rule.**")
            return EXIT_NO_WINNER
        lam = chosen["winner"]["consistency_lambda"]
        baseline = next(c for c in chosen["candidates"] if c["consistency_lambda"] == 0)
        body += ["## Conclusion", "", consistency_conclusion(chosen["winner"], baseline)
                 + (edge_note("lambda", lam, searched(chosen, "consistency_lambda")) if lam > 0 else "")]
        return EXIT_OK

    return run_study("Consistency regularisation study", study_dir, overrides, steps)


def consistency_conclusion(w: dict, baseline: dict) -> str:
    lam = w["consistency_lambda"]
    if lam == 0:
        return ("No lambda > 0 beats the unregularised baseline on the ranking key within the EV budget: "
                "lambda 0 is selected, i.e. consistency regularisation did not help here. "
                f"At lambda 0, {versus_random(w)}.")
    excludes = w["gain_ci_low"] > 0 or w["gain_ci_high"] < 0
    # the gain in units of what training already achieves over random, to judge its size, not only its sign
    relative = w["gain_vs_lambda0"] / _num(baseline, "pwmcc_delta")
    return (f"lambda = {lam:g} is selected: PWMCC gain over lambda 0 {fmt(w['gain_vs_lambda0'])} "
            f"[{fmt(w['gain_ci_low'])}, {fmt(w['gain_ci_high'])}] (the CI " + ("excludes" if excludes else "includes")
            + f" 0; {relative:.1%} of lambda 0's PWMCC delta over random), margin gain {fmt(w['margin_gain'])}, "
            f"EV drop {fmt(w['ev_drop'])}, alignment to the reference {fmt(w['reference_alignment_mean'])} "
            f"(lambda 0: {fmt(baseline['reference_alignment_mean'])}). At lambda = {lam:g}, {versus_random(w)}. "
            "Every regularised seed is pulled towards the same reference, so part of any gain is agreement imposed "
            "by that shared target, not found by training alone.")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

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
                       help=f"where everything goes (default: multirun/{study}/<date_time>)")
        p.add_argument("--dry-run", action="store_true", help="print the sweep commands and run nothing")
        p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
        p.add_argument("overrides", nargs="*", help="Hydra overrides for every sweep")
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
STUDIES = {"adaptive_l0": adaptive_l0, "consistency_reg": consistency_reg}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parsers = build_parsers()
    if not argv or argv[0] not in parsers:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        print(f"error: the first argument must be one of {', '.join(parsers)}", file=sys.stderr)
        return 2
    study, parser = argv[0], parsers[argv[0]]
    args = parser.parse_intermixed_args(argv[1:])
    for o in args.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in OWNED_KEYS[study]:
            parser.error(f"{key} is set by the study per stage; use {OWNED_KEYS[study][key]} instead of {o!r}")
    if study == "consistency_reg" and args.lambdas and 0 not in [float(v) for v in args.lambdas.split(",")]:
        parser.error("--lambdas must include 0: the EV drop and the gain are measured against it")
    return STUDIES[study](args, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
