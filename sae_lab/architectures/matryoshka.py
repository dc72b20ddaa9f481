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


def prefixes_problem(prefixes, d_sae) -> str | None:
    """What is wrong with a list of prefix sizes for a dictionary of d_sae latents, or None."""
    if not isinstance(prefixes, (list, tuple)) or not prefixes:
        return "must be a non-empty list of prefix sizes, e.g. [64, 256, 1024]"
    if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in prefixes):
        return "must be positive integers"
    if any(a >= b for a, b in zip(prefixes, prefixes[1:])):
        return "must be strictly increasing"
    if prefixes[-1] != d_sae:
        return f"must end at sae.d_sae={d_sae} (the whole dictionary)"
    return None


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    config_keys = BatchTopKSAE.config_keys + ("prefixes",)

    def __init__(self, d_in: int, d_sae: int, *, prefixes, **kwargs):
        prefixes = list(prefixes)  # a ListConfig from Hydra
        problem = prefixes_problem(prefixes, d_sae)
        if problem:
            raise ValueError(f"sae.prefixes {problem} (got {prefixes})")
        super().__init__(d_in, d_sae, **kwargs)
        self.prefixes = tuple(prefixes)

    @classmethod
    def validate_config(cls, cfg) -> None:
        super().validate_config(cfg)
        prefixes = get(cfg, "sae.prefixes")
        prefixes = list(prefixes) if prefixes is not None and not isinstance(prefixes, (str, int)) else prefixes
        problem = prefixes_problem(prefixes, get(cfg, "sae.d_sae"))
        if problem:
            raise ConfigError("sae.prefixes", f"{problem} (got {prefixes})")

    def _reconstruct(self, x: torch.Tensor, code) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat of the whole dictionary, sum of the prefixes' FVUs)."""
        if isinstance(code, torch.Tensor):  # the dense reference: each prefix as defined
            recons = [code[:, :m] @ self.W_dec[:m] + self.b_dec for m in self.prefixes]
            return recons[-1], sum(fvu(x, r) for r in recons)
        # the flat code: decode each band [m_{i-1}, m_i) once and accumulate
        partial, loss, start = self.b_dec, x.new_zeros(()), 0
        for stop in self.prefixes:
            partial = partial + code.band(start, stop).decode(self.W_dec)
            loss = loss + fvu(x, partial)
            start = stop
        return partial, loss
