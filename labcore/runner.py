"""`labcore.run(cfg)`: the single entrypoint of every job of every research line.

    manifest -> validate (clear errors, before compute) -> seed -> task.prepare (cached inputs)
    -> [TrainingTask: build module + data, fit with Lightning] -> task.analyse
    -> metrics to the loggers, metrics.json last and atomically; manifest status throughout.

An analysis-only `Task` skips the fit and everything Lightning (see labcore.task). Each package's
`python -m <pkg>.<verb>` is a thin @hydra.main around this function.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from labcore.artifacts import Manifest, atomic_write_json
from labcore.tables import table
from labcore.validate import ConfigError, get


def output_dir_of(cfg: DictConfig) -> Path:
    out = get(cfg, "paths.output_dir")
    if not out:
        raise ConfigError("paths.output_dir", "no output directory (run through Hydra or set it)")
    return Path(out)


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig
        return list(HydraConfig.get().overrides.task)
    except Exception:
        return []


def _resolved(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        # name the key whose interpolation fails instead of a stack trace deep in OmegaConf
        key = getattr(e, "full_key", "") or "config"
        raise ConfigError(str(key), str(e).splitlines()[0]) from None


def seed_everything(seed: int | None) -> None:
    """Seed Python, numpy and torch (what Lightning's seed_everything does, without importing it)."""
    import os
    import random

    import numpy as np
    import torch
    seed = 0 if seed is None else int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)   # Lightning's dataloader workers read it
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_loggers(cfg: DictConfig) -> list:
    from hydra.utils import instantiate
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one job described by `cfg`; return its metrics (also written to metrics.json)."""
    from hydra.utils import get_class

    from labcore.loggers import finish_wandb, report_to_loggers
    from labcore.task import TrainingTask

    out = output_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    # A re-run in the same directory must not leave the previous run's metrics looking current.
    metrics_path.unlink(missing_ok=True)
    seed = cfg.get("seed")
    manifest = Manifest(out, _resolved(cfg), _overrides(), seed)
    status, error = "failed", None
    try:
        task = get_class(get(cfg, "task._target_"))(cfg, out, manifest)
        task.validate()
        seed_everything(seed)
        t0 = time.time()
        loggers = build_loggers(cfg)
        task.prepare()
        if isinstance(task, TrainingTask):
            from labcore.fit import fit
            fit(task, cfg, out, loggers)
        metrics = dict(task.analyse())
        metrics["wall_time_s"] = round(time.time() - t0, 3)
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float))]
        if bad:
            raise TypeError(f"metrics must be flat numbers; offending keys: {bad}")
        report_to_loggers(loggers, manifest.data["config"], metrics, sorted((out / "figures").glob("*.png")))
        atomic_write_json(metrics_path, metrics)
        manifest.add_output("metrics", metrics_path)
        status = "completed"
        print(table(task.summary(metrics), title=f"\n{cfg.get('name', 'job')} -> {out}"), flush=True)
        return metrics
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into sys.exit(1)
        status, error = "interrupted", repr(e)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        manifest.finish(status, error)
        finish_wandb()
