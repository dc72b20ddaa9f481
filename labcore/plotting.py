"""Figures: a headless backend, one house style, atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path

from labcore.artifacts import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on clusters and CI)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    pyplot().close(fig)
    return path
