"""Classic L1 SAE: loss = FVU + l1_coeff * mean_b sum_i |z_i| (decoder rows are unit norm, so the
L1 term is not defeated by shrinking the code and growing the decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_lab.architectures.base import SAEOutput, SparseAutoencoder, fvu, non_negative_number


class ReLUSAE(SparseAutoencoder):
    architecture = "relu"
    saelens_architecture = "standard"
    config_keys = ("l1_coeff", "dead_after_tokens")

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float = 5e-4, dead_after_tokens: int = 50_000):
        super().__init__(d_in, d_sae, dead_after_tokens=dead_after_tokens)
        self.l1_coeff = l1_coeff

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        non_negative_number(cfg, "sae.l1_coeff")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_acts(x))

    def forward(self, x: torch.Tensor) -> SAEOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        recon = fvu(x, x_hat)
        l1 = z.abs().sum(1).mean()
        active = z > 0
        return SAEOutput(x_hat, recon + self.l1_coeff * l1, recon, l1, None, None, active.any(0),
                         active.sum(1).float().mean())
