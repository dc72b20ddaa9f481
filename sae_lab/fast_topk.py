"""Sparse pieces of the TopK SAE training step (the fast path).

Only k of d_sae latents are active per row, so apart from the encoder's forward GEMM (needed to
find the top k) every product of the step touches just B*k (row, latent) pairs:

    decoder forward   x_hat[b]     = sum_j vals[b,j] W_dec[idx[b,j]]       embedding_bag over rows
    decoder backward  grad_W_dec[l] = sum_{(b,j): idx=l} vals[b,j] g[b]     embedding_bag over latents
                      grad_vals[b,j] = <g[b], W_dec[idx[b,j]]>               gather-dot
    encoder backward  grad_W_enc[:, l] = sum_{(b,j): idx=l} G[b,j] x[b]     embedding_bag over latents
                      grad_b_enc  = scatter-sum of G,  grad_b_dec = -W_enc @ grad_b_enc
                      grad_x[b]   = sum_j G[b,j] W_enc[:, idx[b,j]]  (only if x needs a gradient)

"over latents" means the (b, j) pairs are sorted by latent once (`LatentBags`) so each latent's
rows form one bag; `F.embedding_bag` then writes every output row exactly once, so nothing
[B, d_sae]-sized is materialised or zeroed, and no atomics are needed on GPU.

The same products serve a flat code, a list of (row, latent, value) pairs grouped by row with any
number per row (BatchTopK's, `sae_lab.fast_batchtopk`): `flat_decode`, and `encoder_grads` and
`LatentBags` given the pairs' rows.

The dense paths in `sae_lab.architectures` stay the reference these are tested against in float64
(tests/sae_lab/test_fast_topk.py, test_fast_batchtopk.py); benchmarks/bench_sae_step.py measures the gain.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# CPU only: the encoder GEMM and its top-k run on blocks of rows, written into one scratch buffer
# kept between calls (`_cpu_scratch`). A fresh [B, d_sae] block every step (64 MiB at B 4096,
# d_sae 4096) is a fresh mmap (glibc does not recycle blocks above 32 MiB), so page faults on every
# page. Bigger blocks make the GEMM more efficient (128 rows measured ~30% slower than 512, 2048
# ~6% faster than 512 with top-k included), so a block is as many rows as fit in _CPU_BLOCK_BYTES,
# and never fewer than _CPU_MIN_CHUNK_ROWS.
_CPU_BLOCK_BYTES = 32 * 2 ** 20
_CPU_MIN_CHUNK_ROWS = 512


def _cpu_chunk_rows(n: int, dtype: torch.dtype) -> int:
    return max(_CPU_MIN_CHUNK_ROWS, _CPU_BLOCK_BYTES // (n * dtype.itemsize))


_scratch: dict[torch.dtype, torch.Tensor] = {}  # a flat CPU buffer per dtype, grown on demand


def _cpu_scratch(rows: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A [rows, n] CPU tensor backed by a buffer reused across calls. Its contents are garbage and
    only valid until the next call: for scratch work whose results are copied out."""
    buf = _scratch.get(dtype)
    if buf is None or buf.numel() < rows * n:
        buf = _scratch[dtype] = torch.empty(rows * n, dtype=dtype)
    return buf[: rows * n].view(rows, n)


# AuxK over n_dead dead latents keeps k_aux of them per row. Its sparse products cost ~B*k_aux*d_in
# gathered multiply-adds, the dense ones B*n_dead*d_in in GEMMs that run ~10x faster per FLOP here;
# so sparse only pays while k_aux is a small fraction of n_dead. (Used by SparseAutoencoder._auxk_loss.)
AUXK_SPARSE_MAX_FILL = 0.125


@dataclass
class LatentBags:
    """The (row, latent) pairs of a sparse code grouped by latent, for `F.embedding_bag`.

    A code is either a top-k code idx [B, k] (the row of a pair is its row in idx) or a flat list
    of pairs latents [N] with their rows [N] (BatchTopK, `sae_lab.fast_batchtopk`, where rows keep
    different numbers of latents). rows[offsets[l]:offsets[l+1]] are the rows in which latent l is
    active and `order` maps that grouping back to positions in the flattened code (so weights are
    `w.flatten()[order]`).
    """

    order: torch.Tensor    # [N] permutation of the flattened code, sorted by latent
    rows: torch.Tensor     # [N] row of each pair, in that order
    offsets: torch.Tensor  # [d_sae] start of each latent's bag

    @classmethod
    def build(cls, idx: torch.Tensor, d_sae: int, rows: torch.Tensor | None = None) -> LatentBags:
        sorted_latents, order = idx.reshape(-1).sort()
        offsets = torch.searchsorted(sorted_latents, torch.arange(d_sae, device=idx.device, dtype=idx.dtype))
        if rows is None:  # a [B, k] code: the row is the position divided by k, no list needed
            return cls(order, torch.div(order, idx.shape[1], rounding_mode="floor"), offsets)
        return cls(order, rows[order], offsets)

    @classmethod
    def of(cls, idx: torch.Tensor, d_sae: int, rows: torch.Tensor | None = None) -> LatentBags:
        """`build`, reusing the previous result when called again on the same idx (and rows).

        A step's decoder backward and encoder backward both need the bags of the same code, and
        sorting is their costliest part. The cache holds references to idx and rows, so their memory
        cannot be handed to another tensor while the entry lives; both are saved for backward by
        both functions, so autograd would raise before any in-place change could go unnoticed.
        """
        global _last_bags
        key = tuple((t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride())
                    for t in (idx, rows) if t is not None) + (d_sae,)
        if _last_bags is None or _last_bags[0] != key:
            _last_bags = (key, (idx, rows), cls.build(idx, d_sae, rows))
        return _last_bags[2]

    def sum_rows(self, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[d_sae, table cols]: out[l] = sum over the pairs p of latent l of weights[p] * table[row of p]."""
        w = weights.reshape(-1)[self.order].to(table.dtype)
        return F.embedding_bag(self.rows, table, self.offsets, per_sample_weights=w, mode="sum")


_last_bags: tuple[tuple, tuple, LatentBags] | None = None  # (key, (idx, rows), bags) for LatentBags.of


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would run a GEMM in on this device, or None when autocast is off."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return None


def _grouped_topk(t: torch.Tensor, k: int, group: int = 4):
    """`t.topk(k, dim=1, sorted=False)` for a CPU tensor, about 1.7x (d_sae 4096) to 3x (24576) faster.

    CPU topk costs ~6-25 ns per element scanned, while a vectorised max costs well under 1 ns, so
    shrink what topk scans: split each row into `group`-sized strided groups {i, i+G, i+2G, ...}
    and take each group's max (one vectorised pass). The top k elements all lie in the k groups
    with the largest maxima: those k maxima are k distinct elements, so the k-th largest element
    of the row is >= the k-th largest group max, which is >= every element of the other groups.
    So top-k over the group maxima (recursively) picks k groups, and top-k over their k*group
    members gives the row's top-k values (with ties, possibly other indices of equal value).
    """
    B, n = t.shape
    if n % group or n < 4 * k * group:  # too few candidates saved to pay for the extra passes
        return t.topk(k, dim=1, sorted=False)
    G = n // group
    group_max = t.view(B, group, G).amax(1)  # strided groups: a contiguous, vectorised reduction
    _, top_groups = _grouped_topk(group_max, k, group)
    members = (top_groups.unsqueeze(-1) + G * torch.arange(group, device=t.device)).view(B, k * group)
    vals, j = t.gather(1, members).topk(k, dim=1, sorted=False)
    return vals, members.gather(1, j)


def _chunked_topk(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int):
    """top-k (values, indices) per row of x @ W + b, the GEMM done in row chunks on CPU."""
    B, n = x.shape[0], W.shape[1]
    if x.device.type != "cpu":  # the caching allocator already recycles the block; one big GEMM
        return torch.addmm(b, x, W).topk(k, dim=1, sorted=False)
    chunk = min(B, _cpu_chunk_rows(n, x.dtype))
    vals = x.new_empty(B, k)
    idx = torch.empty(B, k, dtype=torch.long, device=x.device)
    block = _cpu_scratch(chunk, n, x.dtype)
    for start in range(0, B, chunk):
        stop = min(start + chunk, B)
        pre = torch.addmm(b, x[start:stop], W, out=block[: stop - start])
        vals[start:stop], idx[start:stop] = _grouped_topk(pre, k)
    return vals, idx


def encoder_pieces(x, W_enc, b_enc, b_dec, select):
    """`select(x_c, W_enc, b_enc)` (a chunked GEMM + selection) run as the dense path's matmul would
    run: in the autocast dtype when autocast is on. Returns (x_c, what select returned)."""
    x_c = x if b_dec is None else x - b_dec
    dtype = _autocast_dtype(x_c)
    with torch.autocast(x_c.device.type, enabled=False):  # explicit casts: out= needs them
        if dtype is None:
            return x_c, select(x_c, W_enc, b_enc)
        return x_c, select(x_c.to(dtype), W_enc.to(dtype), b_enc.to(dtype))


def encoder_grads(needs_input_grad, x_c, W_enc, vals, grad_vals, latents, rows=None, row_offsets=None):
    """Gradients of (x, W_enc, b_enc, b_dec) of an encoder that kept the pre-activations `vals`
    (relu'd) of the pairs of a sparse code and got `grad_vals` for them.

    The code is a top-k code latents [B, k], or a flat code latents [N] grouped by row, with the row
    of each pair in `rows` [N] and where each row's pairs start in `row_offsets` [B].
    """
    need_x, need_W, need_b_enc, need_b_dec = needs_input_grad[:4]
    # G: relu' (0 where the kept value was clipped), in the parameters' dtype: under autocast
    # the forward GEMM ran in bf16/fp16, but these sparse products are cheap enough for fp32.
    g = grad_vals.masked_fill(vals <= 0, 0).to(W_enc.dtype)
    grad_x = grad_W = grad_b_enc = grad_b_dec = None
    if need_W:  # x_c^T @ G, built as its transpose: one bag of rows of x_c per latent
        grad_W = LatentBags.of(latents, W_enc.shape[1], rows).sum_rows(g, x_c).t()
    if need_b_enc or need_b_dec:
        grad_b_enc = torch.zeros_like(W_enc[0]).index_add_(0, latents.reshape(-1), g.reshape(-1))
    if need_b_dec:  # -sum_b (G @ W_enc^T)[b] = -W_enc @ grad_b_enc: no per-row product needed
        grad_b_dec = -(W_enc @ grad_b_enc)
    if need_x:  # G @ W_enc^T: a weighted sum of the kept columns of W_enc per row
        grad_x = F.embedding_bag(latents, W_enc.t(), row_offsets, per_sample_weights=g, mode="sum").to(x_c.dtype)
    return grad_x, grad_W, grad_b_enc if need_b_enc else None, grad_b_dec


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k):
        x_c, (vals, idx) = encoder_pieces(x, W_enc, b_enc, b_dec, lambda x, W, b: _chunked_topk(x, W, b, k))
        vals = vals.relu_()
        ctx.save_for_backward(x_c, W_enc, vals, idx)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals, _grad_idx):
        x_c, W_enc, vals, idx = ctx.saved_tensors
        return (*encoder_grads(ctx.needs_input_grad, x_c, W_enc, vals, grad_vals, idx), None)


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                b_dec: torch.Tensor | None = None):
    """(relu(top-k values), indices) of the pre-activations (x - b_dec) @ W_enc + b_enc.

    Same result as `pre.topk(k, sorted=False)` + relu (index order within a row is unspecified);
    the backward touches only the B*k kept entries. Pass b_dec (rather than x - b_dec) when x
    needs no gradient, as SAE inputs usually do not: b_dec's gradient through the centring is then
    a matrix-vector product instead of a per-row one. Under autocast the GEMM (and so `vals`) runs
    in the autocast dtype, as the dense path's matmul would.
    """
    return _TopKEncode.apply(x, W_enc, b_enc, b_dec, k)


def _pair_dots(g: torch.Tensor, W: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor | None,
               row_offsets: torch.Tensor | None) -> torch.Tensor:
    """<g[row], W[latent]> for every (row, latent) pair of a top-k code idx [B, k] (rows and
    row_offsets None) or a flat code idx [N] grouped by row -> [number of pairs].

    On CPU this is a sampled dense-dense product, `torch.sparse.sampled_addmm` with the code as a
    CSR mask: one vectorised dot per pair, ~1.7x faster here than the kernel autograd uses for
    embedding_bag's per_sample_weights (a BLAS call per pair), which stays the path elsewhere.
    """
    B, latents = g.shape[0], idx.reshape(-1)
    if g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64):
        crow = (torch.arange(0, B * idx.shape[1] + 1, idx.shape[1], device=idx.device) if rows is None
                else torch.cat([row_offsets, row_offsets.new_tensor([latents.numel()])]))
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state", once a process
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            mask = torch.sparse_csr_tensor(crow, latents, g.new_zeros(latents.numel()), (B, W.shape[0]),
                                           check_invariants=False)
        # beta=0 still multiplies the mask's values (0 * NaN is NaN), hence zeros rather than empty
        return torch.sparse.sampled_addmm(mask, g, W.t(), beta=0.0).values()
    offsets, bag_of = row_offsets, rows
    if rows is None:
        k = idx.shape[1]
        offsets = torch.arange(0, B * k, k, device=idx.device)
        bag_of = torch.arange(B, device=idx.device).repeat_interleave(k)
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(g, W, latents, offsets, bag_of, 0, -1)


class _SparseDecode(torch.autograd.Function):
    """A top-k code (idx [B, k], rows and row_offsets None) or a flat code (idx [N] grouped by row)."""

    @staticmethod
    def forward(ctx, vals, idx, rows, row_offsets, W_dec):
        ctx.save_for_backward(vals, idx, rows, row_offsets, W_dec)
        return F.embedding_bag(idx, W_dec, row_offsets, per_sample_weights=vals.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        vals, idx, rows, row_offsets, W_dec = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:  # <grad_out[row], W_dec[latent]> for every pair
            grad_vals = _pair_dots(grad_out.to(W_dec.dtype), W_dec, idx, rows, row_offsets).view(vals.shape)
            grad_vals = grad_vals.to(vals.dtype)
        if ctx.needs_input_grad[4]:  # one bag of rows per latent: each W_dec row written once
            grad_W = LatentBags.of(idx, W_dec.shape[0], rows).sum_rows(vals, grad_out.to(W_dec.dtype))
        return grad_vals, None, None, None, grad_W


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j vals[b, j] * W_dec[idx[b, j]] for each row b -> [B, d_in] (no bias), in W_dec's dtype."""
    return _SparseDecode.apply(vals, idx, None, None, W_dec)


def flat_decode(vals: torch.Tensor, latents: torch.Tensor, rows: torch.Tensor, row_offsets: torch.Tensor,
                W_dec: torch.Tensor) -> torch.Tensor:
    """sparse_decode of a flat code: pairs (rows[p], latents[p], vals[p]) grouped by row, row b's
    from row_offsets[b] on (rows may hold any number of pairs, none included) -> [B, d_in]."""
    return _SparseDecode.apply(vals, latents, rows, row_offsets, W_dec)
