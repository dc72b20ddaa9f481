"""The spectra line's figures, drawn from its tables (rows as dicts), so a notebook can redraw them
from the CSV files of a finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labcore.plotting import save_figure, subplots

LABELS = {"q_norm": "||q||", "entropy": "entropy H (nats)", "max_attn": "max attention", "k_eff": "k_eff (90% mass)",
          "exp_entropy": "exp(H)", "inv_simpson": "1 / sum p^2", "norm_entropy": "H / ln(n keys)"}


def _grid(rows: list[dict], value: str, n_layers: int, n_heads: int) -> np.ndarray:
    grid = np.full((n_layers, n_heads), np.nan)
    for r in rows:
        grid[int(r["layer"]), int(r["head"])] = float(r[value])
    return grid


def heatmap(rows: list[dict], value: str, n_layers: int, n_heads: int, title: str, path: Path,
            symmetric: bool = True) -> Path:
    """A layer x head heatmap of `value` (diverging around 0 when `symmetric`)."""
    grid = _grid(rows, value, n_layers, n_heads)
    fig, ax = subplots(figsize=(max(4, 0.35 * n_heads + 2), max(3, 0.3 * n_layers + 1.5)))
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r" if symmetric else "viridis",
                      vmin=-limit if symmetric else None, vmax=limit if symmetric else None)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def scatter(points: dict[str, np.ndarray], layer: int, head: int, metrics: list[str], path: Path,
            r: dict[str, float] | None = None) -> Path:
    """q-norm against each metric for one head's sampled tokens."""
    fig, axes = subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ax.scatter(points["q_norm"], points[m], s=4, alpha=0.35, linewidths=0)
        ax.set_xlabel(LABELS["q_norm"])
        ax.set_ylabel(LABELS.get(m, m))
        if r is not None:
            ax.set_title(f"mean r = {r.get(m, float('nan')):.2f}")
    fig.suptitle(f"L{layer}H{head}: {len(points['q_norm'])} sampled tokens", y=1.04)
    return save_figure(fig, path)


def layer_statistics(rows: list[dict], path: Path) -> Path:
    fig, ax = subplots(figsize=(6, 3.6))
    for m in sorted({r["metric"] for r in rows}):
        mine = sorted((r for r in rows if r["metric"] == m), key=lambda r: r["layer"])
        layers = [r["layer"] for r in mine]
        mean, std = np.array([r["mean_abs_r"] for r in mine]), np.array([r["std_abs_r"] for r in mine])
        ax.plot(layers, mean, marker="o", label=m)
        ax.fill_between(layers, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("|r| (q-norm vs metric), mean +- std")
    ax.legend()
    return save_figure(fig, path)


def curves(summary: list[dict], series: list[tuple[str, dict]], metrics: list[str], path: Path,
           title: str, delta: bool = False) -> Path:
    """A panel per metric: metric (or its change from alpha = 1 when `delta`) against alpha, one
    line with a standard-error band per series (label, {column: value} selecting summary rows)."""
    fig, axes = subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for label, where in series:
            rows = sorted((r for r in summary if all(r[k] == v for k, v in where.items())), key=lambda r: r["alpha"])
            if not rows:
                continue
            alpha = np.array([r["alpha"] for r in rows])
            mean, sem = np.array([r[f"{m}_mean"] for r in rows]), np.array([r[f"{m}_sem"] for r in rows])
            if delta:
                base = mean[np.argmin(np.abs(alpha - 1.0))]
                mean = mean - base
            ax.plot(alpha, mean, marker="o", label=label)
            ax.fill_between(alpha, mean - np.nan_to_num(sem), mean + np.nan_to_num(sem), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("alpha (log scale)")
        ax.set_ylabel(("change in " if delta else "") + LABELS.get(m, m))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def gain_fit(summary: list[dict], where: dict, gain: dict, metric: str, path: Path, title: str) -> Path:
    rows = sorted((r for r in summary if all(r[k] == v for k, v in where.items())), key=lambda r: r["alpha"])
    x = np.log([r["alpha"] for r in rows])
    y = np.array([r[f"{metric}_mean"] for r in rows])
    fig, ax = subplots(figsize=(5, 3.6))
    ax.errorbar(x, y, yerr=[r[f"{metric}_sem"] for r in rows], fmt="o", capsize=3, label="mean over samples")
    line = np.linspace(x.min(), x.max(), 50)
    ax.plot(line, gain[f"{metric}_intercept"] + gain[f"{metric}_gain"] * line, "--",
            label=f"gain {gain[f'{metric}_gain']:.3f}, R^2 {gain[f'{metric}_r2']:.3f}")
    ax.set_xlabel("ln(alpha)")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def gain_bars(rows: list[dict], labels: list[str], metrics: list[str], path: Path) -> Path:
    fig, axes = subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        values = [r[f"{m}_gain"] for r in rows]
        errors = [r[f"{m}_stderr"] for r in rows]
        ax.bar(range(len(rows)), values, yerr=np.nan_to_num(errors), capsize=3)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(f"d {m} / d ln(alpha)")
    return save_figure(fig, path)
