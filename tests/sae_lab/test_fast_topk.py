"""The fast (sparse) TopK path must give the dense path's loss and gradients (float64, to ~1e-10)."""

from __future__ import annotations

import pytest
import torch

from sae_lab import fast_topk as sparse
from sae_lab.sae import TopKSAE
from sae_lab.fast_topk import LatentBags, _grouped_topk, sparse_decode, topk_encode

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pair(d_in, d_sae, k, device="cpu", seed=0, cls=TopKSAE, **kwargs):
    """A fast and a dense SAE of `cls` with identical float64 parameters (biases made non-zero)."""
    torch.manual_seed(seed)
    fast = cls(d_in, d_sae, k=k, fast=True, **kwargs).double().to(device)
    with torch.no_grad():
        fast.b_enc.normal_(0, 0.3)
        fast.b_dec.normal_(0, 0.3)
        fast.W_enc.add_(0.1 * torch.randn_like(fast.W_enc))  # untie from W_dec
    dense = cls(d_in, d_sae, k=k, fast=False, **kwargs).double().to(device)
    dense.load_state_dict(fast.state_dict())
    return fast, dense


def _assert_same_step(fast, dense, x):
    out_f, out_d = fast(x), dense(x)
    out_f.loss.backward()
    out_d.loss.backward()
    torch.testing.assert_close(out_f.loss, out_d.loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(out_f.aux_loss, out_d.aux_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(out_f.x_hat, out_d.x_hat, atol=1e-10, rtol=0)
    assert torch.equal(out_f.fired, out_d.fired)
    assert out_f.l0 == out_d.l0
    for (name, p_f), p_d in zip(fast.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p_f.grad, p_d.grad, atol=1e-10, rtol=0, msg=f"grad of {name}")
    return out_f


# ---- the autograd functions on their own ------------------------------------------------------
@pytest.mark.parametrize("centre_inside", [False, True])
def test_topk_encode_gradcheck(centre_inside):
    torch.manual_seed(0)
    B, d_in, d_sae, k = 6, 5, 12, 3
    x = torch.randn(B, d_in, dtype=torch.float64)
    x[:2] *= 0.05  # small rows: their top pre-activations are ~b_enc, mostly negative
    x.requires_grad_()
    W = torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True)
    b_enc = (torch.randn(d_sae, dtype=torch.float64) - 1.5).requires_grad_()
    b_dec = torch.randn(d_in, dtype=torch.float64, requires_grad=True)
    if centre_inside:  # b_dec's gradient through the cheap -W_enc @ grad_b_enc route; x's too
        fn = lambda x, W, b, c: topk_encode(x, W, b, k, b_dec=c)[0]  # noqa: E731
    else:
        fn = lambda x, W, b, c: topk_encode(x - c, W, b, k)[0]  # noqa: E731
    vals = fn(x, W, b_enc, b_dec)
    assert (vals == 0).any() and (vals > 0).any()  # both sides of the relu are exercised
    assert torch.autograd.gradcheck(fn, (x, W, b_enc, b_dec))


def test_sparse_decode_gradcheck():
    torch.manual_seed(0)
    vals = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 10, (7, 3))
    W_dec = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(v, idx, W), (vals, W_dec))


def test_sparse_decode_repeated_latent_in_a_row():
    # a latent may appear twice in one row (AuxK indices, user input): both terms must count
    idx = torch.tensor([[2, 2, 0]])
    vals = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(v, idx, W), (vals, W))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_dots_sampled_product_matches_the_embedding_bag_kernel(dtype):
    # the CPU path (sampled_addmm over a CSR mask) against the kernel every other device uses,
    # for a top-k code and a flat code with an empty row and a repeated latent
    torch.manual_seed(0)
    g, W = torch.randn(4, 6, dtype=dtype), torch.randn(9, 6, dtype=dtype)
    idx = torch.randint(0, 9, (4, 3))
    expected = (g[:, None, :] * W[idx]).sum(-1).reshape(-1)
    torch.testing.assert_close(sparse._pair_dots(g, W, idx, None, None), expected)
    latents, rows = torch.tensor([5, 5, 1, 8, 0]), torch.tensor([0, 0, 2, 2, 3])  # row 1 keeps nothing
    offsets = torch.searchsorted(rows, torch.arange(4))
    expected = (g[rows] * W[latents]).sum(-1)
    torch.testing.assert_close(sparse._pair_dots(g, W, latents, rows, offsets), expected)
    kernel = torch.ops.aten._embedding_bag_per_sample_weights_backward(g, W, latents, offsets, rows, 0, -1)
    torch.testing.assert_close(kernel, expected)


def test_encoder_scratch_block_is_not_shared_with_results(monkeypatch):
    # the GEMM block is reused by every call: what a call returned must survive the next calls
    monkeypatch.setattr(sparse, "_cpu_chunk_rows", lambda n, dtype: 7)
    torch.manual_seed(0)
    W, b = torch.randn(6, 32), torch.randn(32)
    x1, x2 = torch.randn(20, 6), torch.randn(20, 6)
    vals, idx = topk_encode(x1, W, b, 4)
    kept = vals.clone(), idx.clone()
    topk_encode(x2, W, b, 4)
    topk_encode(x2, W[:, :10], b[:10], 3)  # a narrower call (AuxK's) reuses the same buffer
    assert torch.equal(vals, kept[0]) and torch.equal(idx, kept[1])
    ref_vals, ref_idx = (x1 @ W + b).topk(4, dim=1)
    torch.testing.assert_close(vals.sort(1).values, ref_vals.relu().sort(1).values)


def test_latent_bags_group_by_latent():
    idx = torch.tensor([[3, 0], [0, 2], [3, 3]])
    bags = LatentBags.build(idx, d_sae=5)
    table = torch.arange(3.0).unsqueeze(1) + 1  # row b -> b + 1
    w = torch.tensor([[1.0, 10.0], [100.0, 1000.0], [1e4, 1e5]])
    out = bags.sum_rows(w, table).squeeze(1)
    # latent 0: (0,1) w=10, row 1; (1,0) w=100, row 2 -> 10 + 200; latent 1 and 4 empty
    assert out.tolist() == [210.0, 0.0, 2000.0, 1.0 + 3e4 + 3e5, 0.0]


@pytest.mark.parametrize("n,k", [(4096, 32), (64, 2), (256, 16), (100, 3), (16, 16)])
def test_grouped_topk_matches_topk(n, k):
    torch.manual_seed(0)
    for t in (torch.randn(33, n), torch.randint(-3, 4, (33, n)).float()):  # the second full of ties
        vals, idx = _grouped_topk(t, k)
        ref, _ = t.topk(k, dim=1)
        assert torch.equal(vals.sort(1, descending=True).values, ref)
        assert torch.equal(t.gather(1, idx), vals)
        assert (idx.sort(1).values.diff(dim=1) > 0).all()  # distinct indices per row


# ---- the full SAE step: fast == dense -------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d_sae,k", [(64, 4), (256, 8)])
def test_fast_matches_dense(device, d_sae, k):
    fast, dense = _pair(16, d_sae, k, device)
    x = torch.randn(40, 16, dtype=torch.float64, device=device) + 0.5
    _assert_same_step(fast, dense, x)


# 86 dead latents: sparse AuxK products; GEMMs over the dead columns; the same keeping all of them
@pytest.mark.parametrize("aux_k", [8, 64, 128])
def test_fast_matches_dense_with_dead_latents_auxk(aux_k):
    fast, dense = _pair(16, 256, 8, aux_k=aux_k)
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::3] = True
    for sae in (fast, dense):
        sae.tokens_since_fired[dead] = sae.dead_after_tokens
    out = _assert_same_step(fast, dense, torch.randn(40, 16, dtype=torch.float64))
    assert out.aux_loss > 0


def test_fast_matches_dense_across_row_chunks(monkeypatch):
    monkeypatch.setattr(sparse, "_cpu_chunk_rows", lambda n, dtype: 7)  # 40 rows -> 6 chunks, the last one short
    fast, dense = _pair(16, 256, 8)
    _assert_same_step(fast, dense, torch.randn(40, 16, dtype=torch.float64))


def test_k_equals_d_sae():
    fast, dense = _pair(8, 12, 12)
    _assert_same_step(fast, dense, torch.randn(10, 8, dtype=torch.float64))


def test_negative_pre_activations_are_zeroed():
    fast, dense = _pair(8, 32, 6)
    with torch.no_grad():
        fast.b_enc.fill_(-50.0)  # every pre-activation negative: all kept values relu'd to 0
    dense.load_state_dict(fast.state_dict())
    out = _assert_same_step(fast, dense, torch.randn(10, 8, dtype=torch.float64))
    assert (out.top_vals == 0).all() and out.l0 == 0 and not out.fired.any()
    assert (fast.W_enc.grad == 0).all() and (fast.b_enc.grad == 0).all()


def test_eval_forward_without_grad():
    fast, dense = _pair(16, 64, 4)
    fast.eval(), dense.eval()
    x = torch.randn(20, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).x_hat, dense(x).x_hat, atol=1e-10, rtol=0)


def test_bf16_autocast_smoke():
    torch.manual_seed(0)
    sae = TopKSAE(32, 256, k=8, fast=True)
    x = torch.randn(64, 32)
    ref = sae(x).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    out.loss.backward()
    assert out.top_vals.dtype == torch.bfloat16
    assert abs(out.loss.item() - ref) < 0.05 * abs(ref) + 1e-3
    for p in sae.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
