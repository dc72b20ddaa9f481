"""Small, study-agnostic statistics: bootstrap CIs, a one-sided Mann-Whitney test, Cohen's d,
and a "treatment vs baseline" comparison (e.g. trained models vs random ones of the same shape)
used to decide whether a metric exceeds its baseline at all.

Two kinds of data, two comparisons:

* one value per unit (seed / run): `compare_groups` (Mann-Whitney, bootstrap over values);
* one value per *pair* of units (a similarity between two runs): `compare_pairwise_groups`. Pairs
  share units (each of n units is in n - 1 pairs), so pairs are not independent samples and a test
  or bootstrap over pairs overstates certainty. Here the unit is the unit of inference: a
  permutation test over unit labels (`unit_permutation_test`) and a bootstrap over units
  (`pairwise_bootstrap_ci`).

Both conclude with the same words (`conclusion`): "insufficient_seeds" when the design can never
reach p < alpha, else "training_signal_present" iff delta > 0 and p < alpha, else
"no_training_signal".

Conventions (so results from different studies read the same way):

* Inputs are 1-D sequences of finite numbers (one value per seed / run). Non-finite values raise
  `ValueError` rather than being dropped silently: a NaN metric usually means a diverged run, and
  hiding it would bias the summary.
* Quantities that are undefined for the given sample (std of one value, a CI from one value,
  Cohen's d with zero pooled variance, ...) are returned as `float("nan")` instead of raising.
  Each function's docstring says when.
* Only numpy and scipy are used; scipy.stats is imported lazily so `import labcore.stats` is cheap.
* Pairwise data come as a symmetric [m, m] matrix of values between units; the diagonal is ignored.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

NAN = float("nan")

# Largest number of group assignments C(n_a + n_b, n_a) enumerated for an exact tie-aware
# Mann-Whitney p (12870 for 8 vs 8); beyond that the normal approximation is adequate.
_EXACT_PERMUTATIONS = 20_000

# Bound on n_resamples * n elements materialised at once by `bootstrap_ci` (~64 MiB of float64).
_BOOTSTRAP_BATCH_ELEMENTS = 8_000_000


def _as_1d(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    """Return `values` as a finite float64 1-D array, or raise a clear ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per run), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values: {arr[~np.isfinite(arr)][:5].tolist()}")
    return arr


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[..., float] = np.mean,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `stat(values)`.

    Draw `n_resamples` samples of size n with replacement, evaluate `stat` on each, and return the
    (alpha/2, 1 - alpha/2) percentiles of those statistics, alpha = 1 - confidence.

    `stat` is called as `stat(samples, axis=1)` on a [batch, n] array when it accepts an `axis`
    keyword (numpy reductions do), otherwise once per resample.

    Returns (nan, nan) when n < 2: every resample of one value is that value, so the interval would
    have zero width and say nothing about uncertainty. Zero-variance data with n >= 2 gives a
    zero-width interval at the common value, which is the correct percentile answer.
    """
    arr = _as_1d(values)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = arr.size
    if n < 2:
        return NAN, NAN

    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples, dtype=np.float64)
    # Resample in batches so large n * n_resamples never materialises at once.
    batch = max(1, _BOOTSTRAP_BATCH_ELEMENTS // n)
    for start in range(0, n_resamples, batch):
        stop = min(start + batch, n_resamples)
        samples = arr[rng.integers(0, n, size=(stop - start, n))]
        try:
            stats[start:stop] = stat(samples, axis=1)
        except TypeError:  # stat has no `axis` keyword: evaluate resample by resample
            stats[start:stop] = [stat(row) for row in samples]

    alpha = 1.0 - confidence
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


class MannWhitneyResult(NamedTuple):
    """U statistic of the first sample and the one-sided p-value; unpacks as `u, p = ...`."""

    u: float
    p: float


def mann_whitney_greater(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> MannWhitneyResult:
    """One-sided Mann-Whitney U test, H1: values of `a` tend to be larger than values of `b`.

    U = #{(i, j): a_i > b_j} + 0.5 #{(i, j): a_i == b_j}, computed by scipy.stats.mannwhitneyu
    (alternative="greater"). scipy's "auto" method is exact for small tie-free samples but falls
    back to the normal approximation whenever there are ties, which is anti-conservative for a few
    seeds (3 vs 3 fully separated with ties gives p = 0.023 < the attainable exact 0.05). So with
    ties and at most `_EXACT_PERMUTATIONS` group assignments we use the exact permutation
    distribution of U instead. Returns (nan, nan) if either sample is empty.

    Note the floor on p for few seeds: with n_a = n_b = 3 the smallest attainable one-sided p is
    1 / C(6, 3) = 0.05, so p < 0.05 needs at least 4 runs per group (or 5 vs 3).
    """
    a_arr, b_arr = _as_1d(a, "a"), _as_1d(b, "b")
    if a_arr.size == 0 or b_arr.size == 0:
        return MannWhitneyResult(NAN, NAN)
    from scipy.stats import mannwhitneyu

    has_ties = np.unique(np.concatenate([a_arr, b_arr])).size < a_arr.size + b_arr.size
    if has_ties and math.comb(a_arr.size + b_arr.size, a_arr.size) <= _EXACT_PERMUTATIONS:
        return _mann_whitney_exact_greater(a_arr, b_arr)
    res = mannwhitneyu(a_arr, b_arr, alternative="greater")
    return MannWhitneyResult(float(res.statistic), float(res.pvalue))


def _mann_whitney_exact_greater(a: np.ndarray, b: np.ndarray) -> MannWhitneyResult:
    """Exact tie-aware one-sided Mann-Whitney test by enumerating every group assignment.

    With midranks r of the pooled sample, U_a = sum of a's ranks - n_a (n_a + 1) / 2. Under H0
    every choice of which n_a pooled values form "a" is equally likely, so
    p = #{assignments with U >= U_observed} / C(n_a + n_b, n_a).
    """
    from scipy.stats import rankdata

    pooled = np.concatenate([a, b])
    ranks = rankdata(pooled)  # midranks for ties
    offset = a.size * (a.size + 1) / 2
    u_obs = ranks[: a.size].sum() - offset
    splits = np.array(list(itertools.combinations(range(pooled.size), a.size)), dtype=np.intp)
    u_all = ranks[splits].sum(axis=1) - offset
    # Midranks are multiples of 0.5, so sums are exact in float64; the epsilon is only a guard.
    p = float(np.mean(u_all >= u_obs - 1e-9))
    return MannWhitneyResult(float(u_obs), p)


def _sum_sq_dev(x: np.ndarray) -> float:
    """sum (x - mean)^2, exactly 0 for a constant group (incl. n == 1).

    np.var of [0.4, 0.4, 0.4] is ~1e-33, not 0, because the mean is rounded; without the exact
    check a constant-vs-constant comparison would give an absurd d of ~1e16 instead of nan.
    """
    if x.size < 2 or np.ptp(x) == 0.0:
        return 0.0
    return float(((x - x.mean()) ** 2).sum())


def cohens_d(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cohen's d with the pooled standard deviation (ddof = 1 in each group).

        d = (mean(a) - mean(b)) / s_p,
        s_p = sqrt(((n_a - 1) var(a) + (n_b - 1) var(b)) / (n_a + n_b - 2))

    Returns nan when it is undefined: an empty group, n_a + n_b < 3 (no degrees of freedom for
    s_p), or s_p == 0 (both groups constant; the ratio is 0/0 or x/0).
    """
    a_arr, b_arr = _as_1d(a, "a"), _as_1d(b, "b")
    na, nb = a_arr.size, b_arr.size
    if na == 0 or nb == 0 or na + nb < 3:
        return NAN
    ss_a, ss_b = _sum_sq_dev(a_arr), _sum_sq_dev(b_arr)
    pooled_sd = math.sqrt((ss_a + ss_b) / (na + nb - 2))
    if pooled_sd == 0.0:
        return NAN
    return float((a_arr.mean() - b_arr.mean()) / pooled_sd)


def describe(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Summary of one group: mean, std (ddof 1), median, min, max, n, ci_low, ci_high.

    The CI is the percentile bootstrap CI of the mean (`bootstrap_ci`). For n == 0 every statistic
    is nan (n is 0); for n == 1, std, ci_low and ci_high are nan.
    """
    arr = _as_1d(values)
    n = int(arr.size)
    if n == 0:
        return dict(mean=NAN, std=NAN, median=NAN, min=NAN, max=NAN, n=0, ci_low=NAN, ci_high=NAN)
    ci_low, ci_high = bootstrap_ci(arr, np.mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return dict(
        mean=float(arr.mean()),
        std=float(arr.std(ddof=1)) if n > 1 else NAN,
        median=float(np.median(arr)),
        min=float(arr.min()),
        max=float(arr.max()),
        n=n,
        ci_low=ci_low,
        ci_high=ci_high,
    )


# ---- values between pairs of units ------------------------------------------------------------

def _as_pair_matrix(matrix: Sequence[Sequence[float]] | np.ndarray, name: str = "matrix") -> np.ndarray:
    """`matrix` as a float64 [m, m] array with a zero diagonal, or a clear ValueError.

    The diagonal (a unit with itself) is never a pair, so it is ignored whatever it holds; the
    off-diagonal values must be finite and symmetric (the value of a pair does not depend on order).
    """
    arr = np.array(matrix, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square [units, units] matrix, got shape {arr.shape}")
    np.fill_diagonal(arr, 0.0)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values between distinct units")
    if not np.allclose(arr, arr.T, rtol=1e-9, atol=1e-12):
        raise ValueError(f"{name} is not symmetric: a pair's value must not depend on its order")
    return arr


def pair_values(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The values of the m (m - 1) / 2 distinct pairs, in `itertools.combinations` order."""
    arr = _as_pair_matrix(matrix)
    return arr[np.triu_indices(arr.shape[0], k=1)]


def unit_means(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per unit, the mean of its m - 1 pairs. Their mean equals the mean over pairs (each pair is
    counted once by each of its two units); empty for m < 2."""
    arr = _as_pair_matrix(matrix)
    m = arr.shape[0]
    return arr.sum(axis=1) / (m - 1) if m >= 2 else np.empty(0)


def pairwise_bootstrap_ci(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean pairwise value, resampling *units*, not pairs.

    Each resample draws m units with replacement and averages the values of every pair of draws
    that are two different units (a unit drawn twice has no pair with itself). Resampling pairs
    instead would treat the m (m - 1) / 2 pairs as independent although each unit is in m - 1 of
    them, and give intervals far too narrow when units differ (a unit that agrees poorly lowers
    all its pairs at once). Resamples that draw a single unit m times have no pair and are left
    out (probability m^(1-m): 1/9 for 3 units, 1/64 for 4).

    Returns (nan, nan) for m < 3 units: two units have one pair, so every resample is that value.
    """
    arr = _as_pair_matrix(matrix)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    m = arr.shape[0]
    if m < 3:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    means = []
    batch = max(1, _BOOTSTRAP_BATCH_ELEMENTS // (m * m))
    for start in range(0, n_resamples, batch):
        draws = rng.integers(0, m, size=(min(batch, n_resamples - start), m))
        # the zero diagonal makes every same-unit position contribute 0 to the sum; count the rest
        sums = arr[draws[:, :, None], draws[:, None, :]].sum(axis=(1, 2))
        pairs = (draws[:, :, None] != draws[:, None, :]).sum(axis=(1, 2))
        means.append(sums[pairs > 0] / pairs[pairs > 0])
    alpha = 1.0 - confidence
    low, high = np.percentile(np.concatenate(means), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


class PermutationResult(NamedTuple):
    """statistic: mean over treatment pairs - mean over baseline pairs; p: one-sided (treatment
    larger); p_min: the smallest p this design can give; exact: every assignment enumerated."""

    statistic: float
    p: float
    p_min: float
    exact: bool


def _within_means(arr: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean value over the pairs inside each mask's group; masks is [K, m] of 0/1 with k >= 2 ones."""
    k = masks[0].sum()
    return 0.5 * np.einsum("ki,ij,kj->k", masks, arr, masks) / (k * (k - 1) / 2)


def unit_permutation_test(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    n_treatment: int,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PermutationResult:
    """One-sided permutation test over unit labels for values between pairs of units.

    `matrix` holds the value for every pair of the m units of both groups, cross pairs (a
    treatment unit with a baseline unit) included; the first `n_treatment` units are the treatment.
    Statistic: mean over pairs within the treatment - mean over pairs within the baseline.
    H0: the m units are exchangeable (e.g. trained models are no more alike than random ones), so
    every choice of which n_treatment units are "treatment" is equally likely and
    p = #{assignments with statistic >= observed} / #assignments. This is exact however strongly
    pairs that share a unit depend on each other; the unit, not the pair, is what is permuted.

    All C(m, n_treatment) assignments are enumerated when there are at most `_EXACT_PERMUTATIONS`
    (8 vs 8 units: 12870); beyond, `n_resamples` random assignments give
    p = (1 + #{>= observed}) / (1 + n_resamples). p_min is `smallest_attainable_p` (or 1 /
    (1 + n_resamples) when sampled, if larger). Either group below 2 units has no pair: the
    statistic and p are nan.
    """
    arr = _as_pair_matrix(matrix)
    m = arr.shape[0]
    n_baseline = m - n_treatment
    if not 0 <= n_treatment <= m:
        raise ValueError(f"n_treatment must be in [0, {m}], got {n_treatment}")
    p_min = smallest_attainable_p(n_treatment, n_baseline)
    if n_treatment < 2 or n_baseline < 2:
        return PermutationResult(NAN, NAN, p_min, True)
    observed = np.zeros((1, m))
    observed[0, :n_treatment] = 1.0
    statistic = float(_within_means(arr, observed)[0] - _within_means(arr, 1.0 - observed)[0])
    exact = math.comb(m, n_treatment) <= _EXACT_PERMUTATIONS
    if exact:
        chosen = np.array(list(itertools.combinations(range(m), n_treatment)), dtype=np.intp)
        masks = np.zeros((chosen.shape[0], m))
        np.put_along_axis(masks, chosen, 1.0, axis=1)
    else:
        rng = np.random.default_rng(seed)
        masks = np.zeros((n_resamples, m))
        for row in masks:
            row[rng.permutation(m)[:n_treatment]] = 1.0
    stats = _within_means(arr, masks) - _within_means(arr, 1.0 - masks)
    # equal statistics summed in another order can differ in the last bits; they must count as ties
    at_least = int(np.sum(stats >= statistic - 1e-12 * max(1.0, float(np.abs(arr).max()))))
    if exact:
        p = at_least / masks.shape[0]
    else:
        p = (1 + at_least) / (1 + n_resamples)
        p_min = max(p_min, 1.0 / (1 + n_resamples))
    return PermutationResult(statistic, float(p), p_min, exact)


def describe_pairs(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Summary of the pairs among one group's units.

    mean: mean over pairs (= mean of the unit means); ci_low, ci_high: `pairwise_bootstrap_ci`
    (units resampled); n_units, n_pairs; std (ddof 1), median, min, max of the pair values, which
    describe the pairs but are not sample statistics of independent values; unit_means: per unit,
    the mean of its pairs. With fewer than 2 units every number is nan.
    """
    arr = _as_pair_matrix(matrix)
    values = arr[np.triu_indices(arr.shape[0], k=1)]
    base = dict(n_units=int(arr.shape[0]), n_pairs=int(values.size))
    if values.size == 0:
        return dict(base, mean=NAN, std=NAN, median=NAN, min=NAN, max=NAN, ci_low=NAN, ci_high=NAN, unit_means=[])
    ci_low, ci_high = pairwise_bootstrap_ci(arr, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return dict(base, mean=float(values.mean()), std=float(values.std(ddof=1)) if values.size > 1 else NAN,
                median=float(np.median(values)), min=float(values.min()), max=float(values.max()),
                ci_low=ci_low, ci_high=ci_high, unit_means=[float(v) for v in unit_means(arr)])


def compare_pairwise_groups(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    n_treatment: int,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Are the treatment units (e.g. trained models) more alike among themselves than the
    baseline units (e.g. random models of the same shape) are among themselves?

    `matrix`: the value for every pair of the m units, cross pairs included (the test needs them);
    the first `n_treatment` units are the treatment. The unit is the unit of inference throughout.

    Returns a dict with
      treatment, baseline : `describe_pairs` of each group's own pairs (bootstrap CIs over units)
      delta               : mean over treatment pairs - mean over baseline pairs (the test statistic)
      ratio               : the ratio of those means (nan if the baseline mean is 0 or undefined)
      p, p_min, exact     : `unit_permutation_test`, H1 treatment pairs larger
      cohens_d            : of the unit means (each unit's mean over its pairs), pooled SD: an effect
                            size in units of seed-to-seed spread, description only
      alpha, conclusion   : `conclusion(delta, p, p_min, alpha)`
      test                : the test in words
    """
    arr = _as_pair_matrix(matrix)
    t, b = arr[:n_treatment, :n_treatment], arr[n_treatment:, n_treatment:]
    t_desc = describe_pairs(t, n_resamples=n_resamples, seed=seed)
    b_desc = describe_pairs(b, n_resamples=n_resamples, seed=seed)
    delta = t_desc["mean"] - b_desc["mean"]
    ratio = t_desc["mean"] / b_desc["mean"] if b_desc["mean"] != 0 else NAN
    test = unit_permutation_test(arr, n_treatment, n_resamples=n_resamples, seed=seed)
    return dict(
        treatment=t_desc,
        baseline=b_desc,
        delta=float(delta),
        ratio=float(ratio),
        p=test.p,
        p_min=test.p_min,
        exact=test.exact,
        cohens_d=cohens_d(t_desc["unit_means"], b_desc["unit_means"]),
        alpha=alpha,
        conclusion=conclusion(delta, test.p, test.p_min, alpha),
        test=("one-sided permutation test over unit labels ("
              + ("all assignments" if test.exact else f"{n_resamples} random assignments")
              + "), statistic: mean within-treatment pair - mean within-baseline pair"),
    )


def smallest_attainable_p(n_treatment: int, n_baseline: int) -> float:
    """1 / C(n_treatment + n_baseline, n_treatment): the smallest one-sided p any test that treats
    every assignment of the group labels to the units as equally likely can give.

    Holds for the exact Mann-Whitney test and for `unit_permutation_test`: at best only the
    observed assignment is as extreme as itself. 3 vs 3 units: 0.05; 4 vs 4: 0.0143; 5 vs 5:
    0.00397; 8 vs 8: 7.8e-5. An empty group leaves one assignment, so p cannot go below 1.
    """
    if n_treatment < 0 or n_baseline < 0:
        raise ValueError(f"group sizes must be >= 0, got {n_treatment}, {n_baseline}")
    return 1.0 / math.comb(n_treatment + n_baseline, n_treatment)


def conclusion(delta: float, p: float, p_min: float, alpha: float) -> str:
    """The verdict of a treatment-vs-baseline comparison, in one of three words.

    "insufficient_seeds" when p_min >= alpha: the design could not reach p < alpha whatever the
    data, so "no signal" would be a statement about the design, not the data (it wins over the
    other two, also when delta <= 0). Else "training_signal_present" iff delta > 0 and p < alpha,
    and "no_training_signal" otherwise (also when delta or p is nan).
    """
    if p_min >= alpha:
        return "insufficient_seeds"
    # comparisons with nan are False, so an undefined delta or p falls through to "no signal"
    return "training_signal_present" if delta > 0 and p < alpha else "no_training_signal"


def compare_groups(
    treatment: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
) -> dict:
    """Does a metric measured on the treatment group (e.g. trained models) exceed its baseline
    (e.g. random models of the same shape)?

    Returns a dict with
      treatment, baseline : `describe` of each group
      delta               : mean(treatment) - mean(baseline)
      ratio               : mean(treatment) / mean(baseline)  (nan if mean(baseline) == 0 or undefined)
      U, p                : one-sided Mann-Whitney U test, H1 treatment > baseline
      cohens_d            : (mean(treatment) - mean(baseline)) / pooled SD
      p_min               : smallest attainable p for these group sizes (`smallest_attainable_p`)
      alpha               : the significance level used
      conclusion          : `conclusion(delta, p, p_min, alpha)`: "insufficient_seeds",
                            "training_signal_present" or "no_training_signal".

    Every value is one independent unit (seed / run). For values between *pairs* of units use
    `compare_pairwise_groups`.
    """
    t_arr, b_arr = _as_1d(treatment, "treatment"), _as_1d(baseline, "baseline")
    t_desc, b_desc = describe(t_arr), describe(b_arr)
    delta = t_desc["mean"] - b_desc["mean"]
    # nan propagates through the division; only a zero baseline mean needs guarding.
    ratio = t_desc["mean"] / b_desc["mean"] if b_desc["mean"] != 0 else NAN
    u, p = mann_whitney_greater(t_arr, b_arr)
    p_min = smallest_attainable_p(t_arr.size, b_arr.size)
    return dict(
        treatment=t_desc,
        baseline=b_desc,
        delta=float(delta),
        ratio=float(ratio),
        U=u,
        p=p,
        cohens_d=cohens_d(t_arr, b_arr),
        p_min=p_min,
        alpha=alpha,
        conclusion=conclusion(delta, p, p_min, alpha),
    )
