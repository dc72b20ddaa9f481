"""What every SAE architecture shares: the parameterisation, the decoder constraint, dead-latent
tracking, the normalised loss, AuxK, and the hooks an architecture fills in for its config keys
and its SAELens on-disk form.

    z     = act(W_enc^T (x - b_dec) + b_enc)          W_enc [d_in, d_sae]
    x_hat = W_dec^T z + b_dec                           W_dec [d_sae, d_in], rows kept unit-norm

Shapes and names follow SAELens' on-disk format, so `sae_lab.saelens_io` saves and loads them
as they are. Training losses are normalised (fraction of variance unexplained) so the learning
rate does not depend on the activation scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from labcore.validate import ConfigError, get, positive_int, require


@dataclass
class SAEOutput:
    x_hat: torch.Tensor
    loss: torch.Tensor
    recon_loss: torch.Tensor          # FVU of this batch (of the whole dictionary's reconstruction)
    aux_loss: torch.Tensor            # AuxK (top-k family), L1 (relu) or L0 (jumprelu) penalty
    top_vals: torch.Tensor | None     # [B, k] for topk; None otherwise
    top_idx: torch.Tensor | None
    fired: torch.Tensor               # [d_sae] bool: latents active anywhere in the batch
    l0: torch.Tensor                  # mean active latents per example


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained of a batch: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return _FVU.apply(x, x_hat)


class _FVU(torch.autograd.Function):
    """`fvu` with a hand-written backward: the training loss of every step, over [B, d_in] tensors
    that autograd would walk with ~6 elementwise passes (pow, its backward, the sub's neg, ...);
    its backward is one pass over the saved residual."""

    @staticmethod
    def forward(ctx, x, x_hat):
        r = x - x_hat
        centred = x - x.mean(0, keepdim=True)
        total = centred.pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        ratio = r.pow(2).sum() / total
        ctx.save_for_backward(r, total, ratio, centred if ctx.needs_input_grad[0] else None)
        return ratio

    @staticmethod
    def backward(ctx, grad):
        r, total, ratio, centred = ctx.saved_tensors
        c = 2 * grad / total
        grad_x = grad_x_hat = None
        if ctx.needs_input_grad[1]:
            grad_x_hat = r.mul(-c)
        if ctx.needs_input_grad[0]:  # the total moves with x too: d total / dx = 2 (x - mean(x))
            grad_x = (r - ratio * centred).mul_(c)
        return grad_x, grad_x_hat


class SparseAutoencoder(nn.Module):
    """The shared parameterisation. An architecture sets the class attributes below, `encode`
    (per example, for inference) and `forward` (the training step's output)."""

    architecture: ClassVar[str] = "base"    # its name in `sae.architecture` and in the registry
    saelens_architecture: ClassVar[str]     # `architecture` in SAELens' cfg.json
    # Saved as an inference equivalent of another SAELens architecture (BatchTopK as `jumprelu`):
    # a file of that architecture from elsewhere is loaded as that architecture, not as this one.
    saved_as_inference_equivalent: ClassVar[bool] = False
    config_keys: ClassVar[tuple[str, ...]] = ("dead_after_tokens",)  # keywords beyond d_in, d_sae

    def __init__(self, d_in: int, d_sae: int, *, dead_after_tokens: int = 50_000):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.dead_after_tokens = dead_after_tokens
        w_dec = torch.randn(d_sae, d_in)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())   # tied at init, trained apart
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # tokens since each latent last fired: a buffer so it survives checkpoints
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    # ---- config -------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg) -> None:
        """Check this architecture's keys under `sae.` of a job config; errors name the key."""
        positive_int(cfg, "sae.dead_after_tokens")

    def config(self) -> dict[str, Any]:
        """The keywords that rebuild this SAE (`config_keys`), JSON-ready."""
        return {key: _jsonable(getattr(self, key)) for key in self.config_keys}

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

    def forward(self, x: torch.Tensor) -> SAEOutput:
        raise NotImplementedError

    # ---- dead latents -------------------------------------------------------------------------
    @property
    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_after_tokens

    @torch.no_grad()
    def update_dead_tracking(self, fired: torch.Tensor, n_tokens: int) -> None:
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    # ---- the constraint set, kept by the training loop ------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row before a step."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.addcmul_(parallel, self.W_dec, value=-1)

    @torch.no_grad()
    def project_parameters(self) -> None:
        """Put the parameters back into their constraint set after an optimizer step."""
        self.normalize_decoder()

    # ---- SAELens on-disk form (`sae_lab.saelens_io`) --------------------------------------------
    def saelens_extras(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(cfg.json entries, tensors) this architecture adds to the shared ones."""
        return {}, {}

    @classmethod
    def config_from_saelens(cls, cfg: dict) -> dict[str, Any]:
        """The keywords to rebuild an SAE from a cfg.json without interp-lab's own record of them
        (a file SAELens wrote, or one from before that record existed)."""
        return {}

    @torch.no_grad()
    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).copy_(tensors[name])


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def auxk_loss(sae: SparseAutoencoder, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor | None,
              aux_k: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the FVU of the top `aux_k` dead latents' reconstruction of the
    residual x - x_hat (0 when no latent is dead). `pre` [B, d_sae] are the pre-activations of the
    dense path; None takes the fast path, which encodes with the dead latents' columns only."""
    dead = sae.dead_mask
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    k_aux = min(aux_k, n_dead)
    e = (x - x_hat).detach()
    if pre is None:
        # fast path: only the dead latents' pre-activations matter, so encode with just their
        # columns of W_enc (a GEMM n_dead wide instead of d_sae wide).
        from sae_lab.fast_topk import AUXK_SPARSE_MAX_FILL, sparse_decode, topk_encode
        dead_idx = dead.nonzero().squeeze(1)
        W_enc, b_enc = sae.W_enc[:, dead_idx], sae.b_enc[dead_idx]
        if k_aux <= AUXK_SPARSE_MAX_FILL * n_dead:  # few of the dead kept: sparse products
            vals, j = topk_encode(x, W_enc, b_enc, k_aux, b_dec=sae.b_dec)
            return fvu(e, sparse_decode(vals, dead_idx[j], sae.W_dec)).nan_to_num(0.0)
        # most of the dead kept (aux_k ~ n_dead): GEMMs over the dead columns beat gathers
        pre_dead = (x - sae.b_dec) @ W_enc + b_enc
        if k_aux == n_dead:  # aux_k >= n_dead: every dead latent is kept, no top-k needed
            z_aux = F.relu(pre_dead)
        else:
            vals, j = pre_dead.topk(k_aux, dim=1, sorted=False)
            z_aux = torch.zeros_like(pre_dead).scatter(1, j, F.relu(vals))
        return fvu(e, z_aux @ sae.W_dec[dead_idx]).nan_to_num(0.0)
    masked = pre.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(k_aux, dim=1, sorted=False)
    z_aux = torch.zeros_like(pre).scatter(1, idx, F.relu(vals))
    return fvu(e, z_aux @ sae.W_dec).nan_to_num(0.0)


def check_at_most_d_sae(cfg, key: str) -> None:
    """`key` (an int or null) must not exceed sae.d_sae."""
    value, d_sae = get(cfg, key), get(cfg, "sae.d_sae")
    if value is not None and value > d_sae:
        raise ConfigError(key, f"must not exceed sae.d_sae={d_sae} (got {value})")


def non_negative_number(cfg, key: str) -> float:
    return require(cfg, key, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                   "must be a number >= 0")
