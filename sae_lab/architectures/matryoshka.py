"""Matryoshka SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs"):
a BatchTopK SAE whose dictionary is a nest of prefixes [0, m_1) < [0, m_2) < ... < [0, d_sae), each
of which must reconstruct x on its own:

    loss = sum_i FVU(x, b_dec + sum_{l < m_i} z_l W_dec[l])  +  aux_k_coeff * AuxK

The activation is BatchTopK over the whole dictionary (the prefixes change the loss, not the code),
so general features settle in the early latents, which every prefix uses, and the later ones
specialise without absorbing them. Inference and the on-disk form are BatchTopK's (`jumprelu` with
the global threshold). FVU and L0 reported are those of the whole dictionary.
"""

from __future__ import annotations

import torch

from labcore.validate import ConfigError, get
from sae_lab.architectures.base import fvu
from sae_lab.architectures.batchtopk import BatchTopKSAE


def resolve_prefixes(prefixes, d_sae) -> tuple[list[int] | None, str | None]:
    """(prefix sizes in latents, None), or (None, what is wrong). An entry is a number of latents
    (an int) or a fraction of d_sae (a float in (0, 1], rounded to the nearest latent), so that a
    default such as [0.0625, 0.25, 1.0] holds at every dictionary size of a sweep."""
    if not isinstance(prefixes, (list, tuple)) or not prefixes:
        return None, "must be a non-empty list of prefix sizes: latents (e.g. [64, 256, 1024]) or fractions of d_sae"
    sizes = []
    for m in prefixes:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 or (isinstance(m, float) and m > 1):
            return None, "must be positive integers (latents) or fractions of d_sae in (0, 1]"
        sizes.append(m if isinstance(m, int) else round(m * d_sae))
    if any(a >= b for a, b in zip(sizes, sizes[1:])):
        return None, f"must be strictly increasing (in latents at d_sae={d_sae}: {sizes})"
    if sizes[0] < 1:
        return None, f"must keep at least one latent in the first prefix (in latents at d_sae={d_sae}: {sizes})"
    if sizes[-1] != d_sae:
        return None, f"must end at sae.d_sae={d_sae} (the whole dictionary; 1.0 as a fraction)"
    return sizes, None


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    config_keys = BatchTopKSAE.config_keys + ("prefixes",)

    def __init__(self, d_in: int, d_sae: int, *, prefixes, **kwargs):
        prefixes = list(prefixes)  # a ListConfig from Hydra
        sizes, problem = resolve_prefixes(prefixes, d_sae)
        if problem:
            raise ValueError(f"sae.prefixes {problem} (got {prefixes})")
        super().__init__(d_in, d_sae, **kwargs)
        self.prefixes = tuple(sizes)  # in latents: what config() records and a rebuild gets

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        prefixes = get(cfg, "sae.prefixes")
        prefixes = list(prefixes) if prefixes is not None and not isinstance(prefixes, (str, int)) else prefixes
        _, problem = resolve_prefixes(prefixes, get(cfg, "sae.d_sae"))
        if problem:
            raise ConfigError("sae.prefixes", f"{problem} (got {prefixes})")

    def _reconstruct(self, x: torch.Tensor, code) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_hat of the whole dictionary, sum of the prefixes' FVUs, the whole dictionary's FVU:
        the last prefix's)."""
        if isinstance(code, torch.Tensor):  # the dense reference: each prefix as defined
            recons = [code[:, :m] @ self.W_dec[:m] + self.b_dec for m in self.prefixes]
            fvus = [fvu(x, r) for r in recons]
            return recons[-1], sum(fvus), fvus[-1]
        # the flat code: decode each band [m_{i-1}, m_i) once and accumulate
        partial, loss, start = self.b_dec, x.new_zeros(()), 0
        for stop in self.prefixes:
            partial = partial + code.band(start, stop).decode(self.W_dec)
            prefix_fvu = fvu(x, partial)
            loss = loss + prefix_fvu
            start = stop
        return partial, loss, prefix_fvu
