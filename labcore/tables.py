"""Tables a researcher reads: the end-of-job console table, Markdown tables for reports, CSV files.

One number format everywhere, so a value reads the same in the console, in summary.md and in a
study's report: floats to 4 significant digits, nan as "nan", None as an empty cell, bools as
yes/no.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Sequence


def format_value(v) -> str:
    if isinstance(v, bool):   # before numbers: bool is an int
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def table(rows: Iterable[tuple[str, object]], title: str = "") -> str:
    rows = [(str(k), format_value(v)) for k, v in rows]
    if not rows:
        return title
    wk = max(len(k) for k, _ in rows)
    wv = max(len(v) for _, v in rows)
    line = "+" + "-" * (wk + 2) + "+" + "-" * (wv + 2) + "+"
    out = [title] if title else []
    out.append(line)
    out += [f"| {k:<{wk}} | {v:>{wv}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)


def markdown_table(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """A Markdown table of `columns` (a key a row lacks is an empty cell), without a trailing newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows as CSV, written atomically; the columns are every key in order of first appearance."""
    from labcore.artifacts import atomic_write_text
    if not rows:
        atomic_write_text(path, "")
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class CsvStream:
    """A CSV table written a block of rows at a time, for tables too long to hold (one row per token).

        with CsvStream(path, ["sample", "layer", "entropy"]) as table:
            table.write(sample=ids, layer=layers, entropy=values)     # equal-length 1-D arrays

    The rows go to a temporary file beside `path`, renamed over it when the block ends without an
    error: a table that exists is complete. Integer columns are written as integers, floats to 6
    significant digits, NaN as "nan", text as it is.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]):
        self.path, self.columns, self.rows = path, list(columns), 0

    def __enter__(self) -> "CsvStream":
        from labcore.artifacts import atomic_path
        self._atomic = atomic_path(self.path)
        self._file = open(self._atomic.__enter__(), "w")
        self._file.write(",".join(self.columns) + "\n")
        return self

    def write(self, **columns) -> None:
        import numpy as np
        if set(columns) != set(self.columns):
            raise ValueError(f"{self.path}: columns {sorted(columns)} != the table's {sorted(self.columns)}")
        arrays = [np.asarray(columns[c]).reshape(-1) for c in self.columns]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"{self.path}: columns of different lengths {[len(a) for a in arrays]}")
        if not len(arrays[0]):
            return
        row = ",".join("%d" if a.dtype.kind in "iub" else "%.6g" if a.dtype.kind == "f" else "%s"
                       for a in arrays) + "\n"
        # one %-format over the whole block: ~1.7x np.savetxt, which formats row by row
        if all(a.dtype.kind in "iubf" for a in arrays):
            values = np.column_stack([a.astype(np.float64) for a in arrays]).ravel().tolist()
        else:   # text columns (written as they are: no commas or quotes expected)
            values = [v for r in zip(*(a.tolist() for a in arrays)) for v in r]
        self._file.write((row * len(arrays[0])) % tuple(values))
        self.rows += len(arrays[0])

    def __exit__(self, *exc) -> bool:
        self._file.close()
        return bool(self._atomic.__exit__(*exc))
