"""Figures of one SAE training job."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labcore.plotting import save_figure, subplots


def training_curves(history: list[dict], val_history: list[dict], path: Path, title: str = "") -> Path:
    fig, axes = subplots(1, 3, figsize=(13, 3.6))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["train/fvu"] for h in history], label="train FVU", lw=1)
    if val_history:
        axes[0].plot([v["step"] for v in val_history], [v["fvu"] for v in val_history], "o-", label="held-out FVU")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("reconstruction (FVU = 1 - EV)")
    axes[0].legend()
    axes[1].plot(steps, [h["train/l0"] for h in history], lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_title("L0 (active latents per example)")
    axes[2].plot(steps, [h["train/dead_fraction"] for h in history], lw=1, label="dead fraction")
    axes[2].plot(steps, [h["train/aux"] for h in history], lw=1, label="aux loss")
    axes[2].set_xlabel("step")
    axes[2].set_title("dead latents / auxiliary loss")
    axes[2].legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def latent_density(freq, path: Path, title: str = "") -> Path:
    """Histogram of log10 firing frequency on held-out data; dead latents counted separately."""
    freq = np.asarray(freq, dtype=float)
    alive = freq[freq > 0]
    fig, ax = subplots(figsize=(6, 3.6))
    if alive.size:
        ax.hist(np.log10(alive), bins=40, color="tab:blue")
    ax.set_xlabel("log10 firing frequency (held-out)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}  dead: {int((freq == 0).sum())}/{freq.size}")
    return save_figure(fig, path)
