"""What every job leaves behind, written atomically (tmp file + rename in the same directory).

A job killed mid-write leaves either the previous file or none, never a half-written one that
looks whole. `Manifest` records how a result was produced: resolved config, overrides, seed,
git sha, package versions, input hashes, wall time and status.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "numpy", "safetensors", "wandb",
            "transformers", "sae-lens", "submitit", "hydra-submitit-launcher", "interp-lab")


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # renaming over a device (os.devnull) or a directory would replace it with a regular file
        raise ValueError(f"{path} exists and is not a regular file: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def json_default(obj: Any):
    """`json.dumps(default=...)` for numpy/torch scalars and paths."""
    if hasattr(obj, "item"):           # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any):
    """JSON has no NaN/Inf: write them as null so every reader parses the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=json_default) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=json_default).encode()).hexdigest()


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class Manifest:
    """manifest.json of one job; rewritten atomically at start and at every status change."""

    def __init__(self, output_dir: str | os.PathLike, config: dict, overrides: list[str], seed: int | None):
        self.path = Path(output_dir) / "manifest.json"
        self.start = time.time()
        self.data: dict[str, Any] = {
            "status": "running",
            "seed": seed,
            "overrides": list(overrides),
            "git_sha": git_sha(),
            "packages": package_versions(),
            "host": os.uname().nodename,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "inputs": {},
            "outputs": {},
            "config": config,
        }
        self.write()

    def add_input(self, name: str, digest: str) -> None:
        self.data["inputs"][name] = digest

    def add_output(self, name: str, path: str | os.PathLike) -> None:
        self.data["outputs"][name] = str(path)

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["wall_time_s"] = round(time.time() - self.start, 3)
        if error:
            self.data["error"] = error
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path, self.data)
