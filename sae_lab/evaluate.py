"""Evaluate a trained SAE: reconstruction on held-out activations, and the base model's
behaviour with the SAE spliced into its forward pass at the hook it was trained on."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from labcore.hooks import HookedModel
from sae_lab.metrics import ReconstructionStats
from sae_lab.architectures import SparseAutoencoder


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches, dense_threshold: float = 0.1) -> tuple[dict, torch.Tensor]:
    """(metrics, per-latent firing frequency) over an iterable of activation batches."""
    stats = ReconstructionStats(sae.d_sae)
    for x in batches:
        x = x.to(sae.W_enc)
        z = sae.encode(x)
        stats.update(x, sae.decode(z), z)
    return stats.compute(dense_threshold), stats.frequencies()


def _replace_at(position: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    def hook(act: torch.Tensor, _hook):
        act = act.clone()
        act[:, position] = fn(act[:, position])
        return act
    return hook


@torch.no_grad()
def spliced_metrics(model: HookedModel, sae: SparseAutoencoder, tokens: torch.Tensor, labels: torch.Tensor,
                    *, hook_name: str, position: int, logits_fn: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int = 4096) -> dict[str, float]:
    """Cross-entropy and accuracy of the model clean, with the SAE's reconstruction spliced in at
    (hook_name, position), and with that activation zero-ablated.

    loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean): 1 means the SAE loses nothing,
    0 means it is as bad as deleting the activation. CE is averaged over tokens first.
    """
    model.check_hook_names([hook_name])
    variants = {
        "clean": None,
        "sae": _replace_at(position, lambda a: sae.decode(sae.encode(a.to(sae.W_enc))).to(a)),
        "zero": _replace_at(position, torch.zeros_like),
    }
    totals = {name: [0.0, 0.0] for name in variants}  # summed CE, correct count
    for start in range(0, len(tokens), batch_size):
        tok, lab = tokens[start:start + batch_size], labels[start:start + batch_size]
        for name, hook in variants.items():
            out = model(tok) if hook is None else model.run_with_hooks(tok, fwd_hooks={hook_name: hook})
            logits = logits_fn(out)
            totals[name][0] += float(F.cross_entropy(logits.float(), lab, reduction="sum"))
            totals[name][1] += float((logits.argmax(-1) == lab).sum())
    n = len(tokens)
    ce = {k: v[0] / n for k, v in totals.items()}
    acc = {k: v[1] / n for k, v in totals.items()}
    denom = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"], "ce_with_sae": ce["sae"], "ce_zero_ablation": ce["zero"],
        "delta_loss": ce["sae"] - ce["clean"],
        "loss_recovered": (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-12 else float("nan"),
        "acc_clean": acc["clean"], "acc_with_sae": acc["sae"], "acc_zero_ablation": acc["zero"],
    }
