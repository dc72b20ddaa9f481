"""Held-out loss of a (self-state) GPT in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_loss(model, batches, state: torch.Tensor | None = None) -> float:
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = [F.cross_entropy(model(x.to(device), state=state).flatten(0, 1), y.to(device).flatten())
              for x, y in batches]
    model.train(was)
    return float(torch.stack(losses).mean())
