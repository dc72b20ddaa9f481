"""Sparse pieces of the BatchTopK (and Matryoshka) training step: a flat code.

BatchTopK keeps the n = k*B largest relu'd pre-activations of the whole batch, so each row keeps its
own number of latents (none, or many more than k). The code is therefore a flat list of
(row, latent, value) pairs, grouped by row with latents ascending inside a row, and `row_offsets[b]`
where row b's pairs start: `FlatCode`. Decoding it and the encoder's backward are fast_topk's
sparse products on that list (`flat_decode`, `encoder_grads`), so the backward touches only the n
kept pairs, as TopK's does.

Finding the kept set without a [B, d_sae] matrix: the k_c largest pre-activations of each row
(fast_topk's chunked GEMM + per-row top-k, which reuses one block of rows) are candidates, and the
n largest candidates are kept, with t the smallest kept value. This is exact for every row whose
smallest candidate is below t, since all of that row's other entries are no larger than its
smallest candidate. A row whose smallest candidate reaches t (positive) might hold more of the
batch's top n: those rows alone are encoded again with twice as many candidates, until none is in
doubt (at k_c = d_sae a row holds all its entries). t never falls when candidates are added, so a
row once settled stays settled. The result is `torch.topk(relu(pre).flatten(), n)`'s kept set
(up to ties, which torch.topk breaks arbitrarily too).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae_lab.fast_topk import _chunked_topk, encoder_grads, encoder_pieces, flat_decode

# First pass: candidates per row as a multiple of k. A trained BatchTopK SAE spreads its n = k*B
# activations unevenly over rows (rows with large activations keep several times k); rows that
# need more than this are encoded again, so the value trades a wider first top-k against re-runs.
CANDIDATES_PER_K = 2


class FlatCode(NamedTuple):
    """A sparse code as (row, latent, value) pairs grouped by row; row b's pairs are
    [row_offsets[b], row_offsets[b+1]) (the last row's run to the end)."""

    vals: torch.Tensor         # [N] kept activations (relu'd: a kept pair may be 0)
    latents: torch.Tensor      # [N]
    rows: torch.Tensor         # [N] non-decreasing
    row_offsets: torch.Tensor  # [B]

    def decode(self, W_dec: torch.Tensor) -> torch.Tensor:
        """sum over row b's pairs of value * W_dec[latent] -> [B, d_in] (no bias)."""
        return flat_decode(self.vals, self.latents, self.rows, self.row_offsets, W_dec)

    def band(self, start: int, stop: int) -> FlatCode:
        """The pairs of latents in [start, stop), still grouped by row (values keep their gradient)."""
        keep = (self.latents >= start) & (self.latents < stop)
        rows = self.rows[keep]
        return FlatCode(self.vals[keep], self.latents[keep], rows, _row_offsets(rows, len(self.row_offsets)))


def _row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.searchsorted(rows, torch.arange(n_rows, device=rows.device, dtype=rows.dtype))


def _batch_topk_pairs(x_c: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, n_keep: int, first_k: int):
    """(vals, latents, rows) of the n_keep largest relu'd entries of x_c @ W_enc + b_enc, sorted by
    (row, latent), found through per-row candidates (module docstring)."""
    B, d_sae = x_c.shape[0], W_enc.shape[1]
    device = x_c.device
    todo = torch.arange(B, device=device)   # rows (re-)encoded in this round
    k_c = min(d_sae, first_k)
    cand_vals = x_c.new_empty(0)
    cand_latents = cand_rows = torch.empty(0, dtype=torch.long, device=device)
    while True:
        vals, latents = _chunked_topk(x_c if len(todo) == B else x_c[todo], W_enc, b_enc, k_c)
        vals = vals.relu_()
        cand_vals = torch.cat([cand_vals, vals.reshape(-1)])
        cand_latents = torch.cat([cand_latents, latents.reshape(-1)])
        cand_rows = torch.cat([cand_rows, todo.repeat_interleave(k_c)])
        kept_vals, kept = cand_vals.topk(n_keep, sorted=False)
        if k_c == d_sae:
            break
        t = kept_vals.min()
        smallest = vals.min(1).values  # a row's other entries are all <= its smallest candidate
        in_doubt = (smallest > 0) & (smallest >= t)
        if not in_doubt.any():
            break
        todo = todo[in_doubt]
        again = torch.zeros(B, dtype=torch.bool, device=device)
        again[todo] = True
        stay = ~again[cand_rows]
        cand_vals, cand_latents, cand_rows = cand_vals[stay], cand_latents[stay], cand_rows[stay]
        k_c = min(d_sae, 2 * k_c)
    vals, latents, rows = cand_vals[kept], cand_latents[kept], cand_rows[kept]
    order = (rows * d_sae + latents).argsort()
    return vals[order], latents[order], rows[order]


class _BatchTopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, n_keep, first_k):
        x_c, (vals, latents, rows) = encoder_pieces(
            x, W_enc, b_enc, b_dec, lambda x, W, b: _batch_topk_pairs(x, W, b, n_keep, first_k))
        row_offsets = _row_offsets(rows, x.shape[0])
        ctx.save_for_backward(x_c, W_enc, vals, latents, rows, row_offsets)
        ctx.mark_non_differentiable(latents, rows, row_offsets)
        return vals, latents, rows, row_offsets

    @staticmethod
    def backward(ctx, grad_vals, *_):
        x_c, W_enc, vals, latents, rows, row_offsets = ctx.saved_tensors
        grads = encoder_grads(ctx.needs_input_grad, x_c, W_enc, vals, grad_vals, latents, rows, row_offsets)
        return (*grads, None, None)


def batch_topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                      b_dec: torch.Tensor | None = None) -> FlatCode:
    """The k * B largest relu'd pre-activations (x - b_dec) @ W_enc + b_enc of the batch as a
    `FlatCode`: `torch.topk(relu(pre).flatten(), k * B)`'s kept set, with a backward through only
    those pairs. b_dec and autocast as in `fast_topk.topk_encode`."""
    return FlatCode(*_BatchTopKEncode.apply(x, W_enc, b_enc, b_dec, k * x.shape[0], CANDIDATES_PER_K * k))
