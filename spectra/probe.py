"""One forward pass, measured inside: the attention metrics of chosen layers, optionally with query or
key heads scaled in the real forward pass.

For each measured layer a hook keeps the queries the scores use (`lm.query_hook`) until the same
layer's pattern arrives (`lm.pattern_hook`), computes every metric of every (token, head) there, and
drops both: nothing larger than one layer's pattern for the batch in hand is ever held. The pass ends
after the deepest measured layer (`StopForward`): later layers cannot change what was measured.

A `Scale` multiplies heads of the layer's query or key by alpha before the scores, so the model's
own kernel (masks, softcapping, `module.scaling`) and every later layer see the change. Scaling all
query heads of a layer at once measures, at that layer, exactly what scaling each head alone would:
a head's pattern reads only its own query (gain over all heads uses this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labcore.hooks import StopForward
from labcore.models.pretrained import LanguageModel
from spectra.metrics import attention_metrics


@dataclass(frozen=True)
class Scale:
    """Multiply heads `heads` (None: all) of layer `layer`'s query ("q") or key ("k") by `alpha`.
    Key heads are the model's key-value heads (grouped-query attention)."""

    layer: int
    tensor: str
    alpha: float
    heads: tuple[int, ...] | None = None

    def hook_fn(self):
        def scale(x: torch.Tensor, hook) -> torch.Tensor:   # [batch, pos, head, d_head]
            if self.heads is None:
                return x * self.alpha
            x = x.clone()
            x[:, :, list(self.heads)] *= self.alpha
            return x
        return scale


@torch.no_grad()
def measure(lm: LanguageModel, batch: dict[str, torch.Tensor], layers: list[int], *,
            scales: tuple[Scale, ...] = (), skip_first: int = 2) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: {metric: [batch, head, pos] float32 on the CPU, "valid": bool}} for one batch."""
    layers = sorted(set(layers))
    padding = batch["attention_mask"].bool()
    results: dict[int, dict[str, torch.Tensor]] = {}
    queries: dict[int, torch.Tensor] = {}

    def keep_query(layer: int):
        def fn(q: torch.Tensor, hook) -> None:
            queries[layer] = q
        return fn

    def on_pattern(layer: int):
        def fn(pattern: torch.Tensor, hook) -> None:
            q = queries.pop(layer).transpose(1, 2)          # [batch, head, pos, d_head]
            metrics = attention_metrics(pattern, q, causal=lm.layout.causal,
                                        padding_mask=padding.to(pattern.device), skip_first=skip_first)
            results[layer] = {k: v.cpu() for k, v in metrics.items()}
            if layer == layers[-1]:
                raise StopForward
        return fn

    hooks = [(lm.query_hook(s.layer) if s.tensor == "q" else lm.key_hook(s.layer), s.hook_fn()) for s in scales]
    hooks += [(lm.query_hook(layer), keep_query(layer)) for layer in layers]
    hooks += [(lm.pattern_hook(layer), on_pattern(layer)) for layer in layers]
    with lm.model.hooks(hooks):
        try:
            lm.forward(batch)
        except StopForward:
            pass
    missing = [layer for layer in layers if layer not in results]
    if missing:
        raise RuntimeError(f"{lm.name}: no attention pattern was seen for layers {missing}")
    return results


def batches(lm: LanguageModel, texts: list[str], max_length: int, batch_size: int):
    """(first sample index, encoded batch) over `texts`, in order."""
    for start in range(0, len(texts), batch_size):
        yield start, lm.encode(texts[start:start + batch_size], max_length)
