"""A tiny training job (labcore.task.TrainingTask) with manual optimisation."""

from __future__ import annotations

import lightning as L
import torch

from labcore.data import EpochBatches, trainer_position
from labcore.task import TrainingTask
from labcore.validate import positive_int


class ClippedRegression(L.LightningModule):
    """Manual optimisation: reads the gradient norm before clipping and carries a state (an EMA of
    it) across steps, as nanodesmo's self-state does."""

    def __init__(self, d: int, clip: float):
        super().__init__()
        self.automatic_optimization = False
        self.linear = torch.nn.Linear(d, 1)
        self.clip = clip
        self.register_buffer("grad_norm_ema", torch.zeros(()))  # a buffer: saved in checkpoints

    def training_step(self, batch, _):
        x, y = batch
        x = x + 0.01 * torch.randn_like(x)  # draws from the global RNG, as dropout does
        opt = self.optimizers()
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        opt.zero_grad()
        self.manual_backward(loss)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.clip)  # the norm before clipping
        opt.step()
        self.grad_norm_ema.mul_(0.9).add_(0.1 * norm.detach())
        self.log_dict({"train/loss": loss, "train/grad_norm": norm, "train/grad_norm_ema": self.grad_norm_ema})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RegressionTraining(TrainingTask):
    def validate(self):
        positive_int(self.cfg, "n")

    def build(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.cfg.n, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(self.cfg.n, generator=g)
        return ClippedRegression(4, clip=self.cfg.clip), _Data(x, y, self.cfg.seed)

    def analyse(self):
        w = self.module.linear.weight.detach().squeeze(0)
        return {"w_error": float((w - torch.tensor([1.0, -2.0, 0.5, 3.0])).norm()),
                "steps": float(self.trainer.global_step),
                "grad_norm_ema": float(self.module.grad_norm_ema)}


class _Data(L.LightningDataModule):
    def __init__(self, x, y, seed):
        super().__init__()
        self.x, self.y, self.seed = x, y, seed

    def train_dataloader(self):
        return EpochBatches(self.x, self.y, batch_size=8, seed=self.seed, position=trainer_position(self))
