"""Content-addressed cache for expensive, deterministic inputs (base models, activations).

An entry lives at `<cache_dir>/<kind>/<sha256(key)[:16]>/`. It is built once, in a temporary
directory renamed into place when complete, under a file lock: when a sweep's jobs start
together, the first builds and the others wait and then reuse it. A `key.json` beside the data
records what the hash stands for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock

from labcore.artifacts import atomic_write_json, sha256_json

COMPLETE = "COMPLETE"


def entry_dir(cache_dir: str | os.PathLike, kind: str, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / kind / sha256_json(key)[:16]


def cached(cache_dir: str | os.PathLike, kind: str, key: dict[str, Any],
           build: Callable[[Path], None], log: Callable[[str], None] = print) -> Path:
    """Return the entry directory for `key`, calling `build(tmp_dir)` first if it does not exist."""
    final = entry_dir(cache_dir, kind, key)
    if (final / COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / COMPLETE).exists():    # another job built it while we waited
            log(f"[cache] {kind} {final.name}: built by another job, reusing")
            return final
        if final.exists():                 # left by a killed builder without the marker
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            log(f"[cache] {kind} {final.name}: building")
            build(tmp)
            atomic_write_json(tmp / "key.json", key)
            (tmp / COMPLETE).touch()
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Memory-mapped by default: a sweep's jobs share the page cache instead of copies."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_key(entry: str | os.PathLike) -> dict:
    return json.loads((Path(entry) / "key.json").read_text())
