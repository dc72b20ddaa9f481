"""Tests for labcore.stats: values checked against hand-computed or analytic answers."""

import itertools
import math

import numpy as np
import pytest

from labcore.stats import (
    bootstrap_ci,
    cohens_d,
    compare_groups,
    compare_pairwise_groups,
    conclusion,
    describe,
    describe_pairs,
    mann_whitney_greater,
    pair_values,
    pairwise_bootstrap_ci,
    smallest_attainable_p,
    unit_means,
    unit_permutation_test,
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
    # delta > 0 and p < alpha, but a stricter alpha flips the conclusion: 5 vs 5 cannot reach
    # p < 0.001 (floor 1/252), so it says so instead of "no signal"
    strict = compare_groups([0.62, 0.64, 0.61, 0.66, 0.63], baseline, alpha=0.001)
    assert strict["conclusion"] == "insufficient_seeds"
    clear = compare_groups([0.62, 0.64, 0.61, 0.66, 0.63], baseline, alpha=0.005)
    assert clear["conclusion"] == "training_signal_present"
    one_low = compare_groups([0.62, 0.64, 0.61, 0.29, 0.63], baseline, alpha=0.005)
    assert one_low["conclusion"] == "no_training_signal"


def test_compare_groups_degenerate_does_not_crash():
    res = compare_groups([0.5], [0.5])
    assert res["conclusion"] == "insufficient_seeds" and res["p_min"] == 0.5   # 1 vs 1: p can never be < 0.5
    assert math.isnan(res["cohens_d"]) and res["delta"] == 0.0
    res0 = compare_groups([0.4, 0.4, 0.4], [0.0, 0.0, 0.0])
    assert math.isnan(res0["ratio"]) and math.isnan(res0["cohens_d"])
    # 3 vs 3: p floor is 0.05, so even total separation is not "no signal" but too few seeds to tell
    assert res0["conclusion"] == "insufficient_seeds" and res0["p_min"] == pytest.approx(0.05)


# ---------------------------------------------------------------- the design's floor and the verdict

@pytest.mark.parametrize("n, expected", [(2, 1 / 6), (3, 1 / 20), (4, 1 / 70), (5, 1 / 252), (8, 1 / 12870)])
def test_smallest_attainable_p_is_one_over_the_number_of_assignments(n, expected):
    assert smallest_attainable_p(n, n) == pytest.approx(expected)
    # and the exact tests reach it on total separation, not below
    low, high = np.arange(n) * 0.01, 1 + np.arange(n) * 0.01
    assert mann_whitney_greater(high, low).p == pytest.approx(expected)
    assert unit_permutation_test(separated(n, n), n).p == pytest.approx(expected)
    assert smallest_attainable_p(0, 4) == 1.0


def test_conclusion_says_insufficient_seeds_when_p_below_alpha_is_impossible():
    assert conclusion(0.1, 0.05, 0.05, 0.05) == "insufficient_seeds"       # 3 vs 3 seeds
    assert conclusion(-0.1, 0.9, 0.05, 0.05) == "insufficient_seeds"       # the design, not the data, decides
    assert conclusion(0.1, 1 / 70, 1 / 70, 0.05) == "training_signal_present"
    assert conclusion(0.1, 0.2, 1 / 70, 0.05) == "no_training_signal"
    assert conclusion(-0.1, 0.01, 1 / 70, 0.05) == "no_training_signal"
    assert conclusion(float("nan"), float("nan"), 1 / 70, 0.05) == "no_training_signal"


# ---------------------------------------------------------------- values between pairs of units

def separated(n_treatment, n_baseline, within_t=0.34, within_b=0.30, cross=0.30, noise=1e-3, seed=0):
    """A pairwise matrix: treatment units alike at `within_t`, baseline units at `within_b`."""
    rng = np.random.default_rng(seed)
    m = n_treatment + n_baseline
    arr = np.full((m, m), cross)
    arr[:n_treatment, :n_treatment] = within_t
    arr[n_treatment:, n_treatment:] = within_b
    arr = arr + rng.normal(0, noise, (m, m))
    return (arr + arr.T) / 2


def test_pair_values_and_unit_means():
    arr = np.array([[9.0, 1.0, 2.0], [1.0, 9.0, 3.0], [2.0, 3.0, 9.0]])   # the diagonal is never a pair
    assert pair_values(arr).tolist() == [1.0, 2.0, 3.0]
    assert unit_means(arr).tolist() == [1.5, 2.0, 2.5]
    assert unit_means(arr).mean() == pytest.approx(pair_values(arr).mean())
    with pytest.raises(ValueError, match="symmetric"):
        pair_values([[0, 1], [2, 0]])
    with pytest.raises(ValueError, match="non-finite"):
        pair_values([[0, float("nan")], [float("nan"), 0]])


def test_permutation_test_matches_enumeration_by_hand():
    rng = np.random.default_rng(3)
    arr = rng.uniform(size=(7, 7))
    arr = (arr + arr.T) / 2
    def stat(t):
        b = [i for i in range(7) if i not in t]
        return (np.mean([arr[i, j] for i, j in itertools.combinations(t, 2)])
                - np.mean([arr[i, j] for i, j in itertools.combinations(b, 2)]))
    all_stats = [stat(t) for t in itertools.combinations(range(7), 3)]
    observed = stat((0, 1, 2))
    res = unit_permutation_test(arr, 3)
    assert res.statistic == pytest.approx(observed) and res.exact
    assert res.p == pytest.approx(np.mean([s >= observed - 1e-12 for s in all_stats]))


def test_permutation_test_identical_groups_and_edges():
    assert unit_permutation_test(np.full((10, 10), 0.3), 5).p == 1.0     # every assignment ties: no evidence
    # baseline more alike than treatment: the most extreme assignment the other way
    assert unit_permutation_test(separated(4, 4, within_t=0.2), 4).p == 1.0
    res = unit_permutation_test(separated(1, 4), 1)                       # one treatment unit has no pair
    assert math.isnan(res.statistic) and math.isnan(res.p) and res.p_min == pytest.approx(0.2)


def test_permutation_test_samples_assignments_when_there_are_too_many():
    res = unit_permutation_test(separated(9, 9), 9, n_resamples=999, seed=1)   # C(18, 9) = 48620
    assert not res.exact and res.p == pytest.approx(1 / 1000) and res.p_min == pytest.approx(1 / 1000)
    assert unit_permutation_test(separated(9, 9), 9, n_resamples=999, seed=1) == res   # seeded


def test_permutation_over_units_holds_its_level_where_a_test_over_pairs_does_not():
    """Units with their own level (a unit that agrees poorly lowers all its pairs) and no group
    difference: the permutation test rejects at about alpha; a Mann-Whitney test over the pairs,
    which takes them as independent, rejects several times as often."""
    rng = np.random.default_rng(1)
    n, sims, perm, pairs = 5, 300, 0, 0
    iu = np.triu_indices(n, 1)
    for _ in range(sims):
        level = rng.normal(0, 1, 2 * n)
        noise = rng.normal(0, 0.3, (2 * n, 2 * n))
        arr = level[:, None] + level[None, :] + (noise + noise.T) / 2
        perm += unit_permutation_test(arr, n).p < 0.05
        pairs += mann_whitney_greater(arr[:n, :n][iu], arr[n:, n:][iu]).p < 0.05
    assert perm / sims <= 0.08          # nominal 0.05; binomial sd over 300 runs is 0.013
    assert pairs / sims >= 3 * 0.05


def test_pairwise_bootstrap_resamples_units():
    assert all(math.isnan(v) for v in pairwise_bootstrap_ci(separated(2, 0), n_resamples=100))   # one pair
    assert pairwise_bootstrap_ci(np.full((4, 4), 0.3), n_resamples=200) == pytest.approx((0.3, 0.3))
    # one unit unlike the others: resampling units moves all four of its pairs at once, so the CI is
    # much wider than one from resampling the ten pairs as if independent
    arr = np.full((5, 5), 0.5)
    arr[0, 1:] = arr[1:, 0] = 0.1
    low, high = pairwise_bootstrap_ci(arr, n_resamples=4000, seed=0)
    lo_pairs, hi_pairs = bootstrap_ci(pair_values(arr), n_resamples=4000, seed=0)
    assert low <= pair_values(arr).mean() <= high
    assert high - low > 1.5 * (hi_pairs - lo_pairs)
    assert pairwise_bootstrap_ci(arr, n_resamples=500, seed=2) == pairwise_bootstrap_ci(arr, n_resamples=500, seed=2)


def test_describe_pairs():
    d = describe_pairs(separated(5, 0, noise=0.0))
    assert (d["n_units"], d["n_pairs"]) == (5, 10)
    assert d["mean"] == pytest.approx(0.34) and d["unit_means"] == pytest.approx([0.34] * 5)
    assert d["ci_low"] == pytest.approx(0.34) and d["ci_high"] == pytest.approx(0.34)
    one = describe_pairs(np.zeros((1, 1)))
    assert one["n_pairs"] == 0 and math.isnan(one["mean"]) and one["unit_means"] == []


def test_compare_pairwise_groups_verdicts():
    present = compare_pairwise_groups(separated(5, 5), 5)
    assert present["conclusion"] == "training_signal_present"
    assert present["p"] == pytest.approx(1 / 252) and present["p_min"] == pytest.approx(1 / 252)
    assert present["delta"] == pytest.approx(0.04, abs=2e-3)
    assert present["ratio"] == pytest.approx(0.34 / 0.30, rel=0.01)
    assert present["treatment"]["n_pairs"] == 10 and present["cohens_d"] > 5
    assert present["treatment"]["ci_low"] <= present["treatment"]["mean"] <= present["treatment"]["ci_high"]
    # three seeds each: total separation gives p = 0.05, which can never be < 0.05
    few = compare_pairwise_groups(separated(3, 3), 3)
    assert few["p"] == pytest.approx(0.05) and few["conclusion"] == "insufficient_seeds"
    same = compare_pairwise_groups(np.full((8, 8), 0.3), 4)
    assert same["p"] == 1.0 and same["delta"] == 0.0 and same["conclusion"] == "no_training_signal"
    below = compare_pairwise_groups(separated(4, 4, within_t=0.2), 4)
    assert below["delta"] < 0 and below["conclusion"] == "no_training_signal"
