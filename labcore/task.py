"""The contract between `labcore.run` and a research line's job. Two kinds share one runner:

* `Task`, analysis only: validate -> prepare -> analyse. No LightningModule, no trainer, and
  Lightning is never imported (spectra's studies, nanodesmo's frozen-weight test, feature analysis).
* `TrainingTask`, train then analyse: `build()` returns the LightningModule (automatic or manual
  optimisation) and its DataModule; the runner fits them with the trainer built from the config,
  then `analyse()` reads `self.trainer`, `self.module` and `self.datamodule`.

Either way the runner owns what every job shares: validation before compute, seeding, the
manifest, the loggers, the per-step log, and metrics.json written last and atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    import lightning as L

    from labcore.artifacts import Manifest


def resume_checkpoint(output_dir: str | Path) -> Path:
    """Where a training job keeps the whole training state it resumes from."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


class Task:
    """An analysis-only job; subclass `TrainingTask` for a job that trains first."""

    def __init__(self, cfg: DictConfig, output_dir: Path, manifest: "Manifest"):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.manifest = manifest

    def validate(self) -> None:
        """Raise labcore.validate.ConfigError naming the bad key. No heavy imports or compute."""

    def prepare(self) -> None:
        """Build or fetch cached inputs (models, activations)."""

    def analyse(self) -> dict[str, float]:
        """Evaluate, write figures/artifacts under self.output_dir, return flat numeric metrics."""
        return {}

    def summary(self, metrics: dict[str, float]) -> list[tuple[str, object]]:
        """Rows of the table printed at the end of the job."""
        return list(metrics.items())

    @property
    def figures_dir(self) -> Path:
        d = self.output_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def step_log_path(self) -> Path:
        """The job's per-step JSONL log (`labcore.steplog`), written as training goes."""
        return self.output_dir / "steps.jsonl"


class TrainingTask(Task):
    """A job that fits a LightningModule before analysing it."""

    trainer: "L.Trainer | None" = None
    module: "L.LightningModule | None" = None
    datamodule: "L.LightningDataModule | None" = None

    def build(self) -> tuple["L.LightningModule", "L.LightningDataModule | None"]:
        """The module to fit (it may set `automatic_optimization = False` to own the step) and its data.

        Resume is exact when a step's whole state change happens inside the step (training_step,
        optimizer_step): the resume checkpoint is written by a callback at the end of each step,
        and Lightning runs callbacks' on_train_batch_end before the module's own. Training data
        should come from `labcore.data.EpochBatches` (or another loader that restarts mid-epoch)."""
        raise NotImplementedError
