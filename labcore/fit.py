"""Everything Lightning: the trainer built from the config, and the per-step log as a Lightning
logger. Imported only by jobs that train, so analysis-only jobs never pay Lightning's import."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers.logger import Logger
from omegaconf import DictConfig

from labcore.output import ProgressLines, is_terminal, quiet_third_party
from labcore.steplog import StepLog


class StepLogger(Logger):
    """Lightning logger writing every logged value to a `labcore.steplog.StepLog`."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.log_file = StepLog(path)
        self._rewind_to: int | None = None

    @property
    def name(self) -> str:
        return "steps"

    @property
    def version(self) -> str:
        return ""

    @property
    def experiment(self) -> StepLog:
        return self.log_file

    def rewind(self, records: int) -> None:
        """Cut the log back to a checkpoint that had seen `records` records, when the resumed fit
        logs its first step s: later records of steps before s stay (a checkpoint written at the
        end of a batch is saved before Lightning logs that batch), those of steps >= s go."""
        self._rewind_to = records

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._rewind_to is not None:
            self.log_file.truncate(self._rewind_to, keep_steps_below=step)
            self._rewind_to = None
        self.log_file.append({"step": step, **metrics})

    def log_hyperparams(self, params: Any, *args, **kwargs) -> None:
        pass  # the manifest holds the config

    def finalize(self, status: str) -> None:
        self.log_file.close()


class StepLogPosition(Callback):
    """Records the step log's length in every checkpoint; a fit resumed from it rewinds the log
    there, so the records of steps the checkpoint never saw are replaced, not duplicated."""

    def __init__(self, logger: StepLogger):
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["step_log_records"] = len(self.logger.log_file)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "step_log_records" in checkpoint:
            self.logger.rewind(checkpoint["step_log_records"])


class LineProgressBar(ProgressBar):
    """Lightning's progress for log files: a plain line every few seconds or tenth of training, and
    at its end: step, rate, ETA and the progress-bar metrics (loss, the last validation's values)."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._lines: ProgressLines | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _metrics(self, trainer, pl_module) -> str:
        values = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches
        self._lines = ProgressLines("[train] step", int(total) if total != float("inf") else None, unit="steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._enabled and self._lines is not None:
            self._lines.update(trainer.global_step, self._metrics(trainer, pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._enabled and self._lines is not None:  # the last line, also when stopped early
            self._lines.update(trainer.global_step, self._metrics(trainer, pl_module), force=True)


def build_trainer(trainer_cfg: DictConfig, output_dir: Path, loggers: Sequence[Logger] = (),
                  callbacks: Sequence[Callback] = (), **overrides) -> L.Trainer:
    """The trainer of a `trainer/` config node (keys in `overrides` win) with these loggers and callbacks.

    Every fit of every line goes through here (SAEs, base models, nanodesmo), so cluster handling
    lives in one place: inside SLURM, submitit owns requeueing (SIGUSR2) and Lightning's own
    SIGUSR1 auto-requeue is turned off.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    quiet_third_party()
    plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
    callbacks = list(callbacks)
    if overrides.get("enable_progress_bar", trainer_cfg.get("enable_progress_bar", True)) and not is_terminal():
        callbacks.append(LineProgressBar())  # a log file gets lines, not a bar redrawn per step
    return instantiate(trainer_cfg, **{"logger": list(loggers) or False, "callbacks": callbacks,
                                       "plugins": plugins, "default_root_dir": str(output_dir), **overrides})


def fit(task, cfg: DictConfig, output_dir: Path, loggers: Sequence[Logger]) -> None:
    """Fit the task's module; afterwards `task.trainer/module/datamodule` are set for `analyse()`."""
    from hydra.utils import instantiate

    step_logger = StepLogger(task.step_log_path)
    module, datamodule = task.build()
    callbacks = [StepLogPosition(step_logger), *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c)]
    trainer = build_trainer(cfg.trainer, output_dir, [step_logger, *loggers], callbacks)
    task.trainer, task.module, task.datamodule = trainer, module, datamodule
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
