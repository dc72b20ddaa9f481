"""Figures: one house style, atomic PNG writes, and no global pyplot state.

Figures are built as bare `matplotlib.figure.Figure` objects, so library code works headless on
clusters and CI without choosing a backend, and never changes the backend of a notebook or
program that imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

from labcore.artifacts import atomic_path

STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False}


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kwargs):
    """(figure, axes) like plt.subplots, detached from pyplot."""
    import matplotlib
    from matplotlib.figure import Figure
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=figsize, dpi=110)
        axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def save_figure(fig, path: str | os.PathLike) -> Path:
    import matplotlib
    path = Path(path)
    with atomic_path(path) as tmp, matplotlib.rc_context(STYLE):
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    return path
