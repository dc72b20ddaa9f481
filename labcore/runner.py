"""`labcore.run(cfg)`: the single Lightning-based entrypoint of every research line.

    seed -> validate (clear errors, before compute) -> task.prepare (cached inputs)
    -> instantiate module / datamodule / loggers / callbacks / trainer from the config
    -> trainer.fit -> task.analyse -> metrics.json + manifest.json, atomically.

Each package's `python -m <pkg>.<verb>` is a thin @hydra.main around this function.
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


def build_trainer(cfg: DictConfig, output_dir: Path):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    plugins = []
    if SLURMEnvironment.detect():
        # submitit owns requeueing (USR2); Lightning's USR1 auto-requeue would fight it
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                                     plugins=plugins or None, default_root_dir=str(output_dir))
    return trainer


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one job described by `cfg`; return its metrics (also written to metrics.json)."""
    from hydra.utils import get_class

    from labcore.loggers import finish_wandb

    out = output_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    # A re-run in the same directory must not leave the previous run's metrics looking current.
    metrics_path.unlink(missing_ok=True)
    seed = cfg.get("seed")
    manifest = Manifest(out, _resolved(cfg), _overrides(), seed)
    status, error = "failed", None
    try:
        task_cls = get_class(get(cfg, "task._target_"))
        task = task_cls(cfg, out, manifest)
        task.validate()

        import lightning as L
        L.seed_everything(seed, workers=True, verbose=False)
        t0 = time.time()
        task.prepare()
        module, datamodule = task.build()
        trainer = build_trainer(cfg, out)
        ckpt_path = cfg.get("ckpt_path")
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted")
        metrics = dict(task.analyse(trainer, module, datamodule))
        metrics["wall_time_s"] = round(time.time() - t0, 3)
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float))]
        if bad:
            raise TypeError(f"metrics must be flat numbers; offending keys: {bad}")
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

