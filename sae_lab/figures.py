"""Figures of one SAE training job."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labcore.plotting import save_figure, subplots
from labcore.steplog import series


def training_curves(log: list[dict], path: Path, title: str = "") -> Path:
    """Curves from the job's step log (`labcore.steplog`): what a resumed job logged is all there."""
    fig, axes = subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(*series(log, "train/fvu"), label="train FVU", lw=1)
    val_steps, val_fvu = series(log, "val/fvu")
    if val_steps:
        axes[0].plot(val_steps, val_fvu, "o-", label="held-out FVU")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("reconstruction (FVU = 1 - EV)")
    axes[0].legend()
    axes[1].plot(*series(log, "train/l0"), lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_title("L0 (active latents per example)")
    axes[2].plot(*series(log, "train/dead_fraction"), lw=1, label="dead fraction")
    axes[2].plot(*series(log, "train/aux"), lw=1, label="aux loss")
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
