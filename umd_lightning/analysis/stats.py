"""Paired statistics for discrepancy analysis: bootstrap CI, Wilcoxon, Holm, effect size.

Pure numpy/scipy. Every function is NaN-safe: where a statistic is undefined (fewer than two
pairs, all differences zero, zero variance) it returns NaN together with a short reason instead of
raising, so one sparse organ never stops the analysis of the others.

The paired difference is always ``compared - reference`` (e.g. ``PET_CT - CT``): for Dice and NSD a
negative difference means the compared view is worse, for HD95 a positive one does.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _sps


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
    generator, so the same seed and values give the same interval.

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
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    x = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan"), f"n={x.size} < 2: no confidence interval"
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi), ""


def wilcoxon_p(differences: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    Calls ``scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")`` (zero
    differences are dropped, scipy picks the exact or normal-approximation method).

    Args:
        differences: (N,) paired differences; non-finite entries are dropped.

    Returns:
        ``(p, reason)``; NaN and a reason when fewer than two pairs or no non-zero difference.

    Example:
        >>> p, why = wilcoxon_p([0.0, 0.0])
        >>> why
        'all differences are zero: no test'
    """
    d = _finite(differences)
    if d.size < 2:
        return float("nan"), f"n={d.size} < 2: no test"
    if not np.any(d != 0):
        return float("nan"), "all differences are zero: no test"
    with warnings.catch_warnings():
        # scipy warns on small samples and ties; the p-value is still the documented one.
        warnings.simplefilter("ignore")
        res = _sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    p = float(res.pvalue)
    return p, "" if np.isfinite(p) else "scipy returned no p-value"


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control).

    With the m finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``. NaN entries stay NaN and do not count in m.

    Args:
        pvalues: (K,) raw p-values of one family (e.g. the organs of one model x pair x metric).

    Returns:
        (K,) adjusted p-values in the input order.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
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
    """One paired comparison of a reference sample with a compared sample (same subjects)."""

    n: int
    mean_ref: float
    mean_cmp: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p: float
    effect_dz: float
    reason: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_comparison(
    reference: Sequence[float] | np.ndarray,
    compared: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    level: float = 0.95,
) -> PairedResult:
    """Mean paired difference ``compared - reference`` with bootstrap CI, Wilcoxon p and d_z.

    Args:
        reference: (N,) values of the reference view, one per subject.
        compared: (N,) values of the compared view for the same subjects, in the same order.
        n_boot: bootstrap resamples for the CI.
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
    lo, hi, why_ci = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    p, why_p = wilcoxon_p(d)
    dz, why_dz = cohens_dz(d)
    reasons = list(dict.fromkeys(r for r in (why_ci, why_p, why_dz) if r))
    nan = float("nan")
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
    )
