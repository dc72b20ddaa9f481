"""The base transformer the SAEs study: trained once per config, cached by content hash.

Lightning fits it on the train split until the validation split meets `base_model.target_val_acc`
and `base_model.target_val_loss` (a converged model, not one that is right but unsure); missing them
within `base_model.max_epochs` is an error and nothing is cached. Metrics are reported on the test split. The cache entry holds `model.safetensors` and
`config.json` (`labcore.models.gpt.save_gpt`); every SAE job of a sweep reuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F

from labcore.data import EpochBatches, batch_loader, trainer_position
from labcore.fit import build_trainer
from labcore.models.gpt import GPT, save_gpt
from labcore.validate import ConfigError
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


class BaseModelNotConverged(ConfigError):
    """Training ended without meeting a target; names the config key to change."""


class StopAtTargets(L.Callback):
    """Stop once every target is met on the validation split: {metric: (">=" or "<=", value)}."""

    def __init__(self, targets: dict[str, tuple[str, float]]):
        self.targets = targets

    def met(self, metrics) -> bool:
        def ok(name, op, value):
            got = metrics.get(name)
            return got is not None and (float(got) >= value if op == ">=" else float(got) <= value)
        return all(ok(name, op, value) for name, (op, value) in self.targets.items())

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.targets and not trainer.sanity_checking and self.met(trainer.callback_metrics):
            trainer.should_stop = True


@torch.no_grad()
def evaluate_classifier(model: GPT, data: ModularAddition, tokens, labels) -> dict[str, float]:
    logits = answer_logits(model.eval(), tokens, data)
    return {"loss": float(F.cross_entropy(logits, labels)), "acc": float((logits.argmax(-1) == labels).float().mean())}


def train_base_model(build_model: Callable[[], GPT], data: ModularAddition, base_cfg, trainer_cfg,
                     out_dir: Path) -> dict:
    """Fit the model `build_model()` returns (built after seeding with `base_cfg.seed`) on the
    train split with the job's trainer settings (`trainer_cfg`: device, precision) until the
    validation split meets the targets; save it into `out_dir` with its train/val/test summary."""
    L.seed_everything(base_cfg.seed, verbose=False)
    model = build_model()
    tokens, labels = data.examples()
    train_idx, val_idx, test_idx = data.split()
    module = ModularClassifier(model, data, base_cfg.lr, base_cfg.weight_decay, base_cfg.betas)
    targets = {name: target for name, target in (("base/val_acc", (">=", base_cfg.target_val_acc)),
                                                 ("base/val_loss", ("<=", base_cfg.target_val_loss)))
               if target[1] is not None}
    stop = StopAtTargets(targets)
    trainer = build_trainer(trainer_cfg, out_dir, callbacks=[stop], max_epochs=base_cfg.max_epochs,
                            enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                            check_val_every_n_epoch=base_cfg.val_every_n_epochs, log_every_n_steps=1)
    train = EpochBatches(tokens[train_idx], labels[train_idx], batch_size=base_cfg.batch_size, seed=base_cfg.seed,
                         position=trainer_position(module))
    trainer.fit(module, train_dataloaders=train,
                val_dataloaders=batch_loader(tokens[val_idx], labels[val_idx], batch_size=8192, shuffle=False))
    model = model.cpu()
    val = evaluate_classifier(model, data, tokens[val_idx], labels[val_idx])
    if not stop.met({"base/val_acc": val["acc"], "base/val_loss": val["loss"]}):
        missed = [key for key, ok in (("target_val_acc", val["acc"] >= (base_cfg.target_val_acc or 0)),
                                      ("target_val_loss", base_cfg.target_val_loss is None
                                       or val["loss"] <= base_cfg.target_val_loss)) if not ok]
        raise BaseModelNotConverged(
            f"base_model.{missed[0]}", f"the base model did not converge in base_model.max_epochs={base_cfg.max_epochs} "
            f"(validation accuracy {val['acc']:.4f}, cross-entropy {val['loss']:.4f}; targets "
            f"{base_cfg.target_val_acc} / {base_cfg.target_val_loss}); raise base_model.max_epochs or change "
            f"{', '.join('base_model.' + m for m in missed)}. Nothing was cached.")
    test = evaluate_classifier(model, data, tokens[test_idx], labels[test_idx])
    summary = {"epochs": trainer.current_epoch, "steps": trainer.global_step,
               "val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"], "test_loss": test["loss"]}
    save_gpt(model, out_dir, summary)
    return summary
