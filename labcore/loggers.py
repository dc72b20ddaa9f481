"""Experiment loggers as a config group (`logger=csv|wandb|tensorboard`)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc"))
        return any(rc.authenticators(h) for h in ("api.wandb.ai",))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def sweep_group() -> str | None:
    """Name shared by all jobs of one Hydra multirun (its sweep dir), or None for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir).name
    except Exception:
        pass
    return None


def wandb(project: str, save_dir: str, name: str | None = None, group: str | None = None,
          offline: bool | None = None, tags: list[str] | None = None, **kwargs):
    """WandbLogger that goes offline when no API key is configured and groups a sweep's jobs.

    `WANDB_MODE=disabled` (tests, CI) is honoured by wandb itself.
    """
    from lightning.pytorch.loggers import WandbLogger
    if offline is None:
        offline = not wandb_has_credentials()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, save_dir=save_dir, name=name, group=group or sweep_group(),
                       offline=offline, tags=list(tags or []), **kwargs)


def finish_wandb() -> None:
    """End the live W&B run, if any: otherwise the next job in this process would reuse it."""
    import sys
    if "wandb" in sys.modules:
        import wandb as _wandb
        if _wandb.run is not None:
            _wandb.finish()
