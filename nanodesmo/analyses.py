"""Analyses of finished training runs, each a command and a pipeline phase writing CSV/JSON + figures:

    python -m nanodesmo.analyses frozen_test RUN_DIR      # RUN_DIR/frozen_test/{frozen_test_results.json, frozen_test.png}
    python -m nanodesmo.analyses regime_deltas RUN_DIR    # RUN_DIR/regime_deltas/{regime_deltas.csv, regime_deltas.png, regime_delta_scatter.png}

Regime deltas: for each regime, its baseline is the last `baseline_steps` (100) regime-free steps
before it starts, "during" its own steps; delta = mean(during) - mean(baseline) for loss,
stats_entropy, stats_top1_conf, self_drift and state_effect (state_effect is measured every few
steps: the means use the steps that have it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DELTA_FIELDS = ("loss", "stats_entropy", "stats_top1_conf", "self_drift", "state_effect")


def regime_names(log: list[dict]) -> list[str]:
    return [k.removeprefix("regime_") for k in (log[0] if log else {}) if k.startswith("regime_")]


def regime_deltas(log: list[dict], baseline_steps: int = 100) -> list[dict]:
    names = regime_names(log)
    quiet = [r for r in log if not any(r[f"regime_{n}"] for n in names)]
    rows = []
    for name in names:
        during = [r for r in log if r[f"regime_{name}"]]
        if not during:
            continue
        start = during[0]["step"]
        before = [r for r in quiet if r["step"] < start][-baseline_steps:]
        row = {"regime": name, "start": start, "end": during[-1]["step"] + 1, "baseline_steps": len(before)}
        for f in DELTA_FIELDS:
            a = [r[f] for r in during if f in r]
            b = [r[f] for r in before if f in r]
            row[f"{f}_baseline"] = float(np.mean(b)) if b else float("nan")
            row[f"{f}_during"] = float(np.mean(a)) if a else float("nan")
            row[f"{f}_delta"] = row[f"{f}_during"] - row[f"{f}_baseline"]
        rows.append(row)
    return rows


def run_regime_deltas(run_dir: Path, out: Path | None = None) -> Path:
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    from nanodesmo.runs import read_reaction_log
    out = out or run_dir / "regime_deltas"
    rows = regime_deltas(read_reaction_log(run_dir))
    if not rows:
        raise ValueError(f"{run_dir}: its reaction log has no regime steps (was it trained with a regime=...?)")
    write_csv(out / "regime_deltas.csv", rows)
    fields = [f for f in DELTA_FIELDS if any(np.isfinite(r[f"{f}_delta"]) for r in rows)]
    fig, axes = subplots(1, len(fields), figsize=(3.2 * len(fields), 3.4), squeeze=False)
    for ax, f in zip(axes[0], fields):
        ax.bar([r["regime"] for r in rows], [r[f"{f}_delta"] for r in rows])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(f"delta {f}")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    save_figure(fig, out / "regime_deltas.png")
    fig, ax = subplots(figsize=(4.5, 3.6))
    for r in rows:
        ax.scatter(r["loss_delta"], r["self_drift_delta"], s=30)
        ax.annotate(r["regime"], (r["loss_delta"], r["self_drift_delta"]), fontsize=7)
    ax.set_xlabel("delta loss")
    ax.set_ylabel("delta self_drift")
    save_figure(fig, out / "regime_delta_scatter.png")
    return out


def run_frozen_test(run_dir: Path, out: Path | None = None, **options) -> dict:
    from labcore.artifacts import atomic_write_json
    from nanodesmo.frozen_test import figure, frozen_test
    from nanodesmo.runs import load_run
    out = out or run_dir / "frozen_test"
    run = load_run(run_dir)
    result = frozen_test(run.model, run.data, **options)
    figure(result, out / "frozen_test.png")
    atomic_write_json(out / "frozen_test_results.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanodesmo.analyses", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="analysis", required=True)
    f = sub.add_parser("frozen_test", help="the frozen-weight causal test of a run's checkpoint")
    f.add_argument("run_dir", type=Path)
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--n-random", type=int, default=50)
    r = sub.add_parser("regime_deltas", help="each regime's effect on the reaction log")
    r.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.analysis == "frozen_test":
            result = run_frozen_test(args.run_dir, batch_size=args.batch_size, n_random=args.n_random)
            print(json.dumps({k: result[k] for k in ("effect_size", "effect_ci_low", "effect_ci_high", "passes",
                                                     "sign_consistency", "random_pair_diff_p95")}, indent=1))
        else:
            print(f"wrote {run_regime_deltas(args.run_dir)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
