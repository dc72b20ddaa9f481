"""Activation extraction through named hooks, with a progress bar and a finiteness check."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from labcore.hooks import HookedModel


class NonFiniteActivationsError(ValueError):
    pass


@torch.no_grad()
def extract(model: HookedModel, tokens: torch.Tensor, hook_name: str, position: int | None = None,
            batch_size: int = 4096, desc: str = "extract") -> np.ndarray:
    """Activations at `hook_name` for every row of `tokens`, at one sequence `position` (or all).

    Returns float32 [n, d] (one position) or [n, pos, d] (all positions).
    """
    model.check_hook_names([hook_name])
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(tokens), batch_size), desc=f"{desc} {hook_name}", leave=False):
        batch = tokens[start:start + batch_size].to(device)
        _, cache = model.run_with_cache(batch, names=[hook_name])
        act = cache[hook_name]
        chunks.append((act if position is None else act[:, position]).float().cpu().numpy())
    return np.concatenate(chunks)


def check_finite(array: np.ndarray, name: str) -> None:
    """Refuse activations containing NaN/Inf, saying how many values and rows are affected."""
    bad = ~np.isfinite(array)
    if bad.any():
        rows = int(bad.reshape(len(array), -1).any(1).sum())
        raise NonFiniteActivationsError(
            f"{name}: {int(bad.sum())} non-finite values (NaN/Inf) in {rows} of {len(array)} rows; "
            "refusing to train on them")
