"""EXP0, observational: does a head attend more sharply when its query is longer?

Every (sample, layer, head) gets the means of every metric over its measured tokens and the Pearson
r (and two-sided p) of q_norm against each studied metric across those tokens. From these:

    significant     p < p_max and |r| >= min_abs_r, per (sample, layer, head, metric)
    consistent      a (layer, head, metric) significant in at least `consistent_fraction` of samples
    layer stats     per (layer, metric): mean and std of |r| over samples x heads, fraction significant

Tables stream to CSV as batches finish (the per-token table is one row per measured token and
head); a fixed-size random subset of each head's tokens is kept for the scatter plots, so memory
does not grow with the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spectra.metrics import METRICS

TOKEN_COLUMNS = ["sample", "layer", "head", "position", "token", *METRICS]


@dataclass(frozen=True)
class Significance:
    p_max: float = 0.01
    min_abs_r: float = 0.5
    consistent_fraction: float = 0.30


def pearson(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, n) over the last dimension where `valid`, in float64; r is NaN when either side is constant."""
    x, y, w = x.double(), y.double(), valid.double()
    n = w.sum(-1)
    x = torch.where(valid, x, 0.0)
    y = torch.where(valid, y, 0.0)
    dx = (x - (x * w).sum(-1, keepdim=True) / n.clamp(min=1)[..., None]) * w
    dy = (y - (y * w).sum(-1, keepdim=True) / n.clamp(min=1)[..., None]) * w
    sxy, sxx, syy = (dx * dy).sum(-1), (dx * dx).sum(-1), (dy * dy).sum(-1)
    denom = (sxx * syy).sqrt()
    # a side that is constant up to rounding has no direction to correlate with
    tiny = (sxx <= 1e-20 * (x * x * w).sum(-1).clamp(min=1e-300)) | (syy <= 1e-20 * (y * y * w).sum(-1).clamp(min=1e-300))
    r = torch.where(tiny | (n < 3), torch.full_like(denom, float("nan")), sxy / denom.clamp(min=1e-300))
    return r.clamp(-1, 1), n


def pearson_p(r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Pearson r with n points (t test, n - 2 degrees of freedom)."""
    from scipy import stats
    r, n = np.asarray(r, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt((n - 2) / np.maximum(1 - r * r, 1e-300))
        p = 2 * stats.t.sf(np.abs(t), np.maximum(n - 2, 1))
    return np.where(np.isfinite(r) & (n >= 3), p, np.nan)


def head_rows(start: int, layer: int, measured: dict[str, torch.Tensor], studied: list[str]) -> list[dict]:
    """head_summary rows of one layer of one batch."""
    valid = measured["valid"]
    n = valid.sum(-1)
    rows = []
    means = {m: torch.nanmean(measured[m].double(), dim=-1) for m in METRICS}
    stats = {m: pearson(measured["q_norm"], measured[m], valid) for m in studied}
    pvals = {m: pearson_p(r.numpy(), cnt.numpy()) for m, (r, cnt) in stats.items()}
    b, h = valid.shape[:2]
    for i in range(b):
        for head in range(h):
            row = {"sample": start + i, "layer": layer, "head": head, "n_tokens": int(n[i, head])}
            row.update({f"mean_{m}": float(means[m][i, head]) for m in METRICS})
            for m in studied:
                row[f"r_{m}"] = float(stats[m][0][i, head])
                row[f"p_{m}"] = float(pvals[m][i, head])
            rows.append(row)
    return rows


def token_columns(start: int, layer: int, measured: dict[str, torch.Tensor], input_ids: torch.Tensor) -> dict:
    """The per-token table's columns for one layer of one batch (measured tokens only)."""
    valid = measured["valid"]
    b, h, pos = valid.nonzero(as_tuple=True)       # row-major, the order of boolean-mask selection
    cols = {"sample": (b + start).numpy(), "layer": np.full(len(b), layer), "head": h.numpy(),
            "position": pos.numpy(), "token": input_ids[b, pos].numpy()}
    cols.update({m: measured[m][valid].numpy() for m in METRICS})
    return cols


class ScatterSample:
    """A fixed-size, uniformly random subset of each head's (q_norm, metric) points, kept as batches
    stream by (each token kept with probability `points / expected tokens per head`)."""

    def __init__(self, points: int, expected_per_head: int, metrics: list[str], seed: int):
        self.keep_p = min(1.0, points / max(1, expected_per_head))
        self.metrics, self.rng = ["q_norm", *metrics], np.random.default_rng(seed)
        self.data: dict[tuple[int, int], list[np.ndarray]] = {}

    def add(self, layer: int, measured: dict[str, torch.Tensor]) -> None:
        valid = measured["valid"]
        keep = valid & torch.from_numpy(self.rng.random(valid.shape) < self.keep_p)
        for head in range(valid.shape[1]):
            k = keep[:, head]
            if k.any():
                self.data.setdefault((layer, head), []).append(
                    np.stack([measured[m][:, head][k].numpy() for m in self.metrics], axis=1))

    def points(self, layer: int, head: int) -> dict[str, np.ndarray]:
        parts = self.data.get((layer, head))
        stacked = np.concatenate(parts) if parts else np.empty((0, len(self.metrics)))
        return {m: stacked[:, i] for i, m in enumerate(self.metrics)}


def significant_rows(summary: list[dict], studied: list[str], sig: Significance) -> list[dict]:
    out = []
    for row in summary:
        for m in studied:
            r, p = row[f"r_{m}"], row[f"p_{m}"]
            if np.isfinite(r) and np.isfinite(p) and p < sig.p_max and abs(r) >= sig.min_abs_r:
                out.append({"sample": row["sample"], "layer": row["layer"], "head": row["head"], "metric": m,
                            "r": r, "p": p, "n_tokens": row["n_tokens"]})
    return out


def per_head(summary: list[dict], studied: list[str], sig: Significance) -> list[dict]:
    """Per (layer, head, metric): mean r over samples and the fraction of samples where it is significant."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in summary:
        groups.setdefault((row["layer"], row["head"]), []).append(row)
    out = []
    for (layer, head), rows in sorted(groups.items()):
        for m in studied:
            r = np.array([x[f"r_{m}"] for x in rows])
            p = np.array([x[f"p_{m}"] for x in rows])
            significant = np.isfinite(r) & np.isfinite(p) & (p < sig.p_max) & (np.abs(r) >= sig.min_abs_r)
            out.append({"layer": layer, "head": head, "metric": m, "n_samples": len(rows),
                        "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
                        "fraction_significant": float(significant.mean()),
                        "consistent": bool(significant.mean() >= sig.consistent_fraction)})
    return out


def layer_rows(summary: list[dict], studied: list[str], sig: Significance) -> list[dict]:
    out = []
    for layer in sorted({row["layer"] for row in summary}):
        rows = [x for x in summary if x["layer"] == layer]
        for m in studied:
            r = np.array([x[f"r_{m}"] for x in rows])
            p = np.array([x[f"p_{m}"] for x in rows])
            finite = np.isfinite(r)
            significant = finite & np.isfinite(p) & (p < sig.p_max) & (np.abs(r) >= sig.min_abs_r)
            out.append({"layer": layer, "metric": m, "n": int(finite.sum()),
                        "mean_abs_r": float(np.abs(r[finite]).mean()) if finite.any() else float("nan"),
                        "std_abs_r": float(np.abs(r[finite]).std()) if finite.any() else float("nan"),
                        "fraction_significant": float(significant.mean())})
    return out
