"""SAE architectures, one module each, and the registry that names them.

Each architecture is a `SparseAutoencoder` subclass (`base`) that declares
- `architecture`: its name in `sae.architecture` and in `conf/sae_lab/sae/<name>.yaml`;
- `config_keys`: the keywords it takes beyond d_in and d_sae (the keys of its config file), and
  `validate_config`, which checks them in a job config with errors that name the key;
- `saelens_architecture` and `saelens_extras` / `config_from_saelens` / `load_saelens_tensors`:
  its SAELens on-disk form, so `sae_lab.saelens_io` holds no per-architecture code.

Adding an architecture: a module here, its class in `_CLASSES`, a config file in conf/sae_lab/sae.
"""

from __future__ import annotations

from labcore.validate import positive_int, require
from sae_lab.architectures.base import SAEOutput, SparseAutoencoder, fvu
from sae_lab.architectures.batchtopk import BatchTopKSAE
from sae_lab.architectures.jumprelu import JumpReLUSAE
from sae_lab.architectures.matryoshka import MatryoshkaSAE
from sae_lab.architectures.relu import ReLUSAE
from sae_lab.architectures.topk import TopKSAE

_CLASSES = (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE, MatryoshkaSAE)
REGISTRY: dict[str, type[SparseAutoencoder]] = {cls.architecture: cls for cls in _CLASSES}
ARCHITECTURES = tuple(REGISTRY)
# the class a file SAELens itself wrote loads as, by its cfg.json `architecture`
_FROM_SAELENS = {cls.saelens_architecture: cls for cls in _CLASSES if not cls.saved_as_inference_equivalent}
_ANY_CONFIG_KEY = frozenset(key for cls in _CLASSES for key in cls.config_keys)

__all__ = ["ARCHITECTURES", "REGISTRY", "BatchTopKSAE", "JumpReLUSAE", "MatryoshkaSAE", "ReLUSAE", "SAEOutput",
           "SparseAutoencoder", "TopKSAE", "build_sae", "fvu", "sae_class", "saelens_class", "validate_sae_config"]


def sae_class(architecture: str) -> type[SparseAutoencoder]:
    if architecture not in REGISTRY:
        raise ValueError(f"sae.architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    return REGISTRY[architecture]


def saelens_class(saelens_architecture: str) -> type[SparseAutoencoder] | None:
    """The architecture a SAELens file of this `architecture` loads as, or None if none reads it."""
    return _FROM_SAELENS.get(saelens_architecture)


def build_sae(architecture: str, d_in: int, d_sae: int, **kwargs) -> SparseAutoencoder:
    """Factory used by the `sae/` config group (`_target_: sae_lab.architectures.build_sae`).

    Keys of other architectures are ignored (so one call, e.g. with a k, can build any of them);
    a key that no architecture takes is an error naming it.
    """
    cls = sae_class(architecture)
    unknown = sorted(set(kwargs) - _ANY_CONFIG_KEY)
    if unknown:
        raise ValueError(f"sae.{unknown[0]} is not a key of any SAE architecture; {architecture} takes "
                         f"{', '.join(cls.config_keys)}")
    return cls(d_in, d_sae, **{k: v for k, v in kwargs.items() if k in cls.config_keys})


def validate_sae_config(cfg) -> str:
    """Check `sae.*` of a job config before any compute (errors name the key); returns the architecture."""
    architecture = require(cfg, "sae.architecture", lambda v: v in ARCHITECTURES, f"must be one of {ARCHITECTURES}")
    positive_int(cfg, "sae.d_sae")
    REGISTRY[architecture].validate_config(cfg)
    return architecture
