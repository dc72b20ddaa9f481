"""The SAE classes under their first import path, which benchmarks, saved Hydra configs
(`_target_: sae_lab.sae.build_sae`) and notebooks use. They live in `sae_lab.architectures`,
one module per architecture."""

from sae_lab.architectures import (ARCHITECTURES, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, ReLUSAE, SAEOutput,
                                   SparseAutoencoder, TopKSAE, build_sae, fvu)

__all__ = ["ARCHITECTURES", "BatchTopKSAE", "JumpReLUSAE", "MatryoshkaSAE", "ReLUSAE", "SAEOutput",
           "SparseAutoencoder", "TopKSAE", "build_sae", "fvu"]
