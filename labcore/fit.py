"""Everything Lightning: the trainer built from the config, and what every fit gets from it: the
per-step log as a Lightning logger, resume checkpoints (atomic, with RNG states and the step log's
position), signal handling at step ends, and progress lines in log files. Imported only by jobs that
train, so analysis-only jobs never pay Lightning's import."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from labcore.output import ProgressLines, is_terminal, quiet_third_party
from labcore.signals import Interruptions, JobInterrupted
from labcore.steplog import StepLog
from labcore.task import resume_checkpoint


def step_logs_due(module: L.LightningModule) -> bool:
    """Whether the loggers write this training step's values (every `trainer.log_every_n_steps`).

    `LightningModule.log` costs ~1 ms a call in Lightning's result collection, whether or not the
    step is written: a small SAE step (~20 ms on a CPU, far less on a GPU) logging six values lost a
    quarter of its speed to it. Modules call this and log only on the steps that are written; the
    step log, W&B and the CSV get exactly the records they got before.
    """
    trainer = module._trainer               # None outside a fit (a module's step called directly)
    connector = getattr(trainer, "_logger_connector", None)          # Lightning's own decision
    return True if connector is None else bool(connector.should_update_logs)


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint, whoever writes it, goes to a temporary file renamed over the target: a
    job killed mid-write (or on a full disk) keeps its previous good checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from labcore.artifacts import atomic_path
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class RandomState(Callback):
    """Python, numpy and torch RNG states in every checkpoint, restored on resume: dropout, random
    batches and anything else drawn after a resume continue exactly where they were."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain lists and tensors: Lightning loads checkpoints with torch.load(weights_only=True)
        checkpoint["rng_states"] = {"python": random.getstate(),
                                    "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                                    "torch": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        random.setstate(states["python"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(states["torch"])
        if states["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


class ResumeCheckpoint(Callback):
    """`<output>/checkpoints/last.ckpt`, the whole training state, written every `every_n_steps`
    steps and every `every_minutes` minutes, at the end of training, and when the job is asked to
    stop (SIGTERM/SIGINT, recorded by `labcore.signals`).

    Saves happen at the end of a training step, where the state is consistent. After a save for a
    signal the job stops at the next hook (`JobInterrupted`), once Lightning has logged the step,
    so the step log holds every step the checkpoint holds.
    """

    def __init__(self, path: Path, every_n_steps: int | None, every_minutes: float | None,
                 interruptions: Interruptions | None = None):
        self.path = Path(path)
        self.every_n_steps, self.every_s = every_n_steps, every_minutes * 60 if every_minutes else None
        self.interruptions = interruptions
        self._last = time.monotonic()
        self._saved_for_signal = False

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._last = time.monotonic()

    def _stop_if_saved_for_signal(self, *args) -> None:
        if self._saved_for_signal:
            self.interruptions.raise_if_pending()

    on_train_batch_start = on_validation_start = on_train_epoch_end = _stop_if_saved_for_signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.interruptions is not None and self.interruptions.pending is not None:
            self.save(trainer)
            self._saved_for_signal = True
            return
        due_steps = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        due_time = self.every_s and time.monotonic() - self._last >= self.every_s
        if due_steps or due_time:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)


def native_bf16_matmul(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products have fast kernels on `device`.

    On a CPU torch hands bf16 products to oneDNN only where the CPU has AVX-512 (x86) or bf16
    instructions (Arm); elsewhere, AVX2-only x86 such as most laptops and AMD Zen 3 servers, they run
    in a scalar fallback at ~1 GFLOP/s: a [4096, 512] x [512, 4096] product took 31.7 s in bf16 vs
    0.11 s in fp32 on an AMD EPYC (Zen 3) here. On a GPU bf16 runs in CUDA kernels (tensor cores from Ampere on).
    """
    if torch.device(device).type != "cpu":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # the test torch's matmul makes
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


_warned_precisions: set[str] = set()


def warn_if_slow_precision(trainer: L.Trainer) -> None:
    """A bf16 fit on a CPU without bf16 kernels computes the right numbers 100-300x slower than
    fp32: say so (once a process) before the first step rather than let a sweep burn hours."""
    precision, device = str(trainer.precision), trainer.strategy.root_device
    if precision.startswith("bf16") and not native_bf16_matmul(device) and precision not in _warned_precisions:
        import warnings
        _warned_precisions.add(precision)
        warnings.warn(f"trainer.precision={precision}: this CPU has no bf16 matrix kernels (torch's oneDNN "
                      "needs AVX-512 or Arm bf16), so bf16 products run 100-300x slower than fp32 here; "
                      "use trainer.precision=32-true on this machine, or a GPU", RuntimeWarning, stacklevel=3)


def build_trainer(trainer_cfg: DictConfig, output_dir: Path, loggers: Sequence[Logger] = (),
                  callbacks: Sequence[Callback] = (), **overrides) -> L.Trainer:
    """The trainer of a `trainer/` config node (keys in `overrides` win) with these loggers and callbacks.

    Every fit of every line goes through here (SAEs, base models, nanodesmo), so what every fit
    needs lives in one place: atomic checkpoint writes, progress lines in log files, and inside
    SLURM, submitit owning requeueing (SIGUSR2) with Lightning's own SIGUSR1 auto-requeue off.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    quiet_third_party()
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    callbacks = list(callbacks)
    if overrides.get("enable_progress_bar", trainer_cfg.get("enable_progress_bar", True)) and not is_terminal():
        callbacks.append(LineProgressBar())  # a log file gets lines, not a bar redrawn per step
    trainer = instantiate(trainer_cfg, **{"logger": list(loggers) or False, "callbacks": callbacks,
                                          "plugins": plugins, "default_root_dir": str(output_dir), **overrides})
    warn_if_slow_precision(trainer)
    return trainer


def fit(task, cfg: DictConfig, output_dir: Path, loggers: Sequence[Logger],
        interruptions: Interruptions | None = None) -> None:
    """Fit the task's module, resuming from `<output>/checkpoints/last.ckpt` when it exists (or from
    `ckpt_path`); afterwards `task.trainer/module/datamodule` are set for `analyse()`."""
    from hydra.utils import instantiate

    step_logger = StepLogger(task.step_log_path)
    module, datamodule = task.build()
    every = cfg.get("checkpoint") or {}
    last = ResumeCheckpoint(resume_checkpoint(output_dir), every.get("every_n_steps"), every.get("every_minutes"),
                            interruptions)
    callbacks = [StepLogPosition(step_logger), RandomState(), last,
                 *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c)]
    trainer = build_trainer(cfg.trainer, output_dir, [step_logger, *loggers], callbacks)
    task.trainer, task.module, task.datamodule = trainer, module, datamodule
    ckpt_path = cfg.get("ckpt_path") or (last.path if cfg.get("resume", True) and last.path.exists() else None)
    if ckpt_path:
        print(f"[resume] continuing from {ckpt_path}", flush=True)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:
        # Lightning's own SIGTERM handling ends the fit with exit status 0 at the step's end (after
        # our checkpoint was written); report it as the interruption it is
        if interruptions is not None:
            interruptions.raise_if_pending()
        raise JobInterrupted(signal.SIGTERM) from None
    if trainer.interrupted:
        raise KeyboardInterrupt("training interrupted")
