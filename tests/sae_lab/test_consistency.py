"""Tests for sae_lab.consistency: PWMCC, random baseline, Hungarian matched fraction."""

import math

import numpy as np
import pytest
import torch

from sae_lab.consistency import (
    expected_random_max_cos,
    hungarian_match,
    matched_fraction,
    max_abs_cos,
    mean_max_abs_cos,
    pairwise_pwmcc,
    pwmcc,
    random_dictionary,
    unit_directions,
)


def dense_pwmcc_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Straight from the formula, in float64 with the full C matrix (rows = latents)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.abs(a @ b.T)
    return 0.5 * (c.max(axis=1).mean() + c.max(axis=0).mean())


# ---------------------------------------------------------------- PWMCC basics

@pytest.mark.parametrize("d_sae,d_in", [(64, 128), (256, 32), (100, 100)])
def test_identical_dictionaries_score_one(d_sae, d_in):
    w = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(0)) * 3.0  # not unit
    assert pwmcc(w, w) == pytest.approx(1.0, abs=1e-6)


def test_permuted_sign_flipped_copy_scores_one():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300, 48, generator=g)
    perm = torch.randperm(300, generator=g)
    signs = torch.where(torch.rand(300, 1, generator=g) < 0.5, -1.0, 1.0)
    scales = torch.rand(300, 1, generator=g) + 0.1    # row norms must not matter either
    w2 = w[perm] * signs * scales
    assert (signs < 0).any() and (signs > 0).any()
    assert pwmcc(w, w2) == pytest.approx(1.0, abs=1e-6)
    # and it is not trivially 1 for everything: an unrelated dictionary scores far lower
    assert pwmcc(w, torch.randn(300, 48, generator=g)) < 0.8


@pytest.mark.parametrize("d_sae,d_in", [(64, 128), (512, 64)])   # d_sae < d_in and d_sae > d_in
def test_layout_invariance(d_sae, d_in):
    a = random_dictionary(d_sae, d_in, seed=0) + 0.05 * torch.randn(d_sae, d_in)
    b = random_dictionary(d_sae, d_in, seed=1)
    ref = pwmcc(a, b)                                    # rows, the SAELens layout
    assert pwmcc(a.T, b.T, layout="columns") == pytest.approx(ref, abs=1e-6)
    assert pwmcc(a, b.T, layout=("rows", "columns")) == pytest.approx(ref, abs=1e-6)
    assert pwmcc(a.T.contiguous(), b, layout=("columns", "rows")) == pytest.approx(ref, abs=1e-6)
    # matches the float64 formula on the rows, i.e. latents really were compared as rows
    assert ref == pytest.approx(dense_pwmcc_reference(a.double().numpy(), b.double().numpy()), abs=1e-6)


def test_no_shape_heuristic_64_by_128():
    """d_sae=64 < d_in=128 stays as rows: comparing against columns would change the answer."""
    a = random_dictionary(64, 128, seed=2)
    b = a.clone()
    b[:32] = random_dictionary(32, 128, seed=3)          # half the latents replaced
    expected = dense_pwmcc_reference(a.double().numpy(), b.double().numpy())
    assert pwmcc(a, b) == pytest.approx(expected, abs=1e-6)
    wrong_axes = dense_pwmcc_reference(a.T.double().numpy(), b.T.double().numpy())
    assert abs(expected - wrong_axes) > 1e-2             # the test can tell the axes apart


def test_d_in_mismatch_error_names_shapes():
    a = random_dictionary(64, 128, seed=0)
    with pytest.raises(ValueError, match=r"\(64, 128\).*\(128, 64\)"):
        pwmcc(a, a.T)                                    # forgot layout="columns" for B
    with pytest.raises(ValueError, match="d_in mismatch"):
        pwmcc(a, random_dictionary(64, 96, seed=0))
    with pytest.raises(ValueError, match="layout"):
        pwmcc(a, a, layout="transposed")
    with pytest.raises(ValueError, match="2-D"):
        pwmcc(a[0], a)
    with pytest.raises(ValueError, match="no latents"):
        pwmcc(a[:0], a)
    with pytest.raises(ValueError, match="non-finite"):
        pwmcc(torch.full((4, 128), float("nan")), a)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 5000])
def test_chunked_matches_dense_float64_reference(chunk_size):
    rng = np.random.default_rng(chunk_size)
    a = rng.normal(size=(1000, 40))
    b = rng.normal(size=(700, 40))
    b[:100] = a[:100] + 0.1 * rng.normal(size=(100, 40))   # some shared latents, unequal sizes
    ref = dense_pwmcc_reference(a, b)
    got = pwmcc(torch.from_numpy(a), torch.from_numpy(b), chunk_size=chunk_size)
    assert got == pytest.approx(ref, abs=1e-6)
    # row/column maxima individually, not just their means
    row_max, col_max = max_abs_cos(unit_directions(a), unit_directions(b), chunk_size=chunk_size)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.abs(an @ bn.T)
    np.testing.assert_allclose(row_max.numpy(), c.max(axis=1), atol=1e-6)
    np.testing.assert_allclose(col_max.numpy(), c.max(axis=0), atol=1e-6)


def test_pwmcc_symmetric_and_accepts_numpy_and_low_precision():
    a = random_dictionary(200, 32, seed=4)
    b = random_dictionary(150, 32, seed=5)
    assert pwmcc(a, b) == pytest.approx(pwmcc(b, a), abs=1e-7)
    assert pwmcc(a.numpy(), b.numpy()) == pytest.approx(pwmcc(a, b), abs=1e-7)
    assert pwmcc(a.bfloat16(), b.bfloat16()) == pytest.approx(pwmcc(a, b), abs=1e-2)


# ---------------------------------------------------------------- random baseline

def test_random_dictionary_seeded_unit_rows():
    w = random_dictionary(128, 64, seed=7)
    assert w.shape == (128, 64) and w.dtype == torch.float32
    torch.testing.assert_close(w.norm(dim=1), torch.ones(128))
    assert torch.equal(w, random_dictionary(128, 64, seed=7))
    assert not torch.equal(w, random_dictionary(128, 64, seed=8))


@pytest.mark.parametrize("d_sae,d_in", [(2048, 256), (4096, 768), (512, 64)])
def test_random_baseline_near_analytic_order(d_sae, d_in):
    value = pwmcc(random_dictionary(d_sae, d_in, seed=0), random_dictionary(d_sae, d_in, seed=1))
    expected = expected_random_max_cos(d_sae, d_in)
    assert 0.5 * expected < value < 1.5 * expected
    assert expected == pytest.approx(math.sqrt(2 * math.log(2 * d_sae) / d_in))


def test_pairwise_pwmcc_all_unordered_pairs():
    decoders = {s: random_dictionary(256, 32, seed=s) for s in (10, 11, 12, 13)}
    decoders[13] = decoders[10][torch.randperm(256)] * -1.0   # seed 13 duplicates seed 10
    pairs = pairwise_pwmcc(decoders, chunk_size=100)
    assert [(a, b) for a, b, _ in pairs] == [(10, 11), (10, 12), (10, 13), (11, 12), (11, 13), (12, 13)]
    by_pair = {(a, b): v for a, b, v in pairs}
    assert by_pair[(10, 13)] == pytest.approx(1.0, abs=1e-6)
    assert by_pair[(10, 11)] == pytest.approx(pwmcc(decoders[10], decoders[11]), abs=1e-7)
    assert by_pair[(11, 12)] < 0.9
    # columns storage gives the same numbers
    cols = pairwise_pwmcc({k: v.T for k, v in decoders.items()}, layout="columns")
    assert [v for *_, v in cols] == pytest.approx([v for *_, v in pairs], abs=1e-6)
    with pytest.raises(ValueError, match="d_in mismatch"):
        pairwise_pwmcc({0: random_dictionary(64, 32), 1: random_dictionary(64, 16)})
    with pytest.raises(ValueError, match="at least two"):
        pairwise_pwmcc({0: random_dictionary(64, 32)})


# ---------------------------------------------------------------- matched_fraction

def test_matched_fraction_identical_and_permuted():
    w = random_dictionary(300, 64, seed=0)
    assert matched_fraction(w, w) == 1.0
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    idx_a, idx_b, cos = hungarian_match(w, -w[perm])
    assert np.allclose(cos, 1.0, atol=1e-6)
    np.testing.assert_array_equal(perm.numpy()[idx_b], idx_a)   # recovers the permutation


def test_matched_fraction_random_is_near_zero():
    a = random_dictionary(200, 64, seed=1)
    b = random_dictionary(200, 64, seed=2)
    assert matched_fraction(a, b) <= 0.01


def test_matched_fraction_counts_threshold_and_unequal_sizes():
    g = torch.Generator().manual_seed(3)
    a = random_dictionary(100, 256, seed=4)
    # b: 40 noisy copies of a's first 40 latents (cos ~0.9) + 160 unrelated ones
    noisy = a[:40] + 0.3 * torch.randn(40, 256, generator=g) / math.sqrt(256)
    b = torch.cat([noisy, random_dictionary(160, 256, seed=5)])
    assert matched_fraction(a, b, threshold=0.7) == pytest.approx(40 / 100)    # of the smaller
    assert matched_fraction(b, a, threshold=0.7) == pytest.approx(40 / 100)
    assert matched_fraction(a, b, threshold=0.999) == 0.0
    assert pwmcc(a, b) < 0.8


def test_matched_fraction_refuses_large():
    a = random_dictionary(300, 8, seed=0)
    with pytest.raises(ValueError, match="max_size=256"):
        matched_fraction(a, a, max_size=256)
    assert matched_fraction(a, a, max_size=300) == 1.0


# ---------------------------------------------------------------- memory bound

def test_chunk_bounds_the_largest_buffer(monkeypatch):
    """The biggest [chunk, F_b] block never exceeds chunk_size rows."""
    seen = []
    real_amax = torch.Tensor.amax

    def spy(self, *args, **kwargs):
        seen.append(tuple(self.shape))
        return real_amax(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "amax", spy)
    a, b = random_dictionary(1000, 16, seed=0), random_dictionary(3000, 16, seed=1)
    pwmcc(a, b, chunk_size=128)
    assert seen and max(s[0] for s in seen) == 128 and all(s[1] == 3000 for s in seen)


# ---------------------------------------------------------------- differentiable alignment

def test_mean_max_abs_cos_is_pwmccs_row_half_and_differentiable():
    a = torch.randn(300, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = random_dictionary(200, 24, seed=1)
    row_max, _ = max_abs_cos(unit_directions(a), unit_directions(b), chunk_size=64)
    w = a.float().requires_grad_(True)
    value = mean_max_abs_cos(w * 3.0, b, chunk_size=64)   # row norms do not matter
    assert value.item() == pytest.approx(row_max.double().mean().item(), abs=1e-6)
    value.backward()
    dense_w = a.float().requires_grad_(True)
    dense = (torch.nn.functional.normalize(dense_w, dim=1) @ b.T).abs().amax(dim=1).mean()
    dense.backward()
    assert torch.allclose(w.grad, dense_w.grad, atol=1e-6) and w.grad.abs().sum() > 0
