"""Paired statistics for discrepancy analysis: intervals, Wilcoxon, Holm, effect size, power limits.

Pure numpy/scipy (statsmodels for Holm). Every function is NaN-safe: where a statistic is undefined
(fewer than two pairs, all differences zero, zero variance) it returns NaN together with a short
reason instead of raising, so one sparse organ never stops the analysis of the others.

The paired difference is always ``compared - reference`` (e.g. ``PET_CT - CT``): for Dice and NSD a
negative difference means the compared view is worse, for HD95 a positive one does.

Small samples, stated once: the exact two-sided Wilcoxon signed-rank test on n non-zero differences
cannot give a p below ``2 / 2**n`` (every difference on one side), so with n = 4 no p is below
0.125 whatever the data. :func:`min_attainable_p`, :func:`holm_floor` and :func:`subjects_needed`
say so per comparison instead of leaving a column of ``p_holm = 1``. Intervals of a mean
(:func:`mean_ci`) are t intervals below :data:`BCA_MIN_N` pairs, where a bootstrap of a handful of
values is too narrow (n = 4 has 35 distinct resamples), and BCa bootstrap intervals from there on.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats as _sps

#: Pairs from which :func:`mean_ci` uses a BCa bootstrap instead of a t interval.
BCA_MIN_N = 10
#: Largest sample (zeros included) scipy tests by enumerating every sign pattern when there are ties
#: or zeros (without them it uses the exact null distribution, which enumeration equals);
#: :func:`wilcoxon_p` enumerates them itself up to there (scipy costs 4-10 ms a call, and the
#: analysis makes hundreds).
_ENUMERATE_MAX_N = 13


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> tuple[float, float, str]:
    """Percentile bootstrap confidence interval of the mean.

    Resamples ``values`` with replacement ``n_boot`` times with a ``numpy.random.default_rng(seed)``
    generator, so the same seed and values give the same interval. Too narrow for a handful of
    values: :func:`mean_ci` is what the tables use.

    Args:
        values: (N,) sample, e.g. paired differences; non-finite entries are dropped.
        n_boot: number of bootstrap resamples.
        seed: seed (or seed sequence) of the numpy Generator.
        level: confidence level in (0, 1).

    Returns:
        ``(low, high, reason)``; NaN bounds and a reason when N < 2.

    Raises:
        ValueError: if ``n_boot < 1`` or ``level`` is outside (0, 1).

    Example:
        >>> lo, hi, why = bootstrap_ci([0.1, 0.2, 0.3, 0.4], n_boot=500, seed=1)
        >>> bool(0.1 <= lo <= 0.25 <= hi <= 0.4), why
        (True, '')
    """
    _check_boot(n_boot, level, "bootstrap_ci")
    x = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan"), f"n={x.size} < 2: no confidence interval"
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi), ""


def _check_boot(n_boot: int, level: float, who: str) -> None:
    if n_boot < 1:
        raise ValueError(f"{who}: n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"{who}: level must be in (0, 1), got {level}")


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, str]:
    """Student t confidence interval of the mean: ``mean -/+ t_{n-1} * sd / sqrt(n)`` (sd with ddof=1).

    Args:
        values: (N,) sample; non-finite entries are dropped.
        level: confidence level in (0, 1).

    Returns:
        ``(low, high, reason)``; NaN bounds and a reason when N < 2. Zero spread gives the point.

    Example:
        >>> lo, hi, _ = t_interval([1.0, 2.0, 3.0])
        >>> round(lo, 4), round(hi, 4)
        (-0.4841, 4.4841)
    """
    x = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan"), f"n={x.size} < 2: no confidence interval"
    half = float(_sps.t.ppf(0.5 + level / 2.0, x.size - 1) * np.std(x, ddof=1) / np.sqrt(x.size))
    m = float(x.mean())
    return m - half, m + half, ""


def bca_interval(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> tuple[float, float, str]:
    """Bias-corrected and accelerated bootstrap interval of the mean (``scipy.stats.bootstrap``).

    Args:
        values: (N,) sample; non-finite entries are dropped.
        n_boot: resamples.
        seed: seed of the numpy Generator handed to scipy.
        level: confidence level in (0, 1).

    Returns:
        ``(low, high, reason)``; NaN and a reason when N < 2; the point when all values are equal
        (scipy's BCa is undefined there).
    """
    _check_boot(n_boot, level, "bca_interval")
    x = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan"), f"n={x.size} < 2: no confidence interval"
    if np.ptp(x) == 0.0:
        return float(x[0]), float(x[0]), ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's degenerate-data warning: the NaN says it
        res = _sps.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="BCa",
                             rng=np.random.default_rng(seed), vectorized=True)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return lo, hi, "" if np.isfinite(lo) and np.isfinite(hi) else "BCa interval undefined"


def ci_method_for(n: int) -> str:
    """The interval :func:`mean_ci` uses for ``n`` pairs: ``"t"`` or ``"BCa bootstrap"``."""
    return "t" if n < BCA_MIN_N else "BCa bootstrap"


def mean_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> tuple[float, float, str, str]:
    """Confidence interval of a mean that holds at small n: t below :data:`BCA_MIN_N` values, BCa above.

    Returns:
        ``(low, high, method, reason)``; ``method`` names the interval (:func:`ci_method_for`).
    """
    n = int(_finite(values).size)
    method = ci_method_for(n)
    lo, hi, why = t_interval(values, level) if method == "t" else bca_interval(values, n_boot, seed, level)
    return lo, hi, method, why


@lru_cache(maxsize=None)
def _sign_patterns(n: int) -> np.ndarray:
    """(2**n, n) every 0/1 sign pattern of n differences."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int64)


def wilcoxon_p(differences: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy's answer).

    Equals ``scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")``: zero
    differences are dropped, ties get mid-ranks. Up to 13 values scipy's p is that of every sign
    pattern of the non-zero differences (enumerated with ties or zeros, from the exact null
    distribution without); that enumeration is done here in integers (twice the mid-ranks), since
    scipy's machinery is slow. Above 13 values scipy is called.

    Args:
        differences: (N,) paired differences; non-finite entries are dropped.

    Returns:
        ``(p, reason)``; NaN and a reason when fewer than two pairs or no non-zero difference.

    Example:
        >>> p, why = wilcoxon_p([0.0, 0.0])
        >>> why
        'all differences are zero: no test'
        >>> wilcoxon_p([-0.3, -0.1, 0.0, -0.2])[0]
        0.25
    """
    d = _finite(differences)
    if d.size < 2:
        return float("nan"), f"n={d.size} < 2: no test"
    nz = d[d != 0]
    if nz.size == 0:
        return float("nan"), "all differences are zero: no test"
    if d.size <= _ENUMERATE_MAX_N:
        ranks2 = np.rint(2.0 * _sps.rankdata(np.abs(nz))).astype(np.int64)  # mid-ranks are halves
        null = _sign_patterns(nz.size) @ ranks2
        observed = int(ranks2[nz > 0].sum())
        p = 2.0 * min(np.mean(null <= observed), np.mean(null >= observed))
        return float(min(p, 1.0)), ""
    with warnings.catch_warnings():
        # scipy warns on small samples and ties; the p-value is still the documented one.
        warnings.simplefilter("ignore")
        res = _sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    return p, "" if np.isfinite(p) else "scipy returned no p-value"


def min_attainable_p(n_nonzero: int) -> float:
    """Smallest two-sided exact Wilcoxon p that ``n_nonzero`` non-zero differences can give: ``2 / 2**n``.

    Every difference on one side is the one most extreme sign pattern of the 2**n, on each tail.
    NaN when there is nothing to test (n < 1).

    Example:
        >>> min_attainable_p(4), min_attainable_p(6)
        (0.125, 0.03125)
    """
    n = int(n_nonzero)
    return float("nan") if n < 1 else float(min(1.0, 2.0 ** (1 - n)))


def holm_floor(min_ps: Sequence[float] | np.ndarray, n_tests: int | None = None) -> np.ndarray:
    """Lowest Holm-adjusted p each test of one family can reach, given each test's smallest raw p.

    Holm multiplies the family's smallest p by the number of tests m, and never adjusts a p below
    itself, so test i cannot go below ``max(min_p_i, m * min_j min_p_j)``. NaN entries (no test)
    stay NaN and do not count in m unless ``n_tests`` says otherwise.

    Args:
        min_ps: (K,) smallest attainable raw p per test (:func:`min_attainable_p`).
        n_tests: family size m; default the number of finite entries.

    Returns:
        (K,) lower bounds, capped at 1.

    Example:
        >>> holm_floor([0.125, 0.125, 0.0625]).tolist()
        [0.1875, 0.1875, 0.1875]
    """
    p = np.asarray(min_ps, dtype=np.float64).ravel()
    ok = np.isfinite(p)
    m = int(ok.sum()) if n_tests is None else int(n_tests)
    out = np.full(p.shape, np.nan)
    if ok.any():
        out[ok] = np.minimum(1.0, np.maximum(p[ok], m * p[ok].min()))
    return out


def holm_family(rows: Sequence[dict], alpha: float) -> None:
    """Holm across one family of test rows (each with ``p`` and ``min_attainable_p``), in place:
    ``p_holm``, ``significant`` (``p_holm < alpha``) and ``underpowered`` (even the smallest attainable
    p-values cannot reach ``alpha`` after Holm)."""
    adj = holm([r["p"] for r in rows])
    floor = holm_floor([r["min_attainable_p"] for r in rows])
    for r, q, f in zip(rows, adj, floor):
        r.update(p_holm=float(q), significant=bool(np.isfinite(q) and q < alpha),
                 underpowered=not (np.isfinite(f) and f < alpha))


def subjects_needed(n_tests: int = 1, alpha: float = 0.05) -> int:
    """Fewest non-zero paired differences with which a family of ``n_tests`` exact Wilcoxon tests can
    reach Holm-adjusted p < ``alpha``: the smallest n with ``n_tests * 2 / 2**n < alpha``.

    Example:
        >>> subjects_needed(1), subjects_needed(13)
        (6, 10)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"subjects_needed: alpha must be in (0, 1), got {alpha}")
    m = max(int(n_tests), 1)
    n = 1
    while m * min_attainable_p(n) >= alpha:
        n += 1
    return n


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control), by statsmodels' ``multipletests``.

    NaN entries (no test) stay NaN and do not count in the family size. statsmodels' Holm branch
    calls ``gc.collect()`` on every call, about a second in a process holding torch and Lightning;
    the call runs with the existing heap frozen (``gc.freeze``) so that collection only scans what
    is new, and the heap is unfrozen after (left alone when someone else froze it).

    Args:
        pvalues: (K,) raw p-values of one family (e.g. the organs of one model x pair x metric).

    Returns:
        (K,) adjusted p-values in the input order.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    frozen_here = gc.get_freeze_count() == 0
    if frozen_here:
        gc.freeze()
    try:
        out[ok] = multipletests(p[ok], method="holm")[1]
    finally:
        if frozen_here:
            gc.unfreeze()
    return out


def cohens_dz(differences: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """Paired effect size Cohen's d_z = mean(d) / sd(d) with the sample sd (ddof=1).

    Args:
        differences: (N,) paired differences; non-finite entries are dropped.

    Returns:
        ``(d_z, reason)``; NaN and a reason when N < 2 or the differences have zero spread
        (a constant shift has no finite standardised size).

    Example:
        >>> round(cohens_dz([1.0, 2.0, 3.0])[0], 6)
        2.0
    """
    d = _finite(differences)
    if d.size < 2:
        return float("nan"), f"n={d.size} < 2: no effect size"
    sd = float(np.std(d, ddof=1))
    # rounding leaves a tiny sd for equal values (e.g. 0.2 three times); treat it as zero
    if np.ptp(d) == 0.0 or sd <= 1e-12 * float(np.max(np.abs(d))):
        return float("nan"), "zero spread of differences: no effect size"
    return float(np.mean(d) / sd), ""


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison of a reference sample with a compared sample (same subjects).

    ``n`` counts the pairs, ``n_nonzero`` the non-zero differences (the Wilcoxon test's own n),
    ``n_negative``/``n_positive`` their signs; ``min_attainable_p`` is :func:`min_attainable_p` of
    ``n_nonzero`` and ``ci_method`` the interval of :func:`mean_ci` (empty when none was computed).
    """

    n: int
    mean_ref: float
    mean_cmp: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    effect_dz: float
    reason: str
    n_nonzero: int = 0
    n_negative: int = 0
    n_positive: int = 0
    min_attainable_p: float = float("nan")
    ci_method: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_comparison(
    reference: Sequence[float] | np.ndarray,
    compared: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> PairedResult:
    """Mean paired difference ``compared - reference`` with its interval, Wilcoxon p and d_z.

    Args:
        reference: (N,) values of the reference view, one per subject.
        compared: (N,) values of the compared view for the same subjects, in the same order.
        n_boot: bootstrap resamples for a BCa interval (:func:`mean_ci`); 0 computes no interval.
        seed: bootstrap seed.
        level: CI level.

    Returns:
        A :class:`PairedResult`; pairs with a non-finite value on either side are dropped first.

    Raises:
        ValueError: if the two samples differ in length.
    """
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(compared, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_comparison: samples differ in length ({a.size} vs {b.size})")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = b - a
    n = int(d.size)
    nan = float("nan")
    if n_boot > 0:
        lo, hi, method, why_ci = mean_ci(d, n_boot=n_boot, seed=seed, level=level)
    else:
        lo, hi, method, why_ci = nan, nan, "", ""
    p, why_p = wilcoxon_p(d)
    dz, why_dz = cohens_dz(d)
    reasons = list(dict.fromkeys(r for r in (why_ci, why_p, why_dz) if r))
    n_nonzero = int(np.count_nonzero(d))
    return PairedResult(
        n=n,
        mean_ref=float(a.mean()) if n else nan,
        mean_cmp=float(b.mean()) if n else nan,
        mean_diff=float(d.mean()) if n else nan,
        ci_low=lo,
        ci_high=hi,
        p=p,
        effect_dz=dz,
        reason="; ".join(reasons),
        n_nonzero=n_nonzero,
        n_negative=int(np.count_nonzero(d < 0)),
        n_positive=int(np.count_nonzero(d > 0)),
        min_attainable_p=min_attainable_p(n_nonzero),
        ci_method=method if n >= 2 else "",
    )
