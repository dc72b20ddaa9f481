"""Sparse autoencoders: TopK, BatchTopK and ReLU (L1), one shared parameterisation.

    z     = act(W_enc^T (x - b_dec) + b_enc)          W_enc [d_in, d_sae]
    x_hat = W_dec^T z + b_dec                           W_dec [d_sae, d_in], rows kept unit-norm

Shapes and names follow SAELens' on-disk format, so `sae_lab.saelens_io` saves and loads them
as they are. Training losses are normalised (fraction of variance unexplained) so the learning
rate does not depend on the activation scale. TopK SAEs add AuxK (Gao et al. 2024): the top
`aux_k` dead latents are asked to reconstruct the residual error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("topk", "batchtopk", "relu")


@dataclass
class SAEOutput:
    x_hat: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor          # FVU of this batch
    aux_loss: torch.Tensor            # AuxK (topk/batchtopk) or L1 penalty (relu)
    top_vals: torch.Tensor | None     # [B, k] for topk; None otherwise
    top_idx: torch.Tensor | None
    fired: torch.Tensor               # [d_sae] bool: latents active anywhere in the batch
    l0: torch.Tensor                  # mean active latents per example


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of a batch: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    total = (x - x.mean(0, keepdim=True)).pow(2).sum()
    return (x - x_hat).pow(2).sum() / total.clamp_min(torch.finfo(x.dtype).tiny)


class SparseAutoencoder(nn.Module):
    architecture = "base"

    def __init__(self, d_in: int, d_sae: int, *, k: int | None = None, aux_k: int | None = None,
                 aux_k_coeff: float = 1 / 32, l1_coeff: float = 5e-4, dead_after_tokens: int = 50_000,
                 fast: bool = True):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.k = k
        self.aux_k = aux_k if aux_k is not None else max(1, d_in // 2)
        self.aux_k_coeff, self.l1_coeff = aux_k_coeff, l1_coeff
        self.dead_after_tokens = dead_after_tokens
        self.fast = fast
        w_dec = torch.randn(d_sae, d_in)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())   # tied at init, trained apart
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # tokens since each latent last fired: a buffer so it survives checkpoints
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    # ---- pieces -------------------------------------------------------------------------------
    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor) -> None:
        """Centre the SAE on the data: b_dec = mean of a sample of activations."""
        self.b_dec.copy_(sample.to(self.b_dec).mean(0))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latent activations [B, d_sae], per example (no batch dependence)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    @property
    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_after_tokens

    @torch.no_grad()
    def update_dead_tracking(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row before a step."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    def forward(self, x: torch.Tensor) -> SAEOutput:
        raise NotImplementedError

    # ---- shared helpers for the top-k family --------------------------------------------------
    def _decode_topk(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x_hat from k (value, index) pairs per row, without materialising the dense code."""
        if self.fast:
            from sae_lab.fast_topk import sparse_decode
            return sparse_decode(vals, idx, self.W_dec) + self.b_dec
        z = torch.zeros(vals.shape[0], self.d_sae, dtype=vals.dtype, device=vals.device)
        return self.decode(z.scatter(1, idx, vals))

    def _auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor | None) -> torch.Tensor:
        dead = self.dead_mask
        n_dead = int(dead.sum())
        if n_dead == 0 or self.aux_k_coeff == 0:
            return x.new_zeros(())
        k_aux = min(self.aux_k, n_dead)
        if pre is None:
            # fast path: only the dead latents' pre-activations matter, so encode with just their
            # columns of W_enc (a GEMM n_dead wide instead of d_sae wide).
            from sae_lab.fast_topk import AUXK_SPARSE_MAX_FILL, sparse_decode, topk_encode
            dead_idx = dead.nonzero().squeeze(1)
            W_enc, b_enc = self.W_enc[:, dead_idx], self.b_enc[dead_idx]
            e = (x - x_hat).detach()
            if k_aux <= AUXK_SPARSE_MAX_FILL * n_dead:  # few of the dead kept: sparse products
                vals, j = topk_encode(x, W_enc, b_enc, k_aux, b_dec=self.b_dec)
                return fvu(e, sparse_decode(vals, dead_idx[j], self.W_dec)).nan_to_num(0.0)
            # most of the dead kept (aux_k ~ n_dead): GEMMs over the dead columns beat gathers
            pre_dead = (x - self.b_dec) @ W_enc + b_enc
            if k_aux == n_dead:  # aux_k >= n_dead: every dead latent is kept, no top-k needed
                z_aux = F.relu(pre_dead)
            else:
                vals, j = pre_dead.topk(k_aux, dim=1, sorted=False)
                z_aux = torch.zeros_like(pre_dead).scatter(1, j, F.relu(vals))
            return fvu(e, z_aux @ self.W_dec[dead_idx]).nan_to_num(0.0)
        masked = pre.masked_fill(~dead, float("-inf"))
        vals, idx = masked.topk(k_aux, dim=1, sorted=False)
        e = (x - x_hat).detach()
        z_aux = torch.zeros_like(pre).scatter(1, idx, F.relu(vals))
        e_hat = z_aux @ self.W_dec
        return fvu(e, e_hat).nan_to_num(0.0)


class TopKSAE(SparseAutoencoder):
    architecture = "topk"

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
        aux = self._auxk_loss(x, x_hat, pre) if self.training else x.new_zeros(())
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
        fired[idx[vals > 0]] = True
        l0 = (vals > 0).sum(1).float().mean()
        return SAEOutput(x_hat, recon + self.aux_k_coeff * aux, recon, aux, vals, idx, fired, l0)


class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK (Bussmann et al. 2024): keep the top k*B activations of the whole batch in
    training; at inference a learned global threshold (running mean of the smallest kept
    activation) makes the code per-example."""

    architecture = "batchtopk"

    def __init__(self, *args, threshold_momentum: float = 0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

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
            fired = (z > 0).any(0)
            return SAEOutput(x_hat, fvu(x, x_hat), fvu(x, x_hat), x.new_zeros(()), None, None, fired,
                             (z > 0).sum(1).float().mean())
        pre = F.relu(self.pre_acts(x))
        B = pre.shape[0]
        flat_vals, flat_idx = pre.flatten().topk(self.k * B, sorted=False)
        z = torch.zeros_like(pre.flatten()).scatter(0, flat_idx, flat_vals).view_as(pre)
        with torch.no_grad():
            positive = flat_vals[flat_vals > 0]
            if positive.numel():
                smallest = positive.min()
                m = self.threshold_momentum
                new = smallest if self.threshold < 0 else m * self.threshold + (1 - m) * smallest
                self.threshold.copy_(new)
        x_hat = self.decode(z)
        recon = fvu(x, x_hat)
        aux = self._auxk_loss(x, x_hat, pre)
        fired = (z > 0).any(0)
        return SAEOutput(x_hat, recon + self.aux_k_coeff * aux, recon, aux, None, None, fired,
                         (z > 0).sum(1).float().mean())


class ReLUSAE(SparseAutoencoder):
    """Classic L1 SAE: loss = FVU + l1_coeff * mean_b sum_i |z_i| (decoder rows are unit norm,
    so the L1 term is not defeated by shrinking the code and growing the decoder)."""

    architecture = "relu"

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


_CLASSES = {"topk": TopKSAE, "batchtopk": BatchTopKSAE, "relu": ReLUSAE}


def build_sae(architecture: str, d_in: int, d_sae: int, **kwargs) -> SparseAutoencoder:
    """Factory used by the `sae/` config group (`_target_: sae_lab.sae.build_sae`)."""
    if architecture not in _CLASSES:
        raise ValueError(f"sae.architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if architecture == "relu":
        kwargs.pop("k", None)
    return _CLASSES[architecture](d_in, d_sae, **kwargs)
