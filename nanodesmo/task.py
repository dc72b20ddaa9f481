"""The self-state training job: validate everything named in the config (model, self-state, regimes,
schedule, corpus) before any compute, train through labcore's runner (resume, signals, step log as
`reaction_log.jsonl`), then report the validation loss and the state's last values."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from labcore.data import StepBatches, trainer_position
from labcore.task import TrainingTask
from labcore.validate import ConfigError, get, positive_int, require


class SelfStateTraining(TrainingTask):
    @property
    def step_log_path(self) -> Path:
        return self.output_dir / "reaction_log.jsonl"

    def validate(self) -> None:
        from labcore.datasets.text import corpus_path
        from labcore.models.gpt import GPTConfig
        from nanodesmo.model import SelfStateConfig
        from nanodesmo.regimes import parse
        cfg = self.cfg
        t = cfg.train
        for key in ("max_iters", "batch_size", "eval_interval", "eval_iters"):
            positive_int(cfg, f"train.{key}")
        require(cfg, "train.warmup_iters", lambda v: isinstance(v, int) and 0 <= v < t.max_iters,
                "must be an integer in [0, train.max_iters)")
        require(cfg, "train.lr", lambda v: v > 0, "must be > 0")
        require(cfg, "train.min_lr", lambda v: 0 <= v <= t.lr, "must be in [0, train.lr]")
        self.regimes = parse(get(cfg, "regime"), t.max_iters)
        try:
            self.gpt_config = GPTConfig(vocab_size=1, block_size=cfg.dataset.block_size,
                                        **{k: v for k, v in cfg.model.items() if k != "_target_"})
        except (TypeError, ValueError) as e:
            raise ConfigError("model", str(e)) from None
        try:
            self.self_state_config = SelfStateConfig(**cfg.self_state)
        except (TypeError, ValueError) as e:
            key = str(e).split(" ")[0] if str(e).startswith("self_state.") else "self_state"
            raise ConfigError(key, str(e)) from None
        try:
            corpus_path(get(cfg, "dataset.path"), get(cfg, "dataset.url"), cfg.dataset.get("stream"))
        except FileNotFoundError as e:
            raise ConfigError("dataset.path", str(e)) from None

    def build(self):
        from hydra.utils import instantiate

        from nanodesmo.model import SelfStateGPT
        from nanodesmo.regimes import Schedule
        from nanodesmo.training import SelfStateLM
        cfg = self.cfg
        data = instantiate(cfg.dataset)
        self.data = data
        gpt = self.gpt_config
        gpt.vocab_size = data.vocab_size
        model = SelfStateGPT(gpt, self.self_state_config, seed=cfg.seed)
        schedule = Schedule(self.regimes, data.vocab_size, cfg.seed)
        probe, _ = data.batch("val", cfg.train.probe_size, torch.Generator().manual_seed(12345))
        module = SelfStateLM(model, schedule, cfg.train, probe)
        return module, _Data(data, cfg.train, cfg.seed)

    def analyse(self) -> dict[str, float]:
        from nanodesmo.evaluate import evaluate_loss
        module = self.module
        val = evaluate_loss(module.model, self.datamodule.val_batches())
        metrics = {"val_loss": val, "steps": float(self.trainer.global_step)}
        best = self.trainer.checkpoint_callback
        if best is not None and best.best_model_score is not None:
            metrics["best_val_loss"] = float(best.best_model_score)
        if module.self_state is not None:
            metrics["self_norm"] = float(module.self_state.state.norm())
            metrics["state_effect"] = module.state_effect() if module.self_state.cfg.dim else 0.0
        return metrics


class _Data(L.LightningDataModule):
    def __init__(self, data, train, seed: int):
        super().__init__()
        self.data, self.train, self.seed = data, train, seed

    def train_dataloader(self):
        def make(step, generator):
            return self.data.batch("train", self.train.batch_size, generator)
        return StepBatches(make, self.train.max_iters, self.seed, position=trainer_position(self))

    def val_batches(self) -> list:
        g = torch.Generator().manual_seed(2 ** 31 - 1)   # the same held-out windows at every evaluation
        return [self.data.batch("val", self.train.batch_size, g) for _ in range(self.train.eval_iters)]

    def val_dataloader(self):
        from torch.utils.data import DataLoader
        return DataLoader(self.val_batches(), batch_size=None)
