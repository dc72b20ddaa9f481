"""The fast (flat-code) BatchTopK and Matryoshka paths must give the dense path's loss and gradients
(float64, to ~1e-10), and their batch top-k must keep torch.topk's set."""

from __future__ import annotations

import pytest
import torch

from sae_lab import fast_batchtopk, fast_topk
from sae_lab.architectures import BatchTopKSAE, MatryoshkaSAE
from sae_lab.fast_batchtopk import FlatCode, batch_topk_encode
from sae_lab.fast_topk import LatentBags, flat_decode
from tests.sae_lab.test_fast_topk import _pair as fast_dense_pair

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _reference(x, W, b_enc, b_dec, n):
    """The dense definition: relu(pre), and its top n over the flattened batch (sorted values and
    flat positions, and the next value, to tell a clear boundary from a tie)."""
    pre = torch.relu((x if b_dec is None else x - b_dec) @ W + b_enc)
    vals, flat = pre.flatten().topk(min(n + 1, pre.numel()))
    return pre, vals[:n], flat[:n], vals[n] if n < pre.numel() else None


def _assert_keeps_topk_set(x, W, b_enc, b_dec, k):
    B, d_sae = x.shape[0], W.shape[1]
    code = batch_topk_encode(x, W, b_enc, k, b_dec=b_dec)
    pre, ref_vals, ref_flat, next_val = _reference(x, W, b_enc, b_dec, k * B)
    assert code.vals.shape == (k * B,)
    flat = code.rows * d_sae + code.latents
    assert (flat.diff() > 0).all()                                     # grouped by row, latents ascending
    close = dict(atol=1e-12, rtol=0)  # the chunked GEMM may round differently from the dense one
    torch.testing.assert_close(code.vals.sort(descending=True).values, ref_vals, **close)  # the kept values ...
    torch.testing.assert_close(pre.flatten()[flat], code.vals, **close)                   # ... where they are
    positive = ref_vals > 0
    clear_boundary = next_val is None or ref_vals[-1] > next_val + 1e-9 or ref_vals[-1] == 0
    if clear_boundary:  # no tie for the last places among positives: the very same set
        assert set(flat[code.vals > 0].tolist()) == set(ref_flat[positive].tolist())
    assert torch.equal(code.row_offsets, torch.searchsorted(code.rows, torch.arange(B)))
    return code


class _CountEncodes:
    """Wraps fast_topk's chunked GEMM + top-k to count how many rows were (re-)encoded."""

    def __init__(self, monkeypatch):
        self.rows = []
        inner = fast_topk._chunked_topk

        def counted(x, W, b, k):
            self.rows.append((x.shape[0], k))
            return inner(x, W, b, k)
        monkeypatch.setattr(fast_batchtopk, "_chunked_topk", counted)


# ---- the batch top-k: torch.topk's kept set ---------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_batch_topk_keeps_the_topk_set(seed):
    torch.manual_seed(seed)
    x = torch.randn(50, 16, dtype=torch.float64)
    W, b_enc, b_dec = torch.randn(16, 96, dtype=torch.float64), torch.randn(96, dtype=torch.float64) * 0.3, torch.randn(16, dtype=torch.float64)
    _assert_keeps_topk_set(x, W, b_enc, b_dec, k=5)


def test_rows_holding_many_of_the_batch_top_are_encoded_again(monkeypatch):
    """Three rows 100x larger than the rest hold all of the batch's top k*B: their first 2k
    candidates cannot be enough, so rows in doubt are encoded again, wider, until settled (the
    first retry also takes ordinary rows, whose candidates all pass the first, low, t)."""
    torch.manual_seed(0)
    x = torch.randn(40, 16, dtype=torch.float64)
    x[[3, 17, 31]] *= 100
    W, b_enc = torch.randn(16, 128, dtype=torch.float64), torch.zeros(128, dtype=torch.float64)
    count = _CountEncodes(monkeypatch)
    code = _assert_keeps_topk_set(x, W, b_enc, None, k=4)
    per_row = torch.bincount(code.rows, minlength=40)
    assert per_row[[3, 17, 31]].min() > 8                     # more than the first pass's 2k candidates
    assert per_row.sum() == per_row[[3, 17, 31]].sum()
    assert count.rows[0] == (40, 8) and len(count.rows) > 1     # a first pass, then retries ...
    n_rows = [n for n, _ in count.rows]
    assert n_rows == sorted(n_rows, reverse=True) and n_rows[1] < 40 and n_rows[-1] == 3  # ... of fewer rows
    assert [k for _, k in count.rows] == [8 * 2 ** i for i in range(len(count.rows))]    # twice as wide


def test_every_row_in_doubt_when_few_activations_are_positive(monkeypatch):
    """Fewer positive pre-activations than k*B: the kept set is all of them (plus zeros), which
    needs every row with a positive smallest candidate to be encoded whole."""
    torch.manual_seed(0)
    x = torch.randn(30, 8, dtype=torch.float64)
    W, b_enc = torch.randn(8, 64, dtype=torch.float64), torch.full((64,), -4.5, dtype=torch.float64)
    pre = torch.relu(x @ W + b_enc)
    assert 0 < (pre > 0).sum() < 6 * 30
    monkeypatch.setattr(fast_batchtopk, "CANDIDATES_PER_K", 1)
    code = _assert_keeps_topk_set(x, W, b_enc, None, k=6)
    assert (pre > 0).sum(1).max() > 6  # a row with more positives than its first candidates
    torch.testing.assert_close(code.vals[code.vals > 0].sort().values, pre[pre > 0].sort().values, atol=1e-12, rtol=0)


def test_ties_are_kept_by_value(monkeypatch):
    torch.manual_seed(0)
    x = torch.randint(-2, 3, (24, 8)).double()
    W, b_enc = torch.randint(-1, 2, (8, 40)).double(), torch.zeros(40, dtype=torch.float64)
    monkeypatch.setattr(fast_batchtopk, "CANDIDATES_PER_K", 1)
    _assert_keeps_topk_set(x, W, b_enc, None, k=3)


def test_k_equals_d_sae_keeps_everything():
    torch.manual_seed(0)
    x, W, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    code = _assert_keeps_topk_set(x, W, b, None, k=10)
    assert torch.equal(code.latents, torch.arange(10).repeat(6))


def test_batch_topk_across_row_chunks(monkeypatch):
    monkeypatch.setattr(fast_topk, "_cpu_chunk_rows", lambda n, dtype: 7)  # 40 rows -> 6 chunks, the last one short
    monkeypatch.setattr(fast_batchtopk, "CANDIDATES_PER_K", 1)
    torch.manual_seed(1)
    x = torch.randn(40, 16, dtype=torch.float64)
    x[::9] *= 20
    _assert_keeps_topk_set(x, torch.randn(16, 64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64), None, k=3)


# ---- the autograd pieces on their own -----------------------------------------------------------
@pytest.mark.parametrize("centre_inside", [False, True])
def test_batch_topk_encode_gradcheck(centre_inside):
    torch.manual_seed(0)
    B, d_in, d_sae, k = 6, 5, 12, 3
    x = torch.randn(B, d_in, dtype=torch.float64)
    x[0] *= 4     # a row that keeps many latents
    x[1] *= 0.01  # one that keeps none or few
    x.requires_grad_()
    W = torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True)
    b_enc = (torch.randn(d_sae, dtype=torch.float64) - 0.5).requires_grad_()
    b_dec = torch.randn(d_in, dtype=torch.float64, requires_grad=True)
    if centre_inside:
        fn = lambda x, W, b, c: batch_topk_encode(x, W, b, k, b_dec=c).vals  # noqa: E731
    else:
        fn = lambda x, W, b, c: batch_topk_encode(x - c, W, b, k).vals  # noqa: E731
    code = batch_topk_encode(x, W, b_enc, k, b_dec=b_dec)
    assert (torch.bincount(code.rows, minlength=B) != k).any()  # rows keep different numbers
    assert torch.autograd.gradcheck(fn, (x, W, b_enc, b_dec))


def test_flat_decode_gradcheck_with_empty_rows_and_repeats():
    # row 1 keeps nothing, row 2 has latent 3 twice: both terms must count
    latents = torch.tensor([0, 3, 3, 3, 1])
    rows = torch.tensor([0, 0, 2, 2, 3])
    offsets = torch.searchsorted(rows, torch.arange(4))
    vals = torch.randn(5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    out = flat_decode(vals, latents, rows, offsets, W)
    assert torch.equal(out[1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(out[2], (vals[2] + vals[3]) * W[3])
    assert torch.autograd.gradcheck(lambda v, W: flat_decode(v, latents, rows, offsets, W), (vals, W))


def test_latent_bags_of_a_flat_code():
    latents = torch.tensor([3, 0, 0, 2, 3, 3])
    rows = torch.tensor([0, 0, 1, 1, 2, 4])
    bags = LatentBags.build(latents, d_sae=5, rows=rows)
    table = torch.arange(5.0).unsqueeze(1) + 1  # row b -> b + 1
    w = torch.tensor([1.0, 10.0, 100.0, 1000.0, 1e4, 1e5])
    # latent 0: row 0 w 10, row 1 w 100 -> 10 + 200; latent 3: rows 0, 2, 4 -> 1 + 3e4 + 5e5
    assert bags.sum_rows(w, table).squeeze(1).tolist() == [210.0, 0.0, 2000.0, 1.0 + 3e4 + 5e5, 0.0]


def test_band_keeps_row_grouping():
    code = FlatCode(torch.arange(6.0), torch.tensor([1, 5, 0, 2, 7, 4]), torch.tensor([0, 0, 1, 1, 1, 3]),
                    torch.tensor([0, 2, 5, 5]))
    band = code.band(2, 6)
    assert band.latents.tolist() == [5, 2, 4] and band.rows.tolist() == [0, 1, 3]
    assert band.vals.tolist() == [1.0, 3.0, 5.0] and band.row_offsets.tolist() == [0, 1, 2, 2]


# ---- the full SAE step: fast == dense -------------------------------------------------------------
def _pair(cls, d_in, d_sae, k, *args, **kwargs):
    """A fast and a dense SAE of `cls` with identical float64 parameters (test_fast_topk's)."""
    return fast_dense_pair(d_in, d_sae, k, *args, cls=cls, **kwargs)


def _assert_same_step(fast, dense, x):
    out_f, out_d = fast(x), dense(x)
    out_f.loss.backward()
    out_d.loss.backward()
    for name in ("loss", "recon_loss", "aux_loss", "x_hat"):
        torch.testing.assert_close(getattr(out_f, name), getattr(out_d, name), atol=1e-10, rtol=0, msg=name)
    assert torch.equal(out_f.fired, out_d.fired)
    assert out_f.l0 == out_d.l0
    assert fast.threshold == dense.threshold  # the running threshold saw the same kept values
    for (name, p_f), p_d in zip(fast.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p_f.grad, p_d.grad, atol=1e-10, rtol=0, msg=f"grad of {name}")
    return out_f


def _batch(n=40, d=16, device="cpu", seed=0):
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device) + 0.5
    x[::7] *= 3  # rows that keep more than k
    return x


MATRYOSHKA = [(MatryoshkaSAE, {"prefixes": p}) for p in ([16, 64, 256], [256], [1, 2, 255, 256])]
CASES = [(BatchTopKSAE, {})] + MATRYOSHKA
IDS = ["batchtopk"] + [f"matryoshka{c[1]['prefixes']}" for c in MATRYOSHKA]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls,kwargs", CASES, ids=IDS)
def test_fast_matches_dense(device, cls, kwargs):
    fast, dense = _pair(cls, 16, 256, 8, device, **kwargs)
    out = _assert_same_step(fast, dense, _batch(device=device))
    assert out.l0 == 8


# 86 dead latents: sparse AuxK products; GEMMs over the dead columns; the same keeping all of them
@pytest.mark.parametrize("aux_k", [8, 64, 128])
@pytest.mark.parametrize("cls,kwargs", CASES[:2], ids=IDS[:2])
def test_fast_matches_dense_with_dead_latents_auxk(cls, kwargs, aux_k):
    fast, dense = _pair(cls, 16, 256, 8, aux_k=aux_k, **kwargs)
    dead = torch.zeros(256, dtype=torch.bool)
    dead[::3] = True
    for sae in (fast, dense):
        sae.tokens_since_fired[dead] = sae.dead_after_tokens
    out = _assert_same_step(fast, dense, _batch())
    assert out.aux_loss > 0


@pytest.mark.parametrize("cls,kwargs", CASES[:2], ids=IDS[:2])
def test_fast_matches_dense_across_row_chunks_and_retries(monkeypatch, cls, kwargs):
    monkeypatch.setattr(fast_topk, "_cpu_chunk_rows", lambda n, dtype: 7)
    monkeypatch.setattr(fast_batchtopk, "CANDIDATES_PER_K", 1)
    fast, dense = _pair(cls, 16, 256, 8, **kwargs)
    _assert_same_step(fast, dense, _batch())


@pytest.mark.parametrize("cls,kwargs", [(BatchTopKSAE, {}), (MatryoshkaSAE, {"prefixes": [8, 32]})],
                         ids=["batchtopk", "matryoshka"])
def test_negative_pre_activations_are_zeroed(cls, kwargs):
    fast, dense = _pair(cls, 8, 32, 6, **kwargs)
    with torch.no_grad():
        fast.b_enc.fill_(-50.0)  # every pre-activation negative: the kept values are all relu'd to 0
    dense.load_state_dict(fast.state_dict())
    out = _assert_same_step(fast, dense, torch.randn(10, 8, dtype=torch.float64))
    assert out.l0 == 0 and not out.fired.any()
    assert (fast.W_enc.grad == 0).all() and (fast.b_enc.grad == 0).all()


def test_matryoshka_loss_is_the_sum_of_prefix_fvus():
    """Against the definition written out here: sum_m FVU(x, z[:, :m] W_dec[:m] + b_dec), plus AuxK."""
    fast, _ = _pair(MatryoshkaSAE, 16, 64, 4, prefixes=[8, 24, 64])
    x = _batch()
    z = torch.zeros(40, 64, dtype=torch.float64)
    code = batch_topk_encode(x, fast.W_enc, fast.b_enc, 4, b_dec=fast.b_dec)
    z[code.rows, code.latents] = code.vals.detach()
    denom = (x - x.mean(0)).pow(2).sum()
    expected = sum((x - (z[:, :m] @ fast.W_dec[:m] + fast.b_dec)).pow(2).sum() / denom for m in (8, 24, 64))
    out = fast(x)
    assert out.aux_loss == 0  # nothing dead yet
    torch.testing.assert_close(out.loss, expected.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.recon_loss, ((x - out.x_hat).pow(2).sum() / denom).detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls,kwargs", [(BatchTopKSAE, {}), (MatryoshkaSAE, {"prefixes": [32, 256]})],
                         ids=["batchtopk", "matryoshka"])
def test_bf16_autocast_smoke(cls, kwargs):
    torch.manual_seed(0)
    sae = cls(32, 256, k=8, fast=True, **kwargs)
    x = torch.randn(64, 32)
    ref = sae(x).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    out.loss.backward()
    assert abs(out.loss.item() - ref) < 0.05 * abs(ref) + 1e-3
    for p in sae.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
