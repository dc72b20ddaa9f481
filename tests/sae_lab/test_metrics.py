import torch

from sae_lab.metrics import ReconstructionStats, explained_variance
from sae_lab.sae import fvu


def data(n=500, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64) + 5


def test_mean_predictor_has_zero_ev():
    x = data()
    assert abs(explained_variance(x, x.mean(0, keepdim=True).expand_as(x))) < 1e-12


def test_perfect_reconstruction_has_ev_one_and_zero_predictor_is_negative():
    x = data()
    assert explained_variance(x, x) == 1.0
    assert explained_variance(x, torch.zeros_like(x)) < 0  # worse than the mean: the offset is 5


def test_streaming_equals_one_shot_float64_reference():
    x = data()
    x_hat = x + 0.3 * data(seed=1)
    ref = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    stats = ReconstructionStats()
    for a, b in zip(x.split(37), x_hat.split(37)):
        stats.update(a.float(), b.float())
    m = stats.compute()
    assert abs(m["explained_variance"] - float(ref)) < 1e-6
    assert abs(m["fvu"] - (1 - float(ref))) < 1e-6
    assert abs(m["mse"] - float(((x - x_hat) ** 2).mean())) < 1e-6


def test_l0_dead_and_dense_fractions():
    z = torch.zeros(10, 4)
    z[:, 0] = 1.0          # fires always -> dense
    z[0, 1] = 2.0          # fires 10% -> not dense at threshold 0.1
    stats = ReconstructionStats(d_sae=4)
    x = data(10, 3)
    stats.update(x, x, z)
    m = stats.compute(dense_threshold=0.1)
    assert m["l0"] == 1.1
    assert m["dead_fraction_eval"] == 0.5
    assert m["dense_fraction"] == 0.25


def test_batch_fvu_loss_matches_metric():
    x = data()
    x_hat = x * 0.9
    assert abs(float(fvu(x, x_hat)) - (1 - explained_variance(x, x_hat))) < 1e-10


def test_batch_fvu_gradients_match_autograd_of_the_formula():
    # fvu's hand-written backward, against autograd through the plain formula (float64), for
    # x_hat alone and for both inputs (the total variance moves with x)
    torch.manual_seed(0)
    x = torch.randn(9, 4, dtype=torch.float64) + 2
    x_hat = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fvu, (x, x_hat))
    assert torch.autograd.gradcheck(fvu, (x.clone().requires_grad_(), x_hat))
    formula = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    torch.testing.assert_close(fvu(x, x_hat), formula, atol=1e-14, rtol=0)
