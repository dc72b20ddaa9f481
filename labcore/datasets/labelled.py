"""Texts with a group label, from a local CSV or JSONL table (one row per sample).

    data = LabelledText("people.csv")                  # columns: text, label [, split, ...]
    data.labels, data.label_names                       # [n] group index, the sorted label strings
    data.batch(lm, [0, 1, 2], max_length=64)            # the model's inputs for those samples

A `split` column (train / heldout) is kept: a probe is judged on samples whose templates it did not
train on. Every other column is kept too (`data.columns`), for reports.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from labcore.validate import ConfigError


def read_table(path: str | os.PathLike, key: str) -> list[dict]:
    """The rows of a CSV (header line) or JSONL (one object a line) file; errors name `key`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"{path} does not exist (a CSV or JSONL table, one row per sample)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(key, f"{path}, line {i}: not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ConfigError(key, f"{path}, line {i}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    raise ConfigError(key, f"{path}: unknown table type {path.suffix!r} (use .csv or .jsonl)")


class LabelledText:
    def __init__(self, path: str | os.PathLike, text_field: str = "text", label_field: str = "label",
                 key: str = "dataset.path"):
        self.path, self.key = Path(path), key
        self._init_rows(read_table(path, key), text_field, label_field)

    def _init_rows(self, rows: list[dict], text_field: str, label_field: str) -> None:
        if not rows:
            raise ConfigError(self.key, f"{self.path} has no rows")
        for field in (text_field, label_field):
            if field not in rows[0]:
                raise ConfigError(self.key, f"{self.path} has no {field!r} column (columns: {sorted(rows[0])})")
        self.texts = [str(r[text_field]) for r in rows]
        labels = [str(r[label_field]) for r in rows]
        self.label_names = sorted(set(labels))
        if len(self.label_names) < 2:
            raise ConfigError(self.key, f"{self.path}: one label group only ({self.label_names}); "
                                        "group features need two")
        self.labels = np.array([self.label_names.index(label) for label in labels], dtype=np.int64)
        self.ids = np.arange(len(rows), dtype=np.int64)
        self.columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        self.split = np.array([str(r.get("split") or "train") for r in rows])

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self, i: int) -> str:
        return self.texts[i]

    def batch(self, lm, indices, max_length: int | None) -> dict:
        """The model's inputs for these samples ({"input_ids", "attention_mask"}, padded)."""
        return lm.encode([self.texts[i] for i in indices], max_length or 512)
