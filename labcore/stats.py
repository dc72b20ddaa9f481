"""Small, study-agnostic statistics: bootstrap CIs, a one-sided Mann-Whitney test, Cohen's d,
and a "treatment vs baseline" comparison (e.g. trained models vs random ones of the same shape)
used to decide whether a metric exceeds its baseline at all.

Conventions (so results from different studies read the same way):

* Inputs are 1-D sequences of finite numbers (one value per seed / run). Non-finite values raise
  `ValueError` rather than being dropped silently: a NaN metric usually means a diverged run, and
  hiding it would bias the summary.
* Quantities that are undefined for the given sample (std of one value, a CI from one value,
  Cohen's d with zero pooled variance, ...) are returned as `float("nan")` instead of raising.
  Each function's docstring says when.
* Only numpy and scipy are used; scipy.stats is imported lazily so `import labcore.stats` is cheap.
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
      alpha               : the significance level used
      conclusion          : "training_signal_present" iff delta > 0 and p < alpha,
                            else "no_training_signal" (also when p or delta is nan).
    """
    t_arr, b_arr = _as_1d(treatment, "treatment"), _as_1d(baseline, "baseline")
    t_desc, b_desc = describe(t_arr), describe(b_arr)
    delta = t_desc["mean"] - b_desc["mean"]
    # nan propagates through the division; only a zero baseline mean needs guarding.
    ratio = t_desc["mean"] / b_desc["mean"] if b_desc["mean"] != 0 else NAN
    u, p = mann_whitney_greater(t_arr, b_arr)
    # Comparisons with nan are False, so undefined delta / p fall through to "no_training_signal".
    present = bool(delta > 0 and p < alpha)
    return dict(
        treatment=t_desc,
        baseline=b_desc,
        delta=float(delta),
        ratio=float(ratio),
        U=u,
        p=p,
        cohens_d=cohens_d(t_arr, b_arr),
        alpha=alpha,
        conclusion="training_signal_present" if present else "no_training_signal",
    )
