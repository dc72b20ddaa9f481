import numpy as np

from labcore.probe import LogisticProbe, cross_validated_accuracy


def test_probe_separates_separable_classes_and_not_shuffled_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 2] - 0.5 * x[:, 4] > 0).astype(int)
    probe = LogisticProbe.fit(x[:200], y[:200], seed=0)
    assert probe.accuracy(x[200:], y[200:]) > 0.95
    assert probe.logits(x[:3]).shape == (3, 2)
    assert cross_validated_accuracy(x, y, folds=5) > 0.95
    assert 0.3 < cross_validated_accuracy(x, rng.permutation(y), folds=5) < 0.7


def test_probe_is_seeded_and_leaves_the_global_rng_alone():
    import torch
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    torch.manual_seed(123)
    a = LogisticProbe.fit(x, y, seed=7, epochs=20)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = LogisticProbe.fit(x, y, seed=7, epochs=20)
    assert torch.equal(a.weight, b.weight) and torch.equal(torch.rand(1), after)


def test_a_common_scale_does_not_magnify_a_feature_that_barely_varied():
    rng = np.random.default_rng(2)
    x = np.c_[rng.normal(size=(200, 3)), 1e-6 * rng.normal(size=200)]   # feature 3: almost constant
    y = (x[:, 0] > 0).astype(int)
    moved = x[:5].copy()
    moved[:, 3] += 0.1                          # a small move along the quiet feature
    common = LogisticProbe.fit(x, y, seed=0, per_feature_scale=False)
    per_feature = LogisticProbe.fit(x, y, seed=0)
    assert np.abs(common.logits(moved) - common.logits(x[:5])).max() < 0.5
    assert np.abs(per_feature.logits(moved) - per_feature.logits(x[:5])).max() > 10
