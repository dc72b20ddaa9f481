"""LightningModule that trains one SAE on a batch stream of activations."""

from __future__ import annotations

import lightning as L
import torch

from sae_lab.metrics import ReconstructionStats
from sae_lab.sae import SparseAutoencoder


class SAETraining(L.LightningModule):
    def __init__(self, sae: SparseAutoencoder, lr: float, betas=(0.9, 0.999), warmup_steps: int = 0,
                 dense_threshold: float = 0.1):
        super().__init__()
        self.sae = sae
        self.lr, self.betas, self.warmup_steps = lr, tuple(betas), warmup_steps
        self.dense_threshold = dense_threshold
        self.history: list[dict] = []       # per-step curves for the figures
        self.val_history: list[dict] = []
        self._val_stats: ReconstructionStats | None = None

    def training_step(self, x, _):
        out = self.sae(x)
        self.sae.update_dead_tracking(out.fired, x.shape[0])
        dead = float(self.sae.dead_mask.float().mean())
        logs = {"train/loss": out.loss, "train/fvu": out.recon_loss, "train/aux": out.aux_loss,
                "train/l0": out.l0, "train/dead_fraction": dead}
        self.log_dict(logs, prog_bar=False)
        self.log("fvu", out.recon_loss, prog_bar=True, logger=False)
        self.history.append({"step": self.global_step, **{k: float(v.detach()) if torch.is_tensor(v) else v for k, v in logs.items()}})
        return out.loss

    def on_before_optimizer_step(self, optimizer):
        self.sae.remove_parallel_decoder_grad()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.sae.normalize_decoder()

    def on_train_end(self):
        calibrate = getattr(self.sae, "calibrate_threshold", None)  # BatchTopK: per-example inference
        if calibrate is not None and self.trainer.datamodule is not None:
            batches = [b for _, b in zip(range(8), self.trainer.datamodule.train_dataloader())]
            calibrate(torch.cat(batches).to(self.device))

    def on_validation_epoch_start(self):
        self._val_stats = ReconstructionStats(self.sae.d_sae)

    def validation_step(self, x, _):
        z = self.sae.encode(x)
        self._val_stats.update(x, self.sae.decode(z), z)

    def on_validation_epoch_end(self):
        m = self._val_stats.compute(self.dense_threshold)
        self.log("val/ev", m["explained_variance"], prog_bar=True)
        self.log("val/l0", m["l0"])
        self.val_history.append({"step": self.global_step, "epoch": self.current_epoch, **m})

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=self.betas)
        warmup = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
