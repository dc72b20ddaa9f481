"""Tests for labcore.stats: values checked against hand-computed or analytic answers."""

import math

import numpy as np
import pytest

from labcore.stats import (
    bootstrap_ci,
    cohens_d,
    compare_groups,
    describe,
    mann_whitney_greater,
)


# ---------------------------------------------------------------- bootstrap_ci

def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(10.0, 2.0, size=10)
    large = rng.normal(10.0, 2.0, size=1000)
    lo_s, hi_s = bootstrap_ci(small, n_resamples=5000, seed=0)
    lo_l, hi_l = bootstrap_ci(large, n_resamples=5000, seed=0)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    # CI width scales like 1/sqrt(n): 100x more data -> ~10x narrower; demand at least 5x.
    assert (hi_l - lo_l) * 5 < (hi_s - lo_s)
    # and the large-n width is close to the normal-theory width 2 * 1.96 * s / sqrt(n)
    expected = 2 * 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (hi_l - lo_l) == pytest.approx(expected, rel=0.15)


def test_bootstrap_ci_seeded_and_custom_stat():
    x = np.random.default_rng(0).normal(size=20)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    # a stat without an `axis` keyword goes through the per-resample path
    lo, hi = bootstrap_ci(x, stat=lambda v: float(np.max(v)), n_resamples=500)
    assert lo <= hi <= x.max()
    lo_m, hi_m = bootstrap_ci(x, stat=np.median, n_resamples=2000)
    assert lo_m <= np.median(x) <= hi_m


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bootstrap_ci([5.0]))
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, float("nan")])


# ---------------------------------------------------------------- mann_whitney_greater

def test_mann_whitney_separated_and_reversed():
    low = [0.10, 0.11, 0.12, 0.13, 0.14]
    high = [0.50, 0.52, 0.53, 0.55, 0.60]
    u, p = mann_whitney_greater(high, low)
    assert u == 25.0                      # every high beats every low: n_a * n_b
    assert p == pytest.approx(1 / math.comb(10, 5))   # exact test, most extreme arrangement
    assert p < 0.01
    u_rev, p_rev = mann_whitney_greater(low, high)
    assert u_rev == 0.0
    assert p_rev > 0.5


def test_mann_whitney_edge_cases():
    u, p = mann_whitney_greater([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert u == 4.5 and p >= 0.5          # all ties: no evidence at all
    assert all(math.isnan(v) for v in mann_whitney_greater([], [1.0, 2.0]))
    # three vs three can never reach p < 0.05 (documented floor of 1/20)
    assert mann_whitney_greater([7, 8, 9], [1, 2, 3]).p == pytest.approx(0.05)
    # ties must not make it anti-conservative (scipy's normal approximation gives 0.023 and 0.067)
    assert mann_whitney_greater([0.4, 0.4, 0.4], [0.0, 0.0, 0.0]).p == pytest.approx(0.05)
    assert mann_whitney_greater([1.0], [0.0, 0.0, 0.0, 0.0]).p == pytest.approx(0.2)


def test_mann_whitney_exact_ties_matches_scipy_permutation():
    from scipy.stats import PermutationMethod, mannwhitneyu

    rng = np.random.default_rng(0)
    a = np.round(rng.normal(0.5, 1.0, size=7), 1)   # rounding creates ties
    b = np.round(rng.normal(0.0, 1.0, size=6), 1)
    ref = mannwhitneyu(a, b, alternative="greater", method=PermutationMethod(n_resamples=np.inf))
    u, p = mann_whitney_greater(a, b)
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue)


# ---------------------------------------------------------------- cohens_d

def test_cohens_d_analytic():
    assert cohens_d([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)
    assert cohens_d([4, 5, 6], [1, 2, 3]) == pytest.approx(3.0)
    # unequal variances: var_a = 1, var_b = 4, n = 3 each -> s_p = sqrt((2*1 + 2*4) / 4) = sqrt(2.5)
    assert cohens_d([1, 2, 3], [0, 2, 4]) == pytest.approx(0.0)
    assert cohens_d([3, 4, 5], [0, 2, 4]) == pytest.approx(2.0 / math.sqrt(2.5))


def test_cohens_d_undefined_is_nan():
    assert math.isnan(cohens_d([1.0], [2.0]))              # no degrees of freedom
    assert math.isnan(cohens_d([1.0, 1.0], [2.0, 2.0]))    # zero pooled SD
    assert math.isnan(cohens_d([], [1.0, 2.0]))
    # n=1 in one group is fine when the other group has variance
    assert cohens_d([3.0], [0.0, 2.0]) == pytest.approx((3.0 - 1.0) / math.sqrt(2.0))


# ---------------------------------------------------------------- describe

def test_describe_values():
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4
    assert d["mean"] == pytest.approx(2.5)
    assert d["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert d["median"] == pytest.approx(2.5)
    assert (d["min"], d["max"]) == (1.0, 4.0)
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert set(d) == {"mean", "std", "median", "min", "max", "n", "ci_low", "ci_high"}


def test_describe_n1_and_empty():
    d1 = describe([0.3])
    assert d1["n"] == 1 and d1["mean"] == 0.3 and d1["min"] == d1["max"] == 0.3
    assert math.isnan(d1["std"]) and math.isnan(d1["ci_low"]) and math.isnan(d1["ci_high"])
    d0 = describe([])
    assert d0["n"] == 0 and math.isnan(d0["mean"])


# ---------------------------------------------------------------- compare_groups

def test_compare_groups_signal_present():
    treatment = [0.62, 0.64, 0.61, 0.66, 0.63]
    baseline = [0.30, 0.31, 0.29, 0.30, 0.32]
    res = compare_groups(treatment, baseline)
    assert res["conclusion"] == "training_signal_present"
    assert res["delta"] == pytest.approx(np.mean(treatment) - np.mean(baseline))
    assert res["ratio"] == pytest.approx(np.mean(treatment) / np.mean(baseline))
    assert res["p"] < 0.05 and res["U"] == 25.0
    assert res["cohens_d"] > 5
    assert res["treatment"]["n"] == 5 and res["baseline"]["n"] == 5


def test_compare_groups_no_signal_both_ways():
    baseline = [0.30, 0.31, 0.29, 0.30, 0.32]
    # treatment below baseline: delta < 0 -> no signal, however "significant" the other direction is
    below = compare_groups([0.10, 0.11, 0.12, 0.13, 0.14], baseline)
    assert below["delta"] < 0 and below["conclusion"] == "no_training_signal"
    # delta > 0 but overlapping samples: p not small -> no signal
    overlap = compare_groups([0.29, 0.33, 0.30, 0.31, 0.32], baseline)
    assert overlap["delta"] > 0 and overlap["p"] >= 0.05
    assert overlap["conclusion"] == "no_training_signal"
    # delta > 0 and p < alpha, but a stricter alpha flips the conclusion
    strict = compare_groups([0.62, 0.64, 0.61, 0.66, 0.63], baseline, alpha=0.001)
    assert strict["conclusion"] == "no_training_signal"


def test_compare_groups_degenerate_does_not_crash():
    res = compare_groups([0.5], [0.5])
    assert res["conclusion"] == "no_training_signal"
    assert math.isnan(res["cohens_d"]) and res["delta"] == 0.0
    res0 = compare_groups([0.4, 0.4, 0.4], [0.0, 0.0, 0.0])
    assert math.isnan(res0["ratio"]) and math.isnan(res0["cohens_d"])
    assert res0["conclusion"] == "no_training_signal"   # 3 vs 3: p floor is 0.05
