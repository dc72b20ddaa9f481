"""A finished (or checkpointed) training run read back for analysis: its config from manifest.json,
its data, and its model with the state it had at a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from labcore.steplog import read_step_log


@dataclass
class Run:
    path: Path
    cfg: DictConfig
    model: "torch.nn.Module"
    data: object

    def reaction_log(self) -> list[dict]:
        return read_reaction_log(self.path)


def read_reaction_log(run_dir: str | Path) -> list[dict]:
    """A run's per-step training records (its validation records left out)."""
    path = Path(run_dir) / "reaction_log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no reaction_log.jsonl: not a nanodesmo training run")
    return [r for r in read_step_log(path) if "loss" in r]


def load_run(path: str | Path, checkpoint: str = "last") -> Run:
    """The run in `path` with its model at checkpoints/<checkpoint>.ckpt (in eval mode)."""
    from hydra.utils import instantiate

    from labcore.models.gpt import GPTConfig
    from nanodesmo.model import SelfStateConfig, SelfStateGPT
    path = Path(path)
    manifest, ckpt = path / "manifest.json", path / "checkpoints" / f"{checkpoint}.ckpt"
    for f in (manifest, ckpt):
        if not f.exists():
            raise FileNotFoundError(f"{path} is not a nanodesmo training run with a checkpoint: {f} is missing")
    cfg = OmegaConf.create(json.loads(manifest.read_text())["config"])
    data = instantiate(cfg.dataset)
    gpt = GPTConfig(vocab_size=data.vocab_size, block_size=cfg.dataset.block_size,
                    **{k: v for k, v in cfg.model.items() if k != "_target_"})
    model = SelfStateGPT(gpt, SelfStateConfig(**cfg.self_state), seed=cfg.seed)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return Run(path, cfg, model.eval(), data)
