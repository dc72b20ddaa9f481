"""Save and load SAEs in SAELens' on-disk format: `cfg.json` + `sae_weights.safetensors`.

Weights: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (+ `threshold`
[d_sae] for JumpReLU). A BatchTopK SAE is saved the way SAELens saves one for inference: as a
JumpReLU SAE whose threshold is the learned global threshold, which encodes identically.
sae-lens itself is not needed to write or read these files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from labcore.artifacts import atomic_path, atomic_write_text
from sae_lab.sae import SparseAutoencoder, build_sae

SAE_LENS_FORMAT_VERSION = "6.0.0"  # cfg schema of sae-lens >= 6
_TO_SAELENS = {"topk": "topk", "relu": "standard", "batchtopk": "jumprelu"}


def save_sae(sae: SparseAutoencoder, path: str | Path, *, hook_name: str, model_name: str,
             extra_metadata: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name).detach().cpu().contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    cfg = {
        "architecture": _TO_SAELENS[sae.architecture],
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(tensors["W_enc"].dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_FORMAT_VERSION,
            "sae_lens_training_version": SAE_LENS_FORMAT_VERSION,
            "hook_name": hook_name,
            "model_name": model_name,
            "interp_lab_architecture": sae.architecture,
            **(extra_metadata or {}),
        },
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False
    if sae.architecture == "batchtopk":
        tensors["threshold"] = sae.threshold.detach().cpu().clamp_min(0).expand(sae.d_sae).contiguous()
        cfg["metadata"]["k"] = sae.k
    with atomic_path(path / "sae_weights.safetensors") as tmp:
        save_file(tensors, tmp)
    atomic_write_text(path / "cfg.json", json.dumps(cfg, indent=2) + "\n")
    return path


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Load an SAE written by `save_sae` (or a SAELens topk/standard SAE); returns (sae, cfg)."""
    path = Path(path)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not an SAE directory: missing {name}")
    cfg = json.loads((path / "cfg.json").read_text())
    arch = cfg.get("metadata", {}).get("interp_lab_architecture") or {
        "topk": "topk", "standard": "relu"}.get(cfg["architecture"])
    if arch is None:
        raise ValueError(f"{path / 'cfg.json'}: architecture {cfg['architecture']!r} is not supported")
    k = cfg.get("k", cfg.get("metadata", {}).get("k"))
    sae = build_sae(arch, cfg["d_in"], cfg["d_sae"], k=k)
    weights = load_file(path / "sae_weights.safetensors")
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(weights[name])
        if arch == "batchtopk":
            sae.threshold.copy_(weights["threshold"][0])
    return sae.to(device).eval(), cfg
