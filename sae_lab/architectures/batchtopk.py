"""BatchTopK SAE (Bussmann et al. 2024): in training keep the top k*B relu'd pre-activations of the
whole batch, so an example keeps as many latents as it needs and k is an average; at inference a
global threshold (running mean of the smallest kept activation, calibrated once training ends)
makes the code per-example. Saved for inference as a SAELens `jumprelu` SAE with that threshold
on every latent, which encodes identically."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labcore.validate import number_in
from sae_lab.architectures.base import SAEOutput, fvu
from sae_lab.architectures.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    saved_as_inference_equivalent = True
    config_keys = TopKSAE.config_keys + ("threshold_momentum",)

    def __init__(self, d_in: int, d_sae: int, *, threshold_momentum: float = 0.99, **kwargs):
        super().__init__(d_in, d_sae, **kwargs)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        number_in(cfg, "sae.threshold_momentum", 0, 1, closed_high=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.pre_acts(x))
        if self.threshold < 0:  # before any training step: fall back to per-example top-k
            vals, idx = pre.topk(self.k, dim=1, sorted=False)
            return torch.zeros_like(pre).scatter(1, idx, vals)
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def calibrate_threshold(self, x: torch.Tensor) -> float:
        """Set the inference threshold so the mean L0 on `x` is k: the (k*n)-th largest activation.

        The running estimate lags a pre-activation distribution that moves during training (it
        gave L0 17 for k 32 at the default settings), so it is replaced by this once training ends.
        """
        pre = F.relu(self.pre_acts(x)).flatten()
        kept = pre.topk(min(self.k * x.shape[0], pre.numel()), sorted=False).values
        positive = kept[kept > 0]
        if positive.numel():
            # the boundary value itself must pass `pre > threshold`
            self.threshold.copy_(torch.nextafter(positive.min(), positive.new_tensor(-1.0)).clamp_min(0))
        return float(self.threshold)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        if not self.training:
            z = self.encode(x)
            x_hat = self.decode(z)
            recon = fvu(x, x_hat)
            return SAEOutput(x_hat, recon, recon, x.new_zeros(()), None, None, (z > 0).any(0),
                             (z > 0).sum(1).float().mean())
        B = x.shape[0]
        if self.fast:  # a flat (row, latent, value) code and sparse products: sae_lab.fast_batchtopk
            from sae_lab.fast_batchtopk import batch_topk_encode
            code = batch_topk_encode(x, self.W_enc, self.b_enc, self.k, b_dec=self.b_dec)
            pre, vals, latents = None, code.vals, code.latents
        else:
            pre = F.relu(self.pre_acts(x))
            vals, flat_idx = pre.flatten().topk(self.k * B, sorted=False)
            code = torch.zeros_like(pre.flatten()).scatter(0, flat_idx, vals).view_as(pre)
            latents = flat_idx % self.d_sae
        self._update_running_threshold(vals)
        x_hat, recon_loss, whole_fvu = self._reconstruct(x, code)
        aux = self._auxk(x, x_hat, pre)
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        fired[latents[vals > 0]] = True
        return SAEOutput(x_hat, recon_loss + self.aux_k_coeff * aux, whole_fvu, aux, None, None, fired,
                         (vals > 0).sum().float() / B)

    def _reconstruct(self, x: torch.Tensor, code) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_hat, reconstruction loss, FVU of x_hat) of a code: dense [B, d_sae] or a
        fast_batchtopk.FlatCode. Here the loss is that FVU; Matryoshka sums its prefixes'."""
        x_hat = (code @ self.W_dec if isinstance(code, torch.Tensor) else code.decode(self.W_dec)) + self.b_dec
        recon = fvu(x, x_hat)
        return x_hat, recon, recon

    @torch.no_grad()
    def _update_running_threshold(self, kept: torch.Tensor) -> None:
        positive = kept[kept > 0]
        if positive.numel():
            smallest = positive.min()
            m = self.threshold_momentum
            self.threshold.copy_(smallest if self.threshold < 0 else m * self.threshold + (1 - m) * smallest)

    def saelens_extras(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {"threshold": self.threshold.detach().clamp_min(0).expand(self.d_sae)}

    @classmethod
    def config_from_saelens(cls, cfg: dict) -> dict[str, Any]:
        return {"k": cfg["metadata"]["k"]}  # files from before interp_lab_config recorded it there

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saelens_tensors(tensors)
        self.threshold.copy_(tensors["threshold"][0])
