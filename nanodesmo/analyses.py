"""Analyses of finished training runs, each a command and a pipeline phase writing CSV/JSON + figures:

    python -m nanodesmo.analyses frozen_test RUN_DIR      # RUN_DIR/frozen_test/{frozen_test_results.json, frozen_test.png}
    python -m nanodesmo.analyses regime_deltas RUN_DIR    # RUN_DIR/regime_deltas/{regime_deltas.csv, regime_deltas.png, regime_delta_scatter.png}
    python -m nanodesmo.analyses separability RUN_DIR     # RUN_DIR/separability/{separability.json, separability.png}
    python -m nanodesmo.analyses leadlag RUN_DIR          # RUN_DIR/leadlag/{leadlag.csv, state_effect_leadlag.png}
    python -m nanodesmo.analyses mlp RUN_DIR              # RUN_DIR/mlp_analysis/{mlp_sensitivity.csv, mlp_by_regime.csv, mlp_analysis.png}
    python -m nanodesmo.analyses desmotic RUN_DIR         # RUN_DIR/desmotic/{desmotic_metrics.csv, desmotic_by_regime.csv, desmotic_*.png}
                                                          #   (defined in nanodesmo/desmotic.py)

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


SEPARABILITY_FEATURES = ("loss", "stats_entropy", "stats_top1_conf", "grad_norm", "self_norm", "self_delta",
                         "self_drift")


def chunks(log: list[dict], size: int = 10) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features [n, f], labels [n], label names): consecutive `size`-step chunks lying wholly in one
    regime or wholly regime-free ("none"), each described by the mean of SEPARABILITY_FEATURES."""
    names = regime_names(log)
    features = [f for f in SEPARABILITY_FEATURES if log and f in log[0]]
    x, y = [], []
    for start in range(0, len(log) - size + 1, size):
        part = log[start:start + size]
        labels = {next((n for n in names if r[f"regime_{n}"]), "none") for r in part}
        if len(labels) == 1:
            x.append([np.mean([r[f] for r in part]) for f in features])
            y.append(["none", *names].index(labels.pop()))
    return np.array(x, dtype=np.float64), np.array(y), ["none", *names]


def separability(log: list[dict], size: int = 10, folds: int = 5, shuffles: int = 20, seed: int = 0) -> dict:
    """5-fold accuracy of telling regimes apart from the reaction log's chunks, against the same
    classifier on shuffled labels (the chance level of this label mix)."""
    x, y, labels = chunks(log, size)
    if len(y) < 2 * folds or len(set(y.tolist())) < 2:
        raise ValueError(f"too few labelled {size}-step chunks ({len(y)}, {len(set(y.tolist()))} classes) "
                         "to cross-validate: a longer run or smaller chunks")
    from labcore.probe import cross_validated_accuracy
    accuracy = cross_validated_accuracy(x, y, folds, seed)
    rng = np.random.default_rng(seed + 1)
    shuffled = [cross_validated_accuracy(x, rng.permutation(y), folds, seed) for _ in range(shuffles)]
    return {"accuracy": accuracy, "shuffled_mean": float(np.mean(shuffled)),
            "shuffled_p95": float(np.percentile(shuffled, 95)),
            "p_value": float((1 + sum(s >= accuracy for s in shuffled)) / (1 + shuffles)),
            "n_chunks": int(len(y)), "chunk_steps": size, "labels": labels,
            "counts": {labels[i]: int((y == i).sum()) for i in range(len(labels))}}


def leadlag(log: list[dict], targets=("loss", "stats_entropy"), max_lag: int = 50) -> list[dict]:
    """Pearson r of state_effect(t) with target(t + lag), lag -max_lag..max_lag (steps that have both)."""
    by_step = {r["step"]: r for r in log}
    effect = {r["step"]: r["state_effect"] for r in log if "state_effect" in r}
    rows = []
    for lag in range(-max_lag, max_lag + 1):
        row = {"lag": lag}
        for t in targets:
            pairs = [(v, by_step[s + lag][t]) for s, v in effect.items() if s + lag in by_step and t in by_step[s + lag]]
            a, b = np.array(pairs, dtype=np.float64).reshape(-1, 2).T
            ok = len(pairs) >= 3 and a.std() > 0 and b.std() > 0
            row[f"r_{t}"] = float(np.corrcoef(a, b)[0, 1]) if ok else float("nan")
            row[f"n_{t}"] = len(pairs)
        rows.append(row)
    return rows


def run_separability(run_dir: Path, out: Path | None = None) -> dict:
    from labcore.artifacts import atomic_write_json
    from labcore.plotting import save_figure, subplots
    from nanodesmo.runs import read_reaction_log
    out = out or run_dir / "separability"
    log = read_reaction_log(run_dir)
    # 10-step chunks on the original's 2000 steps; shorter runs (their regimes scaled) use shorter chunks
    result = separability(log, size=max(2, round(10 * len(log) / 2000)))
    atomic_write_json(out / "separability.json", result)
    fig, ax = subplots(figsize=(4.5, 3.4))
    ax.bar(["regime labels", "shuffled (mean)", "shuffled (p95)"],
           [result["accuracy"], result["shuffled_mean"], result["shuffled_p95"]], color=["tab:blue", "grey", "grey"])
    ax.set_ylabel("5-fold accuracy")
    ax.set_title(f"{result['n_chunks']} chunks of {result['chunk_steps']} steps, p = {result['p_value']:.3f}")
    save_figure(fig, out / "separability.png")
    return result


def run_leadlag(run_dir: Path, out: Path | None = None) -> Path:
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    from nanodesmo.runs import read_reaction_log
    out = out or run_dir / "leadlag"
    rows = leadlag(read_reaction_log(run_dir))
    write_csv(out / "leadlag.csv", rows)
    fig, ax = subplots(figsize=(5.5, 3.4))
    for t in ("loss", "stats_entropy"):
        ax.plot([r["lag"] for r in rows], [r[f"r_{t}"] for r in rows], label=t)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("lag (steps): state_effect(t) vs target(t + lag)")
    ax.set_ylabel("Pearson r")
    ax.legend()
    save_figure(fig, out / "state_effect_leadlag.png")
    return out


def memory_decay(log: list[dict], baseline_steps: int = 100, fraction: float = 0.1) -> dict:
    """How the state's drift reacts to, and recovers from, the run's (first) regime window: baseline =
    mean self_drift over the regime-free steps before it; peak = max self_drift from its start on;
    decay_steps = steps after the window until self_drift is back within `fraction` of the way from
    baseline to peak (NaN: never within the run)."""
    names = regime_names(log)
    during = [r for r in log if any(r[f"regime_{n}"] for n in names)]
    if not during:
        raise ValueError("the reaction log has no regime steps")
    start, end = during[0]["step"], during[-1]["step"] + 1
    before = [r["self_drift"] for r in log if r["step"] < start][-baseline_steps:]
    after = [r for r in log if r["step"] >= end]
    baseline = float(np.mean(before)) if before else float("nan")
    peak = max(r["self_drift"] for r in log if r["step"] >= start)
    level = baseline + fraction * (peak - baseline)
    back = next((r["step"] - end for r in after if r["self_drift"] <= level), float("nan"))
    return {"window_start": start, "window_end": end, "drift_baseline": baseline, "drift_peak": float(peak),
            "drift_during": float(np.mean([r["self_drift"] for r in during])), "decay_steps": back,
            "loss_delta": float(np.mean([r["loss"] for r in during]) - np.mean([r["loss"] for r in log if r["step"] < start][-baseline_steps:]))}


def run_memory_comparison(suite_dir: Path, runs: list[str]) -> Path:
    """<suite>/memory_decay_summary.{csv,png}: memory_decay of each run, and its drift around the window."""
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    from nanodesmo.runs import read_reaction_log
    rows, logs = [], {}
    for run in runs:
        logs[run] = read_reaction_log(suite_dir / run)
        rows.append({"run": run, **memory_decay(logs[run])})
    write_csv(suite_dir / "memory_decay_summary.csv", rows)
    fig, (ax, bx) = subplots(1, 2, figsize=(10, 3.6))
    for run, log in logs.items():
        ax.plot([r["step"] for r in log], [r["self_drift"] for r in log], linewidth=0.8, label=run)
    ax.axvspan(rows[0]["window_start"], rows[0]["window_end"], color="grey", alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("self_drift")
    ax.legend(fontsize=7)
    bx.bar([r["run"] for r in rows], [r["decay_steps"] for r in rows])
    bx.set_ylabel("steps to recover after the window")
    bx.tick_params(axis="x", rotation=30, labelsize=7)
    save_figure(fig, suite_dir / "memory_decay_summary.png")
    return suite_dir / "memory_decay_summary.csv"


def run_controls_comparison(suite_dir: Path, runs: list[str]) -> Path:
    """<suite>/controls_comparison.{csv,png}: the regime deltas of each control run side by side."""
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    rows = []
    for run in runs:
        run_regime_deltas(suite_dir / run)
        import csv
        with open(suite_dir / run / "regime_deltas" / "regime_deltas.csv") as f:
            rows += [{"run": run, **r} for r in csv.DictReader(f)]
    write_csv(suite_dir / "controls_comparison.csv", rows)
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    fig, axes = subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(runs)
    for ax, field in zip(axes, ("loss_delta", "self_drift_delta")):
        for i, run in enumerate(runs):
            values = [float(next((r[field] for r in rows if r["run"] == run and r["regime"] == g), "nan") or "nan")
                      for g in regimes]
            ax.bar(np.arange(len(regimes)) + i * width, values, width, label=run)
        ax.set_xticks(np.arange(len(regimes)) + 0.4 - width / 2, regimes, rotation=30, fontsize=7)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(field)
    axes[0].legend(fontsize=7)
    save_figure(fig, suite_dir / "controls_comparison.png")
    return suite_dir / "controls_comparison.csv"


STATE_BUFFERS = ("state",)   # what a swap exchanges: the state vector (EMA, memory, statistics stay the run's own)


def swap_checkpoints(a_dir: Path, b_dir: Path, step: int, out_dir: Path) -> dict[str, Path]:
    """From runs a and b's checkpoints at `step`, the starting checkpoints of a with b's state and b
    with a's (their own continuations are runs a and b themselves: a resumed run continues exactly
    as an uninterrupted one). Returns {run name: checkpoint}."""
    import torch

    from labcore.artifacts import atomic_path
    ckpts = {}
    for name, d in (("a", a_dir), ("b", b_dir)):
        path = d / "checkpoints" / f"step_{step}.ckpt"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the swaps suite first")
        ckpts[name] = torch.load(path, map_location="cpu", weights_only=False)
    out = {}
    for name, source, donor in (("a_swapped", "a", "b"), ("b_swapped", "b", "a")):
        ckpt = dict(ckpts[source])
        ckpt["state_dict"] = dict(ckpt["state_dict"])
        for buf in STATE_BUFFERS:
            key = f"model.self_state.{buf}"
            ckpt["state_dict"][key] = ckpts[donor]["state_dict"][key].clone()
        target = out_dir / name / "start.ckpt"
        with atomic_path(target) as tmp:
            torch.save(ckpt, tmp)
        out[name] = target
    return out


def swap_summary(swaps_dir: Path, step: int, out_dir: Path, window: int = 100) -> Path:
    """<out_dir>/swaps_summary.{csv,png}: each second half's (a and b continued, a and b swapped) loss,
    self_drift, self_norm and state_effect right after the swap point (its first `window` steps) and
    at the end (the last `window`)."""
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    from nanodesmo.runs import read_reaction_log
    rows, logs = [], {}
    sources = {"a_continued": swaps_dir / "swap_a", "b_continued": swaps_dir / "swap_b",
               "a_swapped": out_dir / "a_swapped", "b_swapped": out_dir / "b_swapped"}
    for name, run_dir in sources.items():
        log = logs[name] = [r for r in read_reaction_log(run_dir) if r["step"] >= step]
        row = {"run": name, "first_step": log[0]["step"], "last_step": log[-1]["step"]}
        for part, recs in (("after_swap", log[:window]), ("end", log[-window:])):
            for f in ("loss", "self_drift", "self_norm", "state_effect"):
                values = [r[f] for r in recs if f in r]
                row[f"{f}_{part}"] = float(np.mean(values)) if values else float("nan")
        rows.append(row)
    write_csv(out_dir / "swaps_summary.csv", rows)
    fig, axes = subplots(1, 3, figsize=(13, 3.4))
    for ax, f in zip(axes, ("loss", "self_drift", "self_norm")):
        for name, log in logs.items():
            ax.plot([r["step"] for r in log], [r[f] for r in log], linewidth=0.8, label=name,
                    linestyle="--" if name.endswith("swapped") else "-")
        ax.set_title(f)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    save_figure(fig, out_dir / "swaps_summary.png")
    return out_dir / "swaps_summary.csv"


def mlp_analysis(model, log: list[dict]) -> tuple[list[dict], list[dict]]:
    """What drives the state update: the final update MLP, fed each logged step's statistics.
    Returns (sensitivity rows: per input statistic, mean |d raw / d stat| over the steps (Jacobian
    column norm) and that times the statistic's std over the run; per-regime rows: mean ||raw|| and
    gate-free update size (rate * ||raw - s||) during each regime and outside them)."""
    import torch

    from nanodesmo.model import STAT_NAMES
    ss = model.self_state
    if ss is None or not ss.learned:
        raise ValueError("the MLP analysis needs a learned self-state")
    if ss.cfg.memory != "none":
        raise ValueError("the MLP analysis reads the statistics alone: run it on a run without memory")
    stats = torch.tensor([[r[f"stats_{n}"] for n in STAT_NAMES] for r in log], dtype=torch.float32, requires_grad=True)

    def raw(x):
        return ss.head(torch.tanh(ss.trunk(x)))

    jac = torch.autograd.functional.jacobian(lambda x: raw(x).sum(0), stats)     # [dim, steps, stats]
    column = jac.norm(dim=0).mean(0).detach()                                   # per statistic
    spread = stats.detach().std(0)
    sensitivity = [{"statistic": n, "mean_abs_jacobian": float(column[i]), "std_over_run": float(spread[i]),
                    "effect_of_one_std": float(column[i] * spread[i])} for i, n in enumerate(STAT_NAMES)]
    with torch.no_grad():
        norms = raw(stats.detach()).norm(dim=-1).numpy()
    names = regime_names(log)
    groups = {"none": [i for i, r in enumerate(log) if not any(r[f"regime_{n}"] for n in names)]}
    groups.update({n: [i for i, r in enumerate(log) if r[f"regime_{n}"]] for n in names})
    by_regime = [{"regime": g, "steps": len(idx), "raw_norm_mean": float(norms[idx].mean()) if idx else float("nan"),
                  "self_delta_mean": float(np.mean([log[i]["self_delta"] for i in idx])) if idx else float("nan")}
                 for g, idx in groups.items()]
    return sensitivity, by_regime


def run_mlp_analysis(run_dir: Path, out: Path | None = None) -> Path:
    from labcore.plotting import save_figure, subplots
    from labcore.tables import write_csv
    from nanodesmo.runs import load_run
    out = out or run_dir / "mlp_analysis"
    run = load_run(run_dir)
    sensitivity, by_regime = mlp_analysis(run.model, run.reaction_log())
    write_csv(out / "mlp_sensitivity.csv", sensitivity)
    write_csv(out / "mlp_by_regime.csv", by_regime)
    fig, (ax, bx) = subplots(1, 2, figsize=(10, 3.4))
    ax.bar([r["statistic"] for r in sensitivity], [r["effect_of_one_std"] for r in sensitivity])
    ax.set_ylabel("|d update| per std of the statistic")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    bx.bar([r["regime"] for r in by_regime], [r["raw_norm_mean"] for r in by_regime])
    bx.set_ylabel("mean ||raw update||")
    bx.tick_params(axis="x", rotation=30, labelsize=8)
    save_figure(fig, out / "mlp_analysis.png")
    return out


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
    s = sub.add_parser("separability", help="can the reaction log tell the regimes apart (vs shuffled labels)?")
    s.add_argument("run_dir", type=Path)
    ll = sub.add_parser("leadlag", help="state_effect(t) against loss / entropy (t + lag)")
    ll.add_argument("run_dir", type=Path)
    m = sub.add_parser("mlp", help="which statistics drive the state update, and its size per regime")
    m.add_argument("run_dir", type=Path)
    d = sub.add_parser("desmotic", help="composite metrics of the state trajectory (speed, curvature, PCA distance, "
                                        "control; valence, intensity)")
    d.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.analysis == "frozen_test":
            result = run_frozen_test(args.run_dir, batch_size=args.batch_size, n_random=args.n_random)
            print(json.dumps({k: result[k] for k in ("effect_size", "effect_ci_low", "effect_ci_high", "passes",
                                                     "sign_consistency", "random_pair_diff_p95")}, indent=1))
        elif args.analysis == "separability":
            result = run_separability(args.run_dir)
            print(json.dumps({k: result[k] for k in ("accuracy", "shuffled_mean", "shuffled_p95", "p_value", "n_chunks")}))
        elif args.analysis == "desmotic":
            from nanodesmo.desmotic import run_desmotic
            print(f"wrote {run_desmotic(args.run_dir)}")
        elif args.analysis == "mlp":
            print(f"wrote {run_mlp_analysis(args.run_dir)}")
        elif args.analysis == "leadlag":
            print(f"wrote {run_leadlag(args.run_dir)}")
        else:
            print(f"wrote {run_regime_deltas(args.run_dir)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
