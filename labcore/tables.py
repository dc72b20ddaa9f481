"""Plain-text output a researcher reads at the end of a job."""

from __future__ import annotations

from typing import Iterable


def format_value(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


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
