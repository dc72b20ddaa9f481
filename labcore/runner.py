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
from labcore.validate import ConfigError, get, seed_value


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


class NonFiniteMetricsError(ValueError):
    """A job's final metrics contain NaN or Inf: a diverged or broken run, not a result."""


IGNORED_ON_RESUME = ("paths", "resume", "ckpt_path")  # where and how, not what, a job computes


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (top-level IGNORED_ON_RESUME aside)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in IGNORED_ON_RESUME:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _read_json(path: Path) -> dict | None:
    import json
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _previous_result(out: Path, resolved: dict, resume: bool) -> dict | None:
    """The metrics of a job already finished in `out` with this config (then it is not re-run);
    None when there is nothing to reuse. Refuses to resume or reuse work of another config."""
    from labcore.task import resume_checkpoint
    previous = _read_json(out / "manifest.json")
    metrics = _read_json(out / "metrics.json")
    finished = previous is not None and previous.get("status") == "completed" and metrics is not None
    if not resume or previous is None or not (finished or resume_checkpoint(out).exists()):
        return None
    changed = config_changes(previous.get("config") or {}, resolved)
    if changed:
        shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
        raise ConfigError("resume", f"{out} holds {'a finished' if finished else 'an unfinished'} job with another "
                                    f"config ({shown} differ); use a new directory, or resume=false to start it clean")
    return metrics if finished else None


def _start_clean(out: Path) -> None:
    """resume=false: forget what an earlier attempt in this directory left (results, checkpoints)."""
    import shutil
    for name in ("metrics.json", "steps.jsonl"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one job described by `cfg`; return its metrics (also written to metrics.json).

    Re-running a job in its directory resumes it: a finished job returns its metrics without
    running again, an interrupted one continues from its last checkpoint (`resume=false` starts
    clean). SIGTERM/SIGINT checkpoint a training job and exit with 143/130 (labcore.signals).
    """
    import math

    from hydra.utils import get_class

    from labcore.loggers import finish_wandb, report_to_loggers
    from labcore.signals import Interruptions, JobInterrupted
    from labcore.task import TrainingTask

    out = output_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    resolved = _resolved(cfg)
    resume = bool(cfg.get("resume", True))
    finished = _previous_result(out, resolved, resume)
    if finished is not None:
        print(f"[resume] {out} already holds this job's results (metrics.json); not running it again", flush=True)
        return finished
    if not resume:
        _start_clean(out)
    metrics_path = out / "metrics.json"
    # a re-run must never leave an earlier attempt's metrics looking current
    metrics_path.unlink(missing_ok=True)
    seed = cfg.get("seed")
    manifest = Manifest(out, resolved, _overrides(), seed)
    status, error = "failed", None
    with Interruptions() as interruptions:
        try:
            task = get_class(get(cfg, "task._target_"))(cfg, out, manifest)
            seed_value(cfg, "seed")
            task.validate()
            seed_everything(seed)
            t0 = time.time()
            loggers = build_loggers(cfg)
            task.prepare()
            # whatever prepare did (train a base model on a cold cache, or nothing on a warm one), what
            # follows depends only on the config and seed: the same seed gives the same model and data order
            seed_everything(seed)
            if isinstance(task, TrainingTask):
                from labcore.fit import fit
                with interruptions.deferred():  # a signal checkpoints at the end of the step first
                    fit(task, cfg, out, loggers, interruptions)
            metrics = dict(task.analyse())
            metrics["wall_time_s"] = round(time.time() - t0, 3)
            bad = [k for k, v in metrics.items() if not isinstance(v, (int, float))]
            if bad:
                raise TypeError(f"metrics must be flat numbers; offending keys: {bad}")
            nonfinite = [k for k, v in metrics.items() if not math.isfinite(v)]
            if nonfinite:
                raise NonFiniteMetricsError(f"non-finite final metrics (NaN/Inf): {', '.join(nonfinite)}; "
                                            "the run diverged or its inputs are broken; nothing was written as a result")
            report_to_loggers(loggers, manifest.data["config"], metrics, sorted((out / "figures").glob("*.png")))
            atomic_write_json(metrics_path, metrics)
            manifest.add_output("metrics", metrics_path)
            status = "completed"
            print(table(task.summary(metrics), title=f"\n{cfg.get('name', 'job')} -> {out}"), flush=True)
            return metrics
        except (JobInterrupted, KeyboardInterrupt) as e:
            status, error = "interrupted", str(e) or repr(e)
            raise
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            _best_effort(manifest.finish, status, error)
            _best_effort(finish_wandb)


def _best_effort(fn, *args) -> None:
    """Bookkeeping in `finally` must not replace the exception that ended the job (on a full disk
    the manifest write fails too): report its own failure on stderr and let the original through."""
    import sys
    try:
        fn(*args)
    except Exception as e:
        print(f"[labcore] {getattr(fn, '__qualname__', fn)} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
