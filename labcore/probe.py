"""A linear probe: multinomial logistic regression on standardised features (L2, full-batch Adam),
small enough to fit in a second on a CPU. Shared by the analyses that ask "can a linear readout
tell these classes apart?" (nanodesmo's regime separability, sae_lab's group probe).

    probe = LogisticProbe.fit(x_train, y_train, seed=0)
    probe.accuracy(x_test, y_test);  probe.logits(x_test)   # [n, classes]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LogisticProbe:
    mean: np.ndarray
    scale: np.ndarray
    weight: torch.Tensor     # [classes, features]
    bias: torch.Tensor       # [classes]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, epochs: int = 300, lr: float = 0.05,
            seed: int = 0, n_classes: int | None = None, per_feature_scale: bool = True) -> "LogisticProbe":
        """per_feature_scale: standardise each feature (features of unlike units); False divides every
        feature by one common scale (the RMS of the centred features), so a feature that barely varies
        in training is not magnified: what a probe of a model's representation wants, when edited
        representations may move along directions training never did."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        scale = x.std(0) + 1e-8 if per_feature_scale else np.full(x.shape[1], np.sqrt(((x - mean) ** 2).mean()) + 1e-8)
        xt = torch.tensor((x - mean) / scale, dtype=torch.float32)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        generator = torch.Generator().manual_seed(seed)
        layer = torch.nn.Linear(x.shape[1], n_classes or int(yt.max()) + 1)
        with torch.no_grad():   # seeded init, without touching the global RNG
            bound = 1 / np.sqrt(x.shape[1])
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=l2)
        with torch.enable_grad():
            for _ in range(epochs):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(layer(xt), yt).backward()
                opt.step()
        return cls(mean, scale, layer.weight.detach().clone(), layer.bias.detach().clone())

    def logits(self, x) -> np.ndarray:
        x = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return (torch.tensor(x, dtype=torch.float32) @ self.weight.T + self.bias).numpy()

    def predict(self, x) -> np.ndarray:
        return self.logits(x).argmax(-1)

    def accuracy(self, x, y) -> float:
        return float((self.predict(x) == np.asarray(y)).mean())


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0, **fit) -> float:
    """Held-out accuracy of LogisticProbe over `folds` folds of a seeded shuffle (every sample
    predicted once)."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_classes = int(np.max(y)) + 1
    correct = 0
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        probe = LogisticProbe.fit(x[train], y[train], seed=seed + k, n_classes=n_classes, **fit)
        correct += int((probe.predict(x[test]) == y[test]).sum())
    return correct / len(y)
