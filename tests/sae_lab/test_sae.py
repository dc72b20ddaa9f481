import pytest
import torch

from sae_lab.sae import build_sae


def batch(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_family_has_l0_k(arch):
    torch.manual_seed(0)
    sae = build_sae(arch, 16, 64, k=5)
    out = sae(batch())
    assert float(out.l0) == pytest.approx(5, abs=1e-6)


def test_topk_encode_is_per_example():
    torch.manual_seed(0)
    sae = build_sae("topk", 16, 64, k=5)
    x = batch()
    torch.testing.assert_close(sae.encode(x)[:3], sae.encode(x[:3]))
    assert ((sae.encode(x) > 0).sum(1) <= 5).all()


def test_decoder_constraint():
    torch.manual_seed(0)
    sae = build_sae("topk", 16, 64, k=5)
    sae(batch()).loss.backward()
    sae.remove_parallel_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_b_dec_init_from_data():
    sae = build_sae("relu", 16, 32)
    x = batch() + 7
    sae.init_b_dec(x)
    torch.testing.assert_close(sae.b_dec.data, x.mean(0))


def test_batchtopk_threshold_makes_inference_per_example():
    torch.manual_seed(0)
    sae = build_sae("batchtopk", 16, 64, k=4)
    for s in range(5):
        sae(batch(seed=s))
    assert sae.threshold > 0
    sae.eval()
    x = batch(seed=9)
    torch.testing.assert_close(sae.encode(x)[:2], sae.encode(x[:2]))


def test_auxk_gets_gradient_when_latents_are_dead():
    torch.manual_seed(0)
    sae = build_sae("topk", 16, 64, k=4, dead_after_tokens=1, fast=False)
    x = batch()
    sae.update_dead_tracking(torch.zeros(64, dtype=torch.bool), 10)  # everything dead
    with torch.no_grad():
        sae.b_enc.fill_(1.0)   # positive pre-activations so dead latents can fire in AuxK
    out = sae(x)
    assert out.aux_loss > 0
    out.aux_loss.backward()
    assert sae.W_dec.grad.abs().sum() > 0


def test_unknown_architecture():
    with pytest.raises(ValueError, match="sae.architecture"):
        build_sae("gated", 4, 8)
