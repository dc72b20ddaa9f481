"""Composite ("desmotic") metrics: how the self-state moves, step by step, and how far each step is
from calm training.

The reference names the ingredients (speed and curvature of the state trajectory, distance from a
rank-4 PCA, the control term ln(I*/state_effect), z-scores, valence, intensity) but not their
formulas; these are ours, with every component in the CSV so a reader can recombine them. With
s_t the state after step t, d_t = s_t - s_{t-1}, and "calm" the regime-free steps:

    speed          ||d_t||
    curvature      the turning angle between d_{t-1} and d_t, in radians (0: straight on, pi: back)
    pca_distance   ||r_t||, r_t = what is left of s_t - mean after projecting it on the top `rank` (4)
                   principal axes of the calm states: how far the state leaves its calm subspace
    control        ln(I* / state_effect_t), I* = the median state_effect of the calm steps: > 0 when the
                   state steers the logits less than it usually does (state_effect is measured every
                   few steps and holds until the next measurement)
    loss_surprise  loss_t - mean loss of the `surprise_window` (50) steps before t: the loss against
                   what training had led the model to expect, free of the slow fall of the loss
    z_<m>          (m - mean over calm steps) / std over calm steps
    intensity      sqrt(mean of z^2 over speed, curvature, pca_distance, control): how far the state's
                   behaviour is from calm, whichever way (components with no spread are left out)
    valence        -(z_loss_surprise + z_control) / 2: > 0 when the loss comes in under expectation
                   and the state steers more than usual, < 0 when training goes badly and the state
                   loses its grip (a term with no spread in calm steps is left out, as for intensity)

    python -m nanodesmo.analyses desmotic RUN_DIR   # RUN_DIR/desmotic/{desmotic_metrics.csv,
                                                    #   desmotic_by_regime.csv, desmotic_*.png}
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nanodesmo.analyses import regime_names

COMPONENTS = ("speed", "curvature", "pca_distance", "control")
Z_FIELDS = (*COMPONENTS, "loss_surprise")


def _label(record: dict, names: list[str]) -> str:
    return next((n for n in names if record[f"regime_{n}"]), "calm")


def desmotic_metrics(log: list[dict], rank: int = 4, surprise_window: int = 50) -> tuple[list[dict], dict]:
    """(one row per step, a summary with I*, the PCA's explained variance and the z-score baselines)."""
    rows_with_state = [r for r in log if "self_state" in r]
    if len(rows_with_state) < 3:
        raise ValueError("the reaction log has no self_state trajectory (a vanilla run, or a run logged "
                         "before self_state was recorded): nothing to compute desmotic metrics on")
    log = rows_with_state
    names = regime_names(log)
    labels = [_label(r, names) for r in log]
    calm = np.array([lab == "calm" for lab in labels])
    if calm.sum() < 3:
        raise ValueError(f"only {int(calm.sum())} regime-free steps: no calm baseline for the z-scores")
    states = np.array([r["self_state"] for r in log], dtype=np.float64)
    loss = np.array([r["loss"] for r in log], dtype=np.float64)

    d = np.diff(states, axis=0, prepend=np.full((1, states.shape[1]), np.nan))
    speed = np.linalg.norm(d, axis=1)
    dot = np.einsum("ij,ij->i", d[1:], d[:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (speed[1:] * speed[:-1])
    curvature = np.concatenate([[np.nan], np.arccos(np.clip(cos, -1, 1))])

    mean = states[calm].mean(0)
    _, sing, axes = np.linalg.svd(states[calm] - mean, full_matrices=False)
    top = axes[:rank][sing[:rank] > 1e-9 * sing[0]]   # calm states of lower rank: no arbitrary null-space axes
    centred = states - mean
    pca_distance = np.linalg.norm(centred - centred @ top.T @ top, axis=1)
    explained = float((sing[:rank] ** 2).sum() / max((sing ** 2).sum(), 1e-300))

    measured = np.array([r.get("state_effect", np.nan) if r.get("state_effect") is not None else np.nan
                         for r in log], dtype=np.float64)
    effect = _forward_fill(measured)
    reference = float(np.nanmedian(measured[calm])) if np.isfinite(measured[calm]).any() else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        control = np.log(reference / effect)

    surprise = np.full(len(loss), np.nan)
    for t in range(1, len(loss)):
        surprise[t] = loss[t] - loss[max(0, t - surprise_window):t].mean()

    values = {"speed": speed, "curvature": curvature, "pca_distance": pca_distance, "control": control,
              "loss_surprise": surprise}
    baselines, z = {}, {}
    for name, v in values.items():
        ok = calm & np.isfinite(v)
        mu, sd = (float(v[ok].mean()), float(v[ok].std())) if ok.sum() >= 2 else (float("nan"), float("nan"))
        baselines[name] = {"mean": mu, "std": sd}
        z[name] = (v - mu) / sd if sd > 0 else np.full(len(v), np.nan)
    used = [c for c in COMPONENTS if np.isfinite(z[c]).any()]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # nanmean of an all-NaN step (the first): NaN is right
        intensity = np.sqrt(np.nanmean(np.stack([z[c] ** 2 for c in used]), axis=0)) if used else np.full(len(log), np.nan)
        signs = [z[c] for c in ("loss_surprise", "control") if np.isfinite(z[c]).any()]
        valence = -np.nanmean(np.stack(signs), axis=0) if signs else np.full(len(log), np.nan)

    rows = []
    for i, r in enumerate(log):
        row = {"step": r["step"], "regime": labels[i], "loss": r["loss"], "state_effect": effect[i]}
        row.update({name: values[name][i] for name in values})
        row.update({f"z_{name}": z[name][i] for name in Z_FIELDS})
        row.update({"intensity": intensity[i], "valence": valence[i]})
        rows.append({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    summary = {"I_star": reference, "pca_rank": rank, "pca_explained_variance": explained,
               "state_dim": int(states.shape[1]), "calm_steps": int(calm.sum()), "intensity_components": used,
               "surprise_window": surprise_window, "baselines": baselines}
    return rows, summary


def _forward_fill(values: np.ndarray) -> np.ndarray:
    out, last = values.copy(), np.nan
    for i, v in enumerate(values):
        last = v if np.isfinite(v) else last
        out[i] = last
    return out


def by_regime(rows: list[dict]) -> list[dict]:
    """Mean of each z-score, intensity and valence per regime, calm first."""
    labels = list(dict.fromkeys(["calm", *(r["regime"] for r in rows)]))
    out = []
    for label in labels:
        group = [r for r in rows if r["regime"] == label]
        row = {"regime": label, "steps": len(group)}
        for f in (*(f"z_{n}" for n in Z_FIELDS), "intensity", "valence"):
            v = np.array([g[f] for g in group], dtype=np.float64)
            row[f] = float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")
        out.append(row)
    return out


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps, ignoring NaNs (the figures show trends, the CSV every step)."""
    out = np.full(len(v), np.nan)
    for i in range(len(v)):
        w = v[max(0, i - window + 1):i + 1]
        w = w[np.isfinite(w)]
        out[i] = w.mean() if len(w) else np.nan
    return out


def figures(rows: list[dict], regimes: list[dict], out: Path, title: str) -> list[Path]:
    from labcore.plotting import save_figure, subplots
    steps = np.array([r["step"] for r in rows])
    names = [g["regime"] for g in regimes if g["regime"] != "calm"]
    colors = {n: f"C{i + 2}" for i, n in enumerate(names)}
    window = max(2, len(rows) // 100)
    spans = {n: (min(s for s, r in zip(steps, rows) if r["regime"] == n),
                 max(s for s, r in zip(steps, rows) if r["regime"] == n) + 1) for n in names}
    paths = []

    fig, axes = subplots(3, 1, figsize=(10, 7.5), sharex=True)
    for c in COMPONENTS:
        axes[0].plot(steps, _smooth(np.array([r[f"z_{c}"] for r in rows]), window), linewidth=0.9, label=c)
    axes[0].set_ylabel(f"z vs calm ({window}-step mean)")
    axes[0].legend(fontsize=7, ncol=4)
    for ax, field in ((axes[1], "intensity"), (axes[2], "valence")):
        v = np.array([r[field] for r in rows])
        ax.plot(steps, v, linewidth=0.4, color="grey", alpha=0.5)
        ax.plot(steps, _smooth(v, window), linewidth=1.1, color="black")
        ax.set_ylabel(field)
    for ax in axes:
        ax.axhline(0, color="black", linewidth=0.5)
        for n, (a, b) in spans.items():
            ax.axvspan(a, b, color=colors[n], alpha=0.15, label=n if ax is axes[1] else None)
    axes[1].legend(fontsize=7, ncol=5)
    axes[-1].set_xlabel("step")
    axes[0].set_title(f"{title}: the self-state against calm training")
    paths.append(save_figure(fig, out / "desmotic_timeseries.png"))

    fig, ax = subplots(figsize=(6, 5))
    calm = [r for r in rows if r["regime"] == "calm"]
    ax.scatter([r["valence"] for r in calm], [r["intensity"] for r in calm], s=3, color="grey", alpha=0.3, label="calm")
    for n in names:
        group = [r for r in rows if r["regime"] == n]
        ax.scatter([r["valence"] for r in group], [r["intensity"] for r in group], s=5, color=colors[n], alpha=0.5)
    for g in regimes:
        ax.scatter(g["valence"], g["intensity"], s=120, marker="X", edgecolor="black",
                   color=colors.get(g["regime"], "grey"), label=f"{g['regime']} (mean)")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("valence")
    ax.set_ylabel("intensity")
    ax.set_title(f"{title}: every step, and each regime's mean")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "desmotic_affect.png"))

    fig, ax = subplots(figsize=(9, 3.8))
    fields = [*(f"z_{c}" for c in COMPONENTS), "intensity", "valence"]
    width = 0.8 / len(fields)
    for i, f in enumerate(fields):
        ax.bar(np.arange(len(regimes)) + i * width, [g[f] for g in regimes], width, label=f)
    ax.set_xticks(np.arange(len(regimes)) + 0.4 - width / 2, [g["regime"] for g in regimes], rotation=20, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("mean over the regime's steps")
    ax.legend(fontsize=7, ncol=4)
    ax.set_title(f"{title}: desmotic metrics per regime")
    paths.append(save_figure(fig, out / "desmotic_by_regime.png"))
    return paths


def run_desmotic(run_dir: Path, out: Path | None = None) -> Path:
    """RUN_DIR/desmotic/: desmotic_metrics.csv (per step), desmotic_by_regime.csv, desmotic.json
    (I*, PCA, baselines) and the three figures."""
    from labcore.artifacts import atomic_write_json
    from labcore.tables import write_csv
    from nanodesmo.runs import read_reaction_log
    run_dir = Path(run_dir)
    out = out or run_dir / "desmotic"
    rows, summary = desmotic_metrics(read_reaction_log(run_dir))
    regimes = by_regime(rows)
    write_csv(out / "desmotic_metrics.csv", rows)
    write_csv(out / "desmotic_by_regime.csv", regimes)
    figures(rows, regimes, out, title=f"{run_dir.parent.name}/{run_dir.name}")
    atomic_write_json(out / "desmotic.json", {**summary, "by_regime": regimes})
    return out / "desmotic_metrics.csv"
