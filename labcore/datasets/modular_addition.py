"""Modular addition: every pair (a, b) with 0 <= a, b < p, label c = (a + b) mod p.

Tokens are `[a, b, =]` and the model's prediction is read at the `=` position, so the answer is
never part of the input (the original research code used `[BOS, a, +, b, =, c, EOS]` and read the
loss at the position holding `c`: label leakage). The filler tokens BOS and `+` carry no
information and cost 40% more compute per example on a CPU, so they are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModularAddition:
    p: int = 113
    train_frac: float = 0.9
    split_seed: int = 0

    def __post_init__(self):
        if self.p < 2:
            raise ValueError(f"dataset.p must be >= 2, got {self.p}")
        if not 0 < self.train_frac < 1:
            raise ValueError(f"dataset.train_frac must be in (0, 1), got {self.train_frac}")

    @property
    def equals(self) -> int:
        return self.p

    @property
    def vocab_size(self) -> int:
        return self.p + 1

    @property
    def seq_len(self) -> int:
        return 3

    @property
    def answer_pos(self) -> int:
        return 2  # the `=` token, where the answer is read

    def examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [p^2, 3], labels [p^2]) in row-major (a, b) order."""
        a, b = torch.meshgrid(torch.arange(self.p), torch.arange(self.p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        n = a.numel()
        tokens = torch.stack([a, b, torch.full((n,), self.equals)], dim=1)
        return tokens, (a + b) % self.p

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train, validation, test) indices from one seeded permutation of all p^2 examples:
        `train_frac` trains; the held-out rest is halved into a validation split (for early
        stopping) and a disjoint test split (for every reported metric)."""
        n = self.p * self.p
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        n_train = int(round(self.train_frac * n))
        n_val = (n - n_train) // 2
        parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
        return tuple(part.sort().values for part in parts)
