"""SAE evaluation metrics, accumulated exactly over many batches in float64.

EV = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the whole evaluation set, with mean(x)
the evaluation set's own mean (FVU = 1 - EV). Predicting that mean gives EV = 0 exactly; a
perfect reconstruction gives 1. (Some libraries divide by a per-dimension variance computed
differently and report ~0.93 for the mean predictor: not this one.)
"""

from __future__ import annotations

import torch


class ReconstructionStats:
    """Streaming sums for MSE / EV / FVU / L0 / per-latent firing frequency."""

    def __init__(self, d_sae: int | None = None):
        self.n = 0
        self.sse = 0.0
        self.sum_x: torch.Tensor | None = None
        self.sum_sq_x = 0.0
        self.d_in = 0
        self.l0_sum = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64) if d_sae else None

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor | None = None) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.d_in = x.shape[1]
        self.sse += float((x - x_hat).pow(2).sum())
        s = x.sum(0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq_x += float(x.pow(2).sum())
        if z is not None:
            active = z > 0
            self.l0_sum += float(active.sum())
            if self.fire_counts is not None:
                self.fire_counts += active.sum(0).double().cpu()

    @property
    def total_variance(self) -> float:
        """sum_i ||x_i - mean||^2 = sum ||x||^2 - n ||mean||^2."""
        mean = self.sum_x / self.n
        return self.sum_sq_x - self.n * float(mean.pow(2).sum())

    def compute(self, dense_threshold: float = 0.1) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no examples were evaluated")
        ev = 1.0 - self.sse / self.total_variance if self.total_variance > 0 else float("nan")
        out = {"mse": self.sse / (self.n * self.d_in), "explained_variance": ev, "fvu": 1.0 - ev,
               "l0": self.l0_sum / self.n}
        if self.fire_counts is not None:
            freq = self.fire_counts / self.n
            # "dead on the evaluation set": never fired on any evaluated example (cf. the SAE's
            # training-time dead_fraction_train: no firing in its last dead_after_tokens tokens)
            out["dead_fraction_eval"] = float((freq == 0).double().mean())
            out["dense_fraction"] = float((freq > dense_threshold).double().mean())
        return out

    def frequencies(self) -> torch.Tensor:
        return self.fire_counts / max(self.n, 1)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    stats = ReconstructionStats()
    stats.update(x, x_hat)
    return stats.compute()["explained_variance"]
