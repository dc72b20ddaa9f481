"""SAE feature interventions spliced into a model's forward pass, and what the model then outputs.

At the hooked layer the activation x is encoded by the layer's SAE, z = encode(x), and only the
chosen features' share of the reconstruction is changed:

    x' = x + ((factor - 1) * z_F) @ W_dec[F]

so the SAE's reconstruction error and every other feature stay as they were. factor 0 removes the
features (ablation), 2 doubles them (amplification), 1 leaves x bit-identical (the added term is
exactly zero). The effect is read downstream, on the model's own outputs: the representation a
probe reads (the last layer's output, mean-pooled over real tokens) and, for models with an LM
head, the logits.
"""

from __future__ import annotations

import torch

from labcore.layer_extraction import last_real_token, resid_hook


def feature_edit(sae, features: torch.Tensor, factor: float):
    """A hook function scaling `features` of `sae`'s code of the hooked activation by `factor`."""
    features = torch.as_tensor(features, dtype=torch.long)

    def edit(act: torch.Tensor, hook) -> torch.Tensor:
        z = sae.encode(act.to(sae.W_enc.dtype))
        change = ((factor - 1.0) * z[..., features]) @ sae.W_dec[features]
        return act + change.to(act.dtype)
    return edit


def ablate(sae, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """x with `features`' decoded contribution removed: x - z_F @ W_dec[F] (what factor 0 must equal)."""
    z = sae.encode(x)
    return x - z[..., features] @ sae.W_dec[features]


@torch.no_grad()
def pooled_outputs(lm, data, indices, *, batch_size: int, max_length: int, edit_layer: int | None = None,
                   edit=None, read_layer: int, logits_tokens: tuple[list[int], list[int]] | None = None):
    """For each sample: the mean over its real tokens of `read_layer`'s output (the probe's input),
    and, with `logits_tokens` = (group A token ids, group B token ids) and an LM head, the mean logit
    of A's tokens minus B's at the sample's last real token. `edit` runs at `edit_layer`."""
    pooled, diffs = [], []
    seen = {}

    def read(act, hook):
        seen["act"] = act

    hooks = [(resid_hook(read_layer), read)]
    if edit is not None:
        hooks.insert(0, (resid_hook(edit_layer), edit))
    indices = list(indices)
    with lm.model.hooks(hooks):
        for start in range(0, len(indices), batch_size):
            batch = data.batch(lm, indices[start:start + batch_size], max_length)
            out = lm.forward(batch)
            mask = batch["attention_mask"].to(lm.device).unsqueeze(-1).to(seen["act"].dtype)
            pooled.append(((seen["act"] * mask).sum(1) / mask.sum(1)).float().cpu())
            if logits_tokens is not None:
                logits = out.logits
                last = last_real_token(batch["attention_mask"]).to(logits.device)   # left-padded LMs too
                final = logits[torch.arange(len(last), device=logits.device), last].float()
                a, b = (torch.as_tensor(t, device=final.device) for t in logits_tokens)
                diffs.append((final[:, a].mean(1) - final[:, b].mean(1)).cpu())
    return torch.cat(pooled).numpy(), (torch.cat(diffs).numpy() if diffs else None)
