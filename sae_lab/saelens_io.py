"""Save and load SAEs in SAELens' on-disk format: `cfg.json` + `sae_weights.safetensors`.

Weights: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], plus what the
architecture adds (`threshold` [d_sae] of a JumpReLU SAE). Each architecture says what it writes
and reads (`sae_lab.architectures`): BatchTopK and Matryoshka are saved the way SAELens saves them
for inference, as a JumpReLU SAE whose threshold is the learned global one, which encodes
identically.
`metadata.interp_lab_architecture` and `metadata.interp_lab_config` record the architecture and its
keywords so `load_sae` rebuilds the same SAE. Files SAELens wrote (topk, standard, jumprelu) load
through their cfg.json alone: inputs normalised by SAELens are refused, and without
`apply_b_dec_to_input` b_dec's part of the encoder is folded into b_enc. sae-lens itself is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from labcore.artifacts import atomic_path, atomic_write_text
from sae_lab.architectures import SparseAutoencoder, sae_class, saelens_class

SAE_LENS_FORMAT_VERSION = "6.0.0"  # cfg schema of sae-lens >= 6
_SHARED_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def save_sae(sae: SparseAutoencoder, path: str | Path, *, hook_name: str, model_name: str,
             extra_metadata: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    extra_cfg, extra_tensors = sae.saelens_extras()
    tensors = {name: getattr(sae, name) for name in _SHARED_TENSORS} | extra_tensors
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    cfg = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(tensors["W_enc"].dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **extra_cfg,
        "metadata": {
            "sae_lens_version": SAE_LENS_FORMAT_VERSION,
            "sae_lens_training_version": SAE_LENS_FORMAT_VERSION,
            "hook_name": hook_name,
            "model_name": model_name,
            "interp_lab_architecture": sae.architecture,
            "interp_lab_config": sae.config(),
            **(extra_metadata or {}),
        },
    }
    with atomic_path(path / "sae_weights.safetensors") as tmp:
        save_file(tensors, tmp)
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2) + "\n")
    return path


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Load an SAE written by `save_sae` (or a SAELens topk/standard/jumprelu SAE); returns (sae, cfg)."""
    path = Path(path)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not an SAE directory: missing {name}")
    cfg = json.loads((path / "cfg.json").read_text())
    metadata = cfg.get("metadata", {})
    ours = metadata.get("interp_lab_architecture")
    cls = sae_class(ours) if ours else saelens_class(cfg["architecture"])
    if cls is None:
        raise ValueError(f"{path / 'cfg.json'}: architecture {cfg['architecture']!r} is not supported")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(f"{path / 'cfg.json'}: normalize_activations {cfg['normalize_activations']!r} is not "
                         f"supported (only 'none')")
    keywords = metadata["interp_lab_config"] if "interp_lab_config" in metadata else cls.config_from_saelens(cfg)
    sae = cls(cfg["d_in"], cfg["d_sae"], **keywords)
    sae.load_saelens_tensors(load_file(path / "sae_weights.safetensors"))
    if not cfg.get("apply_b_dec_to_input", True):
        # SAELens then encodes x @ W_enc + b_enc (Gemma Scope's files, for one), which is ours,
        # (x - b_dec) @ W_enc + b_enc', with b_enc' = b_enc + b_dec @ W_enc
        with torch.no_grad():
            sae.b_enc.add_(sae.b_dec @ sae.W_enc)
    return sae.to(device).eval(), cfg
