"""The base transformer the SAEs study: trained once per config, cached by content hash.

Lightning fits it until validation accuracy reaches `base_model.target_val_acc` (early stop on the
threshold) or `base_model.max_epochs` runs out. The cache entry holds `model.safetensors` and
`config.json` (`labcore.models.gpt.save_gpt`); every SAE job of a sweep reuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F

from labcore.data import batch_loader
from labcore.fit import build_trainer
from labcore.models.gpt import GPT, save_gpt
from labcore.datasets.modular_addition import ModularAddition


class ModularClassifier(L.LightningModule):
    """Cross-entropy on the answer read at the `=` position, over the p answer classes."""

    def __init__(self, model: GPT, data: ModularAddition, lr: float, weight_decay: float, betas):
        super().__init__()
        self.model, self.data = model, data
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)

    def answer_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return answer_logits(self.model, tokens, self.data)

    def training_step(self, batch, _):
        tokens, labels = batch
        loss = F.cross_entropy(self.answer_logits(tokens), labels)
        self.log("base/train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        tokens, labels = batch
        logits = self.answer_logits(tokens)
        self.log("base/val_loss", F.cross_entropy(logits, labels), prog_bar=True)
        self.log("base/val_acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                 betas=self.betas)


def answer_logits(model: GPT, tokens: torch.Tensor, data: ModularAddition) -> torch.Tensor:
    return model(tokens)[:, data.answer_pos, : data.p]


def train_base_model(build_model: Callable[[], GPT], data: ModularAddition, base_cfg, trainer_cfg,
                     out_dir: Path) -> dict:
    """Fit the model `build_model()` returns (built after seeding with `base_cfg.seed`) with the
    job's trainer settings (`trainer_cfg`: device, precision), save it into `out_dir` and return
    its training summary."""
    L.seed_everything(base_cfg.seed, verbose=False)
    model = build_model()
    tokens, labels = data.examples()
    train_idx, val_idx = data.split()
    module = ModularClassifier(model, data, base_cfg.lr, base_cfg.weight_decay, base_cfg.betas)
    stop = L.pytorch.callbacks.EarlyStopping(
        monitor="base/val_acc", mode="max", stopping_threshold=base_cfg.target_val_acc,
        patience=10**9, check_on_train_epoch_end=False)
    trainer = build_trainer(trainer_cfg, out_dir, callbacks=[stop], max_epochs=base_cfg.max_epochs,
                            enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                            check_val_every_n_epoch=base_cfg.val_every_n_epochs, log_every_n_steps=1)
    trainer.fit(module,
                train_dataloaders=batch_loader(tokens[train_idx], labels[train_idx],
                                               batch_size=base_cfg.batch_size, shuffle=True, seed=base_cfg.seed),
                val_dataloaders=batch_loader(tokens[val_idx], labels[val_idx], batch_size=8192, shuffle=False))
    summary = {"epochs": trainer.current_epoch, "steps": trainer.global_step,
               "val_acc": float(trainer.callback_metrics.get("base/val_acc", float("nan"))),
               "val_loss": float(trainer.callback_metrics.get("base/val_loss", float("nan")))}
    save_gpt(model, out_dir, summary)
    return summary
