"""JumpReLU: the straight-through pseudo-derivatives against their analytic formulas, and the SAE's
loss, sparsity penalties and threshold constraint."""

from __future__ import annotations

import math

import pytest
import torch

from sae_lab.architectures import JumpReLUSAE
from sae_lab.architectures.jumprelu import jump_relu, rectangle, step

EPS = 0.05


def _inputs(seed=0, B=64, d=10):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(B, d, dtype=torch.float64, generator=g).requires_grad_()
    theta = (torch.rand(d, dtype=torch.float64, generator=g) * 0.5).requires_grad_()
    weights = torch.randn(B, d, dtype=torch.float64, generator=g)  # an upstream gradient
    return pre, theta, weights


def test_jump_relu_forward_and_pseudo_derivatives():
    pre, theta, w = _inputs()
    z = jump_relu(pre, theta, EPS)
    assert torch.equal(z, torch.where(pre > theta, pre, torch.zeros_like(pre)))
    (z * w).sum().backward()
    p, t = pre.detach(), theta.detach()
    in_window = ((p - t).abs() < EPS / 2).double()
    assert in_window.sum() > 5  # the kernel's window is hit
    # d/dpre = H(pre - theta); d/dtheta = -(theta / eps) K((pre - theta) / eps), summed over the batch
    torch.testing.assert_close(pre.grad, w * (p > t), atol=0, rtol=0)
    torch.testing.assert_close(theta.grad, (-(t / EPS) * in_window * w).sum(0), atol=1e-12, rtol=0)


def test_step_forward_and_pseudo_derivatives():
    pre, theta, w = _inputs(1)
    h = step(pre, theta, EPS)
    assert torch.equal(h, (pre > theta).double())
    (h * w).sum().backward()
    p, t = pre.detach(), theta.detach()
    in_window = ((p - t).abs() < EPS / 2).double()
    assert in_window.sum() > 5
    assert pre.grad is None or (pre.grad == 0).all()  # no gradient to pre through the step
    torch.testing.assert_close(theta.grad, (-(1 / EPS) * in_window * w).sum(0), atol=1e-12, rtol=0)


def test_rectangle_kernel():
    u = torch.tensor([-0.75, -0.5, -0.49, 0.0, 0.49, 0.5, 0.75])
    assert rectangle(u).tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_gradient_to_pre_is_the_true_one_away_from_the_jump():
    """Off the discontinuity JumpReLU is differentiable in pre: finite differences must agree."""
    pre, theta, _ = _inputs(2, B=6, d=5)
    with torch.no_grad():  # keep every entry > 1e-3 from its threshold: finite steps never cross it
        near = (pre - theta).abs() < 1e-3
        pre[near] += 0.01
    assert torch.autograd.gradcheck(lambda p: jump_relu(p, theta.detach(), EPS), (pre,))


@pytest.mark.parametrize("theta", [0.3, 1.0])
def test_pseudo_derivatives_estimate_the_derivative_of_the_expectation(theta):
    """Why the estimators work (the paper's section 4): for pre ~ p, d/dtheta E[H(pre - theta)] =
    -p(theta) and d/dtheta E[pre H(pre - theta)] = -theta p(theta); the batch mean of the
    pseudo-gradients is a kernel density estimate of exactly these. Standard normal pre here."""
    torch.manual_seed(0)
    pre = torch.randn(400_000, 1, dtype=torch.float64)
    t = torch.tensor([theta], dtype=torch.float64, requires_grad=True)
    density = math.exp(-theta ** 2 / 2) / math.sqrt(2 * math.pi)
    step(pre, t, EPS).mean().backward()
    assert t.grad.item() == pytest.approx(-density, rel=0.03)
    t.grad = None
    jump_relu(pre, t, EPS).mean().backward()
    assert t.grad.item() == pytest.approx(-theta * density, rel=0.03)


def test_pseudo_derivative_over_leading_dims():
    pre = torch.randn(3, 4, 6, dtype=torch.float64)
    theta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    step(pre, theta, 10.0).sum().backward()  # every entry in the window: -(1/eps) * 12 per latent
    torch.testing.assert_close(theta.grad, torch.full((6,), -1.2, dtype=torch.float64))


# ---- the SAE ----------------------------------------------------------------------------------
def _sae(**kwargs):
    torch.manual_seed(0)
    sae = JumpReLUSAE(16, 64, **kwargs).double()
    with torch.no_grad():
        sae.threshold.fill_(0.2)
    return sae, torch.randn(48, 16, dtype=torch.float64)


def test_step_loss_is_fvu_plus_l0():
    sae, x = _sae(l0_coeff=0.01)
    out = sae(x)
    pre = sae.pre_acts(x)
    l0 = (pre > 0.2).sum(1).double().mean()
    assert out.aux_loss == l0 and out.l0 == pytest.approx(float(l0))
    torch.testing.assert_close(out.loss, out.recon_loss + 0.01 * l0)
    torch.testing.assert_close(out.x_hat, sae.decode(pre * (pre > 0.2)))


def test_l0_penalty_pushes_thresholds_up_only_through_theta():
    sae, x = _sae(l0_coeff=1.0, bandwidth=0.1)
    (sae.l0_coeff * sae(x).aux_loss).backward()
    assert (sae.threshold.grad <= 0).all() and (sae.threshold.grad < 0).any()  # descent raises theta
    for p in (sae.W_enc, sae.b_enc, sae.b_dec):                                # the step passes nothing on
        assert p.grad is None or (p.grad == 0).all()


def test_tanh_penalty():
    sae, x = _sae(sparsity="tanh", tanh_scale=3.0)
    out = sae(x)
    z = sae.encode(x)
    expected = torch.tanh(3.0 * z * sae.W_dec.norm(dim=1)).sum(1).mean()
    torch.testing.assert_close(out.aux_loss, expected)
    out.aux_loss.backward()
    assert (sae.b_enc.grad != 0).any()  # unlike the step, tanh reaches the encoder


def test_thresholds_are_projected_to_non_negative():
    sae, _ = _sae()
    with torch.no_grad():
        sae.threshold[:5] = -0.1
        sae.W_dec.mul_(2)
    sae.project_parameters()
    assert (sae.threshold >= 0).all() and sae.threshold[5] == 0.2
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64, dtype=torch.float64))


def test_training_steps_learn_the_thresholds():
    """A few Adam steps: a large l0_coeff drives L0 down through the thresholds alone."""
    results = {}
    for coeff in (0.0, 0.05):
        torch.manual_seed(0)
        sae = JumpReLUSAE(16, 64, l0_coeff=coeff, bandwidth=0.05)
        x = torch.randn(256, 16)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            sae(x).loss.backward()
            sae.remove_parallel_decoder_grad()
            opt.step()
            sae.project_parameters()
        with torch.no_grad():
            results[coeff] = (float(sae(x).l0), float(sae.threshold.mean()))
    assert results[0.05][0] < 0.7 * results[0.0][0]
    assert results[0.05][1] > 0.1 > results[0.0][1]


def test_unknown_sparsity_is_named():
    with pytest.raises(ValueError, match="sae.sparsity"):
        JumpReLUSAE(4, 8, sparsity="l1")
