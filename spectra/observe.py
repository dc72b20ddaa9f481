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

import math
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


def head_columns(start: int, layer: int, measured: dict[str, torch.Tensor], studied: list[str]) -> dict:
    """head_summary columns of one layer of one batch: a row per (sample, head)."""
    valid = measured["valid"]
    b, h = valid.shape[:2]
    sample = torch.arange(start, start + b)[:, None].expand(b, h)
    cols = {"sample": sample.reshape(-1).numpy(), "layer": np.full(b * h, layer),
            "head": torch.arange(h).expand(b, h).reshape(-1).numpy(), "n_tokens": valid.sum(-1).reshape(-1).numpy()}
    for m in METRICS:
        cols[f"mean_{m}"] = torch.nanmean(measured[m].double(), dim=-1).reshape(-1).numpy()
    for m in studied:
        r, n = pearson(measured["q_norm"], measured[m], valid)
        cols[f"r_{m}"] = r.reshape(-1).numpy()
        cols[f"p_{m}"] = pearson_p(cols[f"r_{m}"], n.reshape(-1).numpy())
    return cols


def head_summary_columns(studied: list[str]) -> list[str]:
    return (["sample", "layer", "head", "n_tokens", *(f"mean_{m}" for m in METRICS)]
            + [c for m in studied for c in (f"r_{m}", f"p_{m}")])


SIGNIFICANT_COLUMNS = ["sample", "layer", "head", "metric", "r", "p", "n_tokens"]


def significant_columns(cols: dict, studied: list[str], sig: Significance) -> dict:
    """The significant_heads rows among one block of head_summary columns."""
    out = {c: [] for c in SIGNIFICANT_COLUMNS}
    for m in studied:
        keep = significant(cols[f"r_{m}"], cols[f"p_{m}"], sig)
        for c in ("sample", "layer", "head", "n_tokens"):
            out[c].append(cols[c][keep])
        out["metric"].append(np.full(int(keep.sum()), m))
        out["r"].append(cols[f"r_{m}"][keep])
        out["p"].append(cols[f"p_{m}"][keep])
    return {c: np.concatenate(v) for c, v in out.items()}


def significant(r: np.ndarray, p: np.ndarray, sig: Significance) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(r) & np.isfinite(p) & (p < sig.p_max) & (np.abs(r) >= sig.min_abs_r)


class HeadStats:
    """Running sums per (layer, head, metric) over samples, for the consistent-heads and per-layer
    tables: memory is fixed by the model's shape, not by the number of samples."""

    def __init__(self, n_layers: int, n_heads: int, studied: list[str], sig: Significance):
        self.studied, self.sig = studied, sig
        shape = (n_layers, n_heads, len(studied))
        self.samples = np.zeros(shape[:2], dtype=np.int64)
        self.finite, self.significant = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        self.sum_r, self.sum_abs_r, self.sum_r2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.seen_layers: set[int] = set()

    def add(self, cols: dict) -> None:
        layer, head = cols["layer"], cols["head"]
        self.seen_layers.update(int(x) for x in np.unique(layer))
        np.add.at(self.samples, (layer, head), 1)
        for i, m in enumerate(self.studied):
            r, p = cols[f"r_{m}"], cols[f"p_{m}"]
            finite = np.isfinite(r)
            np.add.at(self.finite[..., i], (layer, head), finite)
            np.add.at(self.significant[..., i], (layer, head), significant(r, p, self.sig))
            r0 = np.where(finite, r, 0.0)
            np.add.at(self.sum_r[..., i], (layer, head), r0)
            np.add.at(self.sum_abs_r[..., i], (layer, head), np.abs(r0))
            np.add.at(self.sum_r2[..., i], (layer, head), r0 * r0)

    def head_rows(self) -> list[dict]:
        """Per (layer, head, metric): mean r over samples and the share of samples where it is significant."""
        rows = []
        for layer in sorted(self.seen_layers):
            for head in range(self.samples.shape[1]):
                n = int(self.samples[layer, head])
                for i, m in enumerate(self.studied):
                    finite = int(self.finite[layer, head, i])
                    fraction = float(self.significant[layer, head, i] / n) if n else 0.0
                    rows.append({"layer": layer, "head": head, "metric": m, "n_samples": n,
                                 "mean_r": float(self.sum_r[layer, head, i] / finite) if finite else float("nan"),
                                 "fraction_significant": fraction,
                                 "consistent": bool(n and fraction >= self.sig.consistent_fraction)})
        return rows

    def layer_rows(self) -> list[dict]:
        """Per (layer, metric): mean and std of |r| over samples x heads, and the share significant."""
        rows = []
        for layer in sorted(self.seen_layers):
            for i, m in enumerate(self.studied):
                n = int(self.finite[layer, :, i].sum())
                mean = float(self.sum_abs_r[layer, :, i].sum() / n) if n else float("nan")
                var = float(self.sum_r2[layer, :, i].sum() / n) - mean * mean if n else float("nan")
                rows.append({"layer": layer, "metric": m, "n": n, "mean_abs_r": mean,
                             "std_abs_r": math.sqrt(max(var, 0.0)) if n else float("nan"),
                             "fraction_significant": float(self.significant[layer, :, i].sum()
                                                           / max(1, self.samples[layer].sum()))})
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
    stream by: each token is kept with probability `points / tokens_per_head`, into a buffer
    allocated once per head (20% + 64 above `points`: a binomial overshoot past it is > 10 sigma)."""

    def __init__(self, points: int, tokens_per_head: int, metrics: list[str], seed: int):
        self.keep_p = min(1.0, points / max(1, tokens_per_head))
        self.capacity = int(points * 1.2) + 64
        self.metrics, self.rng = ["q_norm", *metrics], np.random.default_rng(seed)
        self.buffers: dict[tuple[int, int], np.ndarray] = {}
        self.filled: dict[tuple[int, int], int] = {}

    def add(self, layer: int, measured: dict[str, torch.Tensor]) -> None:
        valid = measured["valid"]
        keep = valid & torch.from_numpy(self.rng.random(valid.shape) < self.keep_p)
        for head in range(valid.shape[1]):
            k = keep[:, head]
            n = int(k.sum())
            if not n:
                continue
            key = (layer, head)
            if key not in self.buffers:
                self.buffers[key] = np.empty((self.capacity, len(self.metrics)), dtype=np.float32)
                self.filled[key] = 0
            at = self.filled[key]
            n = min(n, self.capacity - at)
            for i, m in enumerate(self.metrics):
                self.buffers[key][at:at + n, i] = measured[m][:, head][k][:n].numpy()
            self.filled[key] = at + n

    def points(self, layer: int, head: int) -> dict[str, np.ndarray]:
        data = self.buffers.get((layer, head), np.empty((0, len(self.metrics)), dtype=np.float32))
        data = data[: self.filled.get((layer, head), 0)]
        return {m: data[:, i] for i, m in enumerate(self.metrics)}
