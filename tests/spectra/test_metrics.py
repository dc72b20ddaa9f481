"""Attention metrics on analytic cases: uniform rows, one-hot rows, masks and padding."""

import math

import pytest
import torch

from spectra.metrics import attention_metrics


def causal_uniform(n: int) -> torch.Tensor:
    """[1, 1, n, n]: query i attends uniformly to keys 0..i."""
    p = torch.tril(torch.ones(n, n))
    return (p / p.sum(-1, keepdim=True))[None, None]


def test_uniform_rows():
    n = 12
    m = attention_metrics(causal_uniform(n), causal=True)
    for i in range(2, n):
        keys = i + 1
        assert m["entropy"][0, 0, i] == pytest.approx(math.log(keys), rel=1e-6)
        assert m["max_attn"][0, 0, i] == pytest.approx(1 / keys)
        assert m["k_eff"][0, 0, i] == math.ceil(0.9 * keys)
        assert m["exp_entropy"][0, 0, i] == pytest.approx(keys, rel=1e-5)
        assert m["inv_simpson"][0, 0, i] == pytest.approx(keys, rel=1e-5)
        assert m["norm_entropy"][0, 0, i] == pytest.approx(1.0, rel=1e-6)
    assert m["valid"][0, 0].tolist() == [False, False] + [True] * (n - 2)  # the first 2 queries
    assert torch.isnan(m["entropy"][0, 0, :2]).all()


def test_one_hot_rows():
    p = torch.zeros(1, 2, 5, 5)
    p[..., 0] = 1.0  # every query attends only to the first token
    m = attention_metrics(p, causal=True)
    valid = m["valid"]
    assert (m["entropy"][valid] == 0).all() and (m["max_attn"][valid] == 1).all()
    assert (m["k_eff"][valid] == 1).all() and (m["inv_simpson"][valid] == 1).all()
    assert (m["exp_entropy"][valid] == 1).all() and (m["norm_entropy"][valid] == 0).all()


def test_query_norm_and_bidirectional_rows():
    q = torch.tensor([3.0, 4.0]).expand(1, 1, 4, 2)
    p = torch.full((1, 1, 4, 4), 0.25)
    m = attention_metrics(p, q, causal=False)
    assert m["valid"].all() and torch.allclose(m["q_norm"], torch.full((1, 1, 4), 5.0))
    assert torch.allclose(m["entropy"], torch.full((1, 1, 4), math.log(4)))


def test_left_padding():
    """Positions 0-1 are padding: padded queries are not measured, the first 2 real tokens are
    skipped, and a row over the visible real keys is measured against their count."""
    n = 6
    pad = torch.tensor([[False, False, True, True, True, True]])
    visible = torch.tril(torch.ones(n, n)) * pad[0].float()
    p = (visible / visible.sum(-1, keepdim=True).clamp_min(1))[None, None]
    m = attention_metrics(p, causal=True, padding_mask=pad)
    assert m["valid"][0, 0].tolist() == [False, False, False, False, True, True]
    for i, keys in ((4, 3), (5, 4)):
        assert m["entropy"][0, 0, i] == pytest.approx(math.log(keys), rel=1e-6)
        assert m["norm_entropy"][0, 0, i] == pytest.approx(1.0, rel=1e-6)
        assert m["k_eff"][0, 0, i] == math.ceil(0.9 * keys)


def test_bf16_patterns_are_measured_in_float32():
    p = causal_uniform(8).to(torch.bfloat16)
    m = attention_metrics(p, causal=True)
    assert m["entropy"].dtype == torch.float32
    assert m["entropy"][0, 0, 7] == pytest.approx(math.log(8), rel=1e-2)


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[batch, heads, queries, keys\]"):
        attention_metrics(torch.ones(3, 3), causal=True)
