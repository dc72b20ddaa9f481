"""The contract between `labcore.run` and a research line's job.

A task turns a composed config into: a validation step (cheap, before any compute), a prepare
step (cached inputs such as a base model or activations), a LightningModule + DataModule to fit,
and an analysis step that returns flat numeric metrics and writes figures/artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    import lightning as L

    from labcore.artifacts import Manifest


class Task:
    def __init__(self, cfg: DictConfig, output_dir: Path, manifest: "Manifest"):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.manifest = manifest

    def validate(self) -> None:
        """Raise labcore.validate.ConfigError naming the bad key. No heavy imports or compute."""

    def prepare(self) -> None:
        """Build or fetch cached inputs."""

    def build(self) -> tuple["L.LightningModule", "L.LightningDataModule | None"]:
        raise NotImplementedError

    def analyse(self, trainer: "L.Trainer", module: "L.LightningModule",
                datamodule: "L.LightningDataModule | None") -> dict[str, float]:
        """Evaluate, write figures/artifacts under self.output_dir, return flat metrics."""
        return {}

    def summary(self, metrics: dict[str, float]) -> list[tuple[str, object]]:
        """Rows of the table printed at the end of the job."""
        return list(metrics.items())

    @property
    def figures_dir(self) -> Path:
        d = self.output_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        return d
