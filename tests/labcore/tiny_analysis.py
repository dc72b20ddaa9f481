"""A tiny analysis-only job (labcore.task.Task): its module imports no Lightning."""

from __future__ import annotations

import torch

from labcore.plotting import save_figure, subplots
from labcore.task import Task
from labcore.validate import positive_int


class NoiseStatistics(Task):
    """Analysis only: statistics of seeded noise, one figure. No module, no trainer."""

    def validate(self):
        positive_int(self.cfg, "n")

    def analyse(self):
        x = torch.randn(self.cfg.n)
        fig, ax = subplots()
        ax.hist(x.numpy(), bins=20)
        save_figure(fig, self.figures_dir / "noise.png")
        return {"mean": float(x.mean()), "std": float(x.std())}
