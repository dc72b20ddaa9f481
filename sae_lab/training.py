"""LightningModule that trains one SAE on a batch stream of activations."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from labcore.fit import step_logs_due
from sae_lab.metrics import ReconstructionStats
from sae_lab.architectures import SparseAutoencoder


def reference_alignment(w_dec: torch.Tensor, reference: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """mean_i max_j |cos(d_i, r_j)| between this SAE's decoder rows d_i and reference rows r_j,
    differentiable in `w_dec` (`sae_lab.consistency.mean_max_abs_cos`, where PWMCC's maxima live too)."""
    from sae_lab.consistency import mean_max_abs_cos
    return mean_max_abs_cos(w_dec, reference, chunk_size)


class SAETraining(L.LightningModule):
    """Trains `sae` on FVU (+ AuxK); with a `reference` decoder [d_ref, d_in] it also tracks the
    alignment to it, and with `consistency_lambda` > 0 adds lambda * (1 - alignment) to the loss
    (consistency regularisation: pull every latent towards some latent of a frozen reference SAE)."""

    def __init__(self, sae: SparseAutoencoder, lr: float, betas=(0.9, 0.999), warmup_steps: int = 0,
                 dense_threshold: float = 0.1, consistency_lambda: float = 0.0,
                 reference: torch.Tensor | None = None):
        super().__init__()
        if consistency_lambda > 0 and reference is None:
            raise ValueError("consistency_lambda > 0 needs a reference decoder")
        self.sae = sae
        self.lr, self.betas, self.warmup_steps = lr, tuple(betas), warmup_steps
        self.dense_threshold = dense_threshold
        self.consistency_lambda = float(consistency_lambda)
        # a buffer: it follows the module to the device and gets no gradient (frozen); not persistent,
        # so checkpoints keep their old layout and a resumed job reloads it from its config
        self.register_buffer("reference", None if reference is None else
                             F.normalize(reference.detach().float(), dim=1), persistent=False)
        self._val_stats: ReconstructionStats | None = None

    def training_step(self, x, _):
        out = self.sae(x)
        self.sae.update_dead_tracking(out.fired, x.shape[0])
        loss, extra = out.loss, {}
        if self.reference is not None:
            # no graph at lambda 0: the alignment is only logged there
            with torch.set_grad_enabled(self.consistency_lambda > 0 and torch.is_grad_enabled()):
                alignment = reference_alignment(self.sae.W_dec, self.reference)
            term = self.consistency_lambda * (1 - alignment)
            if self.consistency_lambda > 0:
                loss = loss + term
            extra = {"train/consistency": term, "train/reference_alignment": alignment}
        if step_logs_due(self):
            dead = self.sae.dead_mask.float().mean()
            logs = {"train/loss": loss, "train/fvu": out.recon_loss, "train/aux": out.aux_loss,
                    "train/l0": out.l0, "train/dead_fraction": dead, **extra}
            self.log_dict(logs, prog_bar=False)
            self.log("fvu", out.recon_loss, prog_bar=True, logger=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # part of the step itself (not on_train_batch_end, which runs after callbacks such as the
        # resume checkpoint): a checkpoint taken at the end of a step holds the projected parameters
        # (unit-norm decoder rows; JumpReLU's thresholds >= 0)
        self.sae.project_parameters()

    def on_train_end(self):
        calibrate = getattr(self.sae, "calibrate_threshold", None)  # BatchTopK, Matryoshka: per-example inference
        if calibrate is not None and self.trainer.datamodule is not None:
            batches = [b for _, b in zip(range(8), self.trainer.datamodule.train_dataloader().epoch(0))]
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
        self.log("val/fvu", m["fvu"])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=self.betas)
        warmup = max(1, self.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
