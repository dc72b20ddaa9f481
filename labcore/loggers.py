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


def wandb_summary_run(project: str, sweep_dir: str | os.PathLike, save_dir: str | os.PathLike,
                      rows: list[dict], figures: list[Path] = (), job_type: str = "aggregate",
                      table_name: str = "summary") -> None:
    """Log a table (one row per dict) and figures as one W&B run in the sweep's group, the group its
    jobs logged to (`sweep_group`); offline without credentials, like the jobs."""
    import wandb as _wandb
    sweep = Path(sweep_dir).name
    run = _wandb.init(project=project, group=sweep, job_type=job_type, name=f"{job_type}-{sweep}",
                      dir=str(save_dir), mode=None if wandb_has_credentials() else "offline",
                      reinit="finish_previous")
    try:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        run.log({table_name: _wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
                 **{f"figures/{Path(p).stem}": _wandb.Image(str(p)) for p in figures}})
    finally:
        run.finish()


def report_to_loggers(loggers: list, config: dict, metrics: dict[str, float], figures: list) -> None:
    """Give every experiment logger what a dashboard needs to group, filter and compare runs: the
    resolved config as hyperparameters, the final metrics as the run's summary, figures as images.

    The job's last use of its loggers (a trainer, if any, has already finalized them), so each is
    finalized here: an analysis-only job has no trainer to flush and close them.
    """
    if not loggers:
        return  # no Lightning import for an analysis-only job that logs nowhere
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            _report_wandb(logger, config, metrics, figures)
        elif isinstance(logger, TensorBoardLogger):
            _report_tensorboard(logger, config, metrics, figures)
        elif isinstance(logger, CSVLogger):
            # Config only: a final-metrics row would be step len(buffer) (0 after a flush) and add a
            # column per metric to every per-step row of metrics.csv; metrics.json holds them.
            logger.log_hyperparams(config)
        else:
            logger.log_hyperparams(config)
            logger.log_metrics(metrics)
        logger.finalize("success")


def _report_wandb(logger, config: dict, metrics: dict[str, float], figures: list) -> None:
    import wandb as _wandb
    # Lightning passes the nested dict as is: W&B keeps it nested and filters/groups by `sae.k`.
    logger.log_hyperparams(config)
    if figures:
        logger.experiment.log({f"figures/{Path(p).stem}": _wandb.Image(str(p)) for p in figures})
    # The summary is what the runs table shows and groups; logging the metrics would add a history step.
    logger.experiment.summary.update(metrics)


def _report_tensorboard(logger, config: dict, metrics: dict[str, float], figures: list) -> None:
    import numpy as np
    from lightning.pytorch.core.saving import save_hparams_to_yaml
    from PIL import Image
    # The HParams plugin pairs the (flattened) config with these metrics, logged as scalars at step 0.
    # TensorBoard shows the first hparams a run wrote. A trainer writes some only for a module that
    # calls save_hyperparameters (none does); such a line needs `default_hp_metric: false` on the
    # logger, or the trainer's hparams with hp_metric=-1 are what the HParams tab shows.
    logger.log_hyperparams(config, metrics)
    for p in figures:
        image = np.asarray(Image.open(p).convert("RGB"))
        logger.experiment.add_image(f"figures/{Path(p).stem}", image, 0, dataformats="HWC")
    # The logger writes hparams.yaml only if absent, and a trainer already wrote its own (empty) one.
    save_hparams_to_yaml(Path(logger.log_dir) / "hparams.yaml", logger.hparams)
