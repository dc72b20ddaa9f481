"""TopK SAE (Gao et al. 2024): each example keeps its k largest pre-activations (relu'd), plus AuxK:
the top `aux_k` dead latents are asked to reconstruct the residual error."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labcore.validate import optional, positive_int, require
from sae_lab.architectures.base import (SAEOutput, SparseAutoencoder, auxk_loss, check_at_most_d_sae, fvu,
                                        non_negative_number)


class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    saelens_architecture = "topk"
    config_keys = ("k", "aux_k", "aux_k_coeff", "dead_after_tokens", "fast")

    def __init__(self, d_in: int, d_sae: int, *, k: int, aux_k: int | None = None, aux_k_coeff: float = 1 / 32,
                 dead_after_tokens: int = 50_000, fast: bool = True):
        super().__init__(d_in, d_sae, dead_after_tokens=dead_after_tokens)
        self.k = k
        self.aux_k = aux_k if aux_k is not None else max(1, d_in // 2)
        self.aux_k_coeff = aux_k_coeff
        self.fast = fast  # sparse products (sae_lab.fast_topk); False: the dense reference

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        positive_int(cfg, "sae.k")
        check_at_most_d_sae(cfg, "sae.k")
        optional(positive_int, cfg, "sae.aux_k")
        check_at_most_d_sae(cfg, "sae.aux_k")
        non_negative_number(cfg, "sae.aux_k_coeff")
        require(cfg, "sae.fast", lambda v: isinstance(v, bool), "must be true or false")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.k, dim=1, sorted=False)
        return torch.zeros_like(pre).scatter(1, idx, F.relu(vals))

    def forward(self, x: torch.Tensor) -> SAEOutput:
        if self.fast:  # chunked GEMM + topk, sparse backward; AuxK then takes its own fast path
            from sae_lab.fast_topk import topk_encode
            vals, idx = topk_encode(x, self.W_enc, self.b_enc, self.k, b_dec=self.b_dec)
            pre = None
        else:
            pre = self.pre_acts(x)
            vals, idx = pre.topk(self.k, dim=1, sorted=False)
            vals = F.relu(vals)
        x_hat = self._decode_topk(vals, idx)
        recon = fvu(x, x_hat)
        aux = self._auxk(x, x_hat, pre)
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        fired[idx[vals > 0]] = True
        l0 = (vals > 0).sum(1).float().mean()
        return SAEOutput(x_hat, recon + self.aux_k_coeff * aux, recon, aux, vals, idx, fired, l0)

    def _decode_topk(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x_hat from k (value, index) pairs per row, without materialising the dense code."""
        if self.fast:
            from sae_lab.fast_topk import sparse_decode
            return sparse_decode(vals, idx, self.W_dec) + self.b_dec
        z = torch.zeros(vals.shape[0], self.d_sae, dtype=vals.dtype, device=vals.device)
        return self.decode(z.scatter(1, idx, vals))

    def _auxk(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor | None) -> torch.Tensor:
        """AuxK in training (pre None: its fast path); nothing to compute at coefficient 0 or in eval."""
        if not self.training or self.aux_k_coeff == 0:
            return x.new_zeros(())
        return auxk_loss(self, x, x_hat, pre, self.aux_k)

    def saelens_extras(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}, {}

    @classmethod
    def config_from_saelens(cls, cfg: dict) -> dict[str, Any]:
        return {"k": cfg["k"]}
