"""EXP1-3: response curves of attention metrics to scaling a query or key inside the forward pass,
and their gain: the slope of a metric against ln(alpha).

A curve row is one (tensor scaled, alpha, sample, measured head): the mean of each metric over the
sample's measured tokens. Curves are summarised over samples (mean, standard error) per alpha, and a
gain is the least-squares line through the per-alpha means against ln(alpha):

    slope (the gain), intercept, r2 = 1 - SS_res / SS_tot (truly R^2, not Pearson r), the slope's
    standard error, and monotonic: every step between neighbouring alphas moves the same way as the
    slope (steps smaller than 1e-6 of the curve's range count as flat and pass)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from labcore.models.pretrained import LanguageModel
from spectra.metrics import METRICS
from spectra.probe import Scale, measure


def curve_rows(lm: LanguageModel, encoded: list[tuple[int, dict]], *, layer: int, tensor: str,
               scaled_heads: tuple[int, ...] | None, alphas: list[float], measured_heads: list[int],
               skip_first: int, progress=None) -> list[dict]:
    """Scale `scaled_heads` (None: every head) of `layer`'s `tensor` by each alpha; measure `measured_heads`."""
    rows = []
    for alpha in alphas:
        for start, batch in encoded:
            result = measure(lm, batch, [layer], scales=(Scale(layer, tensor, float(alpha), scaled_heads),),
                             skip_first=skip_first)[layer]
            means = {m: torch.nanmean(result[m].double(), dim=-1) for m in METRICS}
            n = result["valid"].sum(-1)
            for i in range(n.shape[0]):
                for head in measured_heads:
                    row = {"tensor": tensor, "alpha": float(alpha), "layer": layer,
                           "scaled": _scaled_name(tensor, scaled_heads), "head": head,
                           "sample": start + i, "n_tokens": int(n[i, head])}
                    row.update({m: float(means[m][i, head]) for m in METRICS})
                    rows.append(row)
            if progress is not None:
                progress()
    return rows


def _scaled_name(tensor: str, heads: tuple[int, ...] | None) -> str:
    if heads is None:
        return f"{tensor}:all"
    return f"{tensor}:" + "+".join(str(h) for h in heads)


def summarise(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Per (tensor, scaled, layer, head, alpha): mean and standard error over samples of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["tensor"], r["scaled"], r["layer"], r["head"], r["alpha"]), []).append(r)
    out = []
    for (tensor, scaled, layer, head, alpha), members in groups.items():
        row = {"tensor": tensor, "scaled": scaled, "layer": layer, "head": head, "alpha": alpha,
               "n_samples": len(members)}
        for m in metrics:
            values = np.array([x[m] for x in members], dtype=np.float64)
            values = values[np.isfinite(values)]
            row[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{m}_sem"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
        out.append(row)
    return sorted(out, key=lambda r: (r["tensor"], r["layer"], r["head"], r["scaled"], r["alpha"]))


@dataclass(frozen=True)
class Gain:
    slope: float
    intercept: float
    r2: float
    stderr: float
    monotonic: bool


def fit_gain(alphas, values) -> Gain:
    """Least-squares fit of values = intercept + slope * ln(alpha)."""
    x = np.log(np.asarray(alphas, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"a gain needs at least two distinct alphas, got {list(alphas)}")
    if not np.all(np.isfinite(y)):
        return Gain(*(float("nan"),) * 4, monotonic=False)
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    residual = y - (intercept + slope * x)
    ss_res, ss_tot = float((residual ** 2).sum()), float(((y - ym) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    stderr = math.sqrt(ss_res / (len(x) - 2) / sxx) if len(x) > 2 else float("nan")
    order = np.argsort(x)
    steps = np.diff(y[order])
    flat = np.abs(steps) <= 1e-6 * max(np.ptp(y), 1e-12)
    monotonic = bool(np.all(flat | (np.sign(steps) == np.sign(slope))))
    return Gain(slope, intercept, r2, stderr, monotonic)


def gain_rows(summary: list[dict], metrics: list[str]) -> list[dict]:
    """One row per (tensor, scaled, layer, head): the gain of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        groups.setdefault((r["tensor"], r["scaled"], r["layer"], r["head"]), []).append(r)
    out = []
    for (tensor, scaled, layer, head), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["alpha"])
        row = {"tensor": tensor, "scaled": scaled, "layer": layer, "head": head, "n_alphas": len(members)}
        for m in metrics:
            g = fit_gain([x["alpha"] for x in members], [x[f"{m}_mean"] for x in members])
            row.update({f"{m}_gain": g.slope, f"{m}_intercept": g.intercept, f"{m}_r2": g.r2,
                        f"{m}_stderr": g.stderr, f"{m}_monotonic": g.monotonic})
        out.append(row)
    return out


def label_by_percentile(rows: list[dict], key: str, low: float, high: float) -> None:
    """Add `group`: "high" when |row[key]| is at or above the `high` percentile of all rows, "low" at
    or below the `low` percentile, else "medium"."""
    values = np.abs(np.array([r[key] for r in rows], dtype=np.float64))
    finite = values[np.isfinite(values)]
    if not len(finite):
        for r in rows:
            r["group"] = "medium"
        return
    lo, hi = np.percentile(finite, low), np.percentile(finite, high)
    for r, v in zip(rows, values):
        r["group"] = "high" if v >= hi else "low" if v <= lo else "medium"
