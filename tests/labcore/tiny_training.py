"""A tiny training job (labcore.task.TrainingTask) with manual optimisation."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

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
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(self.cfg.seed))
        return ClippedRegression(4, clip=self.cfg.clip), _Data(loader)

    def analyse(self):
        with torch.no_grad():
            w = self.module.linear.weight.squeeze(0)
        return {"w_error": float((w - torch.tensor([1.0, -2.0, 0.5, 3.0])).norm()),
                "steps": float(self.trainer.global_step),
                "grad_norm_ema": float(self.module.grad_norm_ema)}


class _Data(L.LightningDataModule):
    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader
