"""A per-step JSONL log: one JSON object per line, appended as a run goes.

Training curves and figures are drawn from this file, not from in-memory histories that a killed
and resumed job would lose. Each `append` is flushed, so a kill -9 loses at most the line being
written; a torn last line is dropped when the log is reopened. `truncate(n)` keeps the first n
records: a job resumed from a checkpoint cuts the log back to what the checkpoint had seen, so the
resumed run's records follow without duplicates. nanodesmo's `reaction_log.jsonl` is one of these.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):            # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None                       # JSON has no NaN/Inf; null keeps every reader working
    return value


class StepLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._count = sum(1 for _ in self._lines())
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def truncate(self, n_records: int, keep_steps_below: int | None = None) -> None:
        """Keep the first `n_records` records, and of the later ones those whose "step" is below
        `keep_steps_below` (when given). Atomic: a kill leaves the old file or the new one."""
        lines = list(self._lines())
        kept = lines[:n_records]
        if keep_steps_below is not None:
            kept += [line for line in lines[n_records:] if json.loads(line).get("step", keep_steps_below) < keep_steps_below]
        if len(kept) == len(lines):
            return
        from labcore.artifacts import atomic_write_text
        self._file.close()
        atomic_write_text(self.path, "".join(kept))
        self._count = len(kept)
        self._file = open(self.path, "a", encoding="utf-8")

    def read(self) -> list[dict[str, Any]]:
        return read_step_log(self.path)

    def close(self) -> None:
        self._file.close()

    def _lines(self) -> Iterator[str]:
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                yield from (line for line in f if line.endswith("\n"))

    def _drop_torn_tail(self) -> None:
        """A process killed mid-write leaves a last line without its newline: cut it off."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)


def read_step_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a step log (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def series(records: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list, list]:
    """(x values, key values) of the records that have `key`, e.g. series(log, "train/loss")."""
    pairs = [(r[x], r[key]) for r in records if r.get(key) is not None and x in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]
