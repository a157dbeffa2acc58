"""The headline: one organ-averaged paired difference per model x pair kind x metric, with its interval.

The primary endpoint is the organ-averaged paired Dice difference ``compared - reference``: per
organ the mean over subjects of ``cmp - ref`` (subjects with both views), averaged over organs (the
macro mean of ``discrepancy``). Its interval comes from a subject-clustered bootstrap: whole subjects
are resampled, with every organ of a subject kept together, because a subject's organs share its
anatomy, scan and failures and are not independent samples. A t interval of the subjects' own
organ averages (``t_ci_*``) stands beside it: at a handful of subjects a bootstrap has few distinct
resamples and comes out narrower than the t interval.

The test is the exact Wilcoxon signed-rank test of the subjects' organ-averaged differences, Holm-
corrected across the pair kinds of one model x metric; ``underpowered`` says when that family cannot
reach ``alpha`` with this many subjects whatever the data (``stats.holm_floor``).

As a check, a linear mixed model fitted by statsmodels on the same paired values,
``value ~ C(view) + C(organ)`` with a random intercept per subject (reference view as baseline): its
view coefficient is the organ-adjusted difference (equal to ``mean_diff`` when every subject has
every organ) with a model-based Wald interval. Fits that fail, sit on the boundary (no between-subject
variance) or warn are reported in ``mixed_note``, never raised.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..organs import PAIR_KINDS
from ..results import normalise, validate_results
from .discrepancy import DEFAULT_METRICS, CubeAxes, row_seed, subject_cube, worse
from .stats import BCA_MIN_N, holm_family, min_attainable_p, subjects_needed, t_interval, wilcoxon_p

HEADLINE_COLUMNS: tuple[str, ...] = (
    "model", "pair_kind", "ref_view", "cmp_view", "metric", "n_subjects", "n_organs", "mean_ref", "mean_cmp",
    "mean_diff", "ci_low", "ci_high", "ci_method", "t_ci_low", "t_ci_high", "k_worse", "n_worse_of",
    "organs_worse", "subjects_all_organs_worse", "p", "p_holm", "n_nonzero", "min_attainable_p",
    "underpowered", "subjects_needed", "mixed_coef", "mixed_ci_low", "mixed_ci_high", "mixed_p", "mixed_note",
    "sentence",
)
#: The primary endpoint's metric; the mixed-model check is fitted for it by default (a fit costs
#: ~0.1-0.5 s, too much for every metric inside the main job).
PRIMARY_METRIC = "dice"
CLUSTER_CI_METHOD = "subject-clustered bootstrap (percentile)"
METRIC_LABELS: dict[str, str] = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95", "assd": "ASSD"}
METRIC_UNITS: dict[str, str] = {"hd95": " mm", "assd": " mm"}


def cluster_bootstrap_means(diffs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The organ-averaged mean difference under subject weights (resample counts).

    Args:
        diffs: (S, O) paired differences per subject x organ, NaN where a pair is missing.
        weights: (B, S) how often each subject is drawn in each resample (ones: the estimate itself).

    Returns:
        (B,) per resample: the mean over organs of each organ's weighted mean over subjects (organs no
        drawn subject has are left out; NaN when none is left).
    """
    have = np.isfinite(diffs)
    num = weights @ np.where(have, diffs, 0.0)
    den = weights @ have.astype(np.float64)
    seen = den > 0
    organ_means = np.divide(num, den, out=np.zeros_like(num), where=seen)
    n_organs = seen.sum(axis=1)
    return np.divide(organ_means.sum(axis=1), n_organs, out=np.full(len(weights), np.nan), where=n_organs > 0)


def resample_weights(n_subjects: int, n_boot: int, seed: Any) -> np.ndarray:
    """(n_boot, n_subjects) float counts: how often each subject is drawn in each bootstrap resample."""
    idx = np.random.default_rng(seed).integers(0, n_subjects, size=(n_boot, n_subjects))
    counts = np.bincount((idx + n_subjects * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n_subjects)
    return counts.reshape(n_boot, n_subjects).astype(np.float64)


def cluster_bootstrap_ci(
    diffs: np.ndarray, n_boot: int = 2000, seed: int | Sequence[int] = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of :func:`cluster_bootstrap_means` over ``n_boot`` resamples of whole subjects.

    Args:
        diffs: (S, O) paired differences, NaN where missing.
        n_boot: resamples.
        seed: seed of ``numpy.random.default_rng``.
        level: confidence level.

    Returns:
        ``(low, high)``; NaN with fewer than two subjects.
    """
    s = diffs.shape[0]
    if s < 2 or n_boot < 1:
        return float("nan"), float("nan")
    stats = cluster_bootstrap_means(diffs, resample_weights(s, n_boot, seed))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


#: statsmodels' fit warnings, shortened for ``mixed_note`` (its optimizer retries are left out).
_FIT_WARNINGS: dict[str, str] = {
    "on the boundary": "MLE on the boundary",
    "Hessian matrix": "Hessian not positive definite",
    "failed to converge": "did not converge",
    "covariance is singular": "singular random-effects covariance",
    "Retrying": "",
}


def mixed_view_effect(long: pd.DataFrame, ref: str, level: float = 0.95) -> dict[str, Any]:
    """The view coefficient of ``value ~ C(view) + C(organ)`` with a random intercept per subject.

    Args:
        long: columns ``subject_id, organ, view, value`` (two views, ``ref`` the baseline).
        ref: the reference view.
        level: level of the Wald interval.

    Returns:
        ``{"mixed_coef", "mixed_ci_low", "mixed_ci_high", "mixed_p", "mixed_note"}``; NaN numbers and a
        note when the model cannot be fitted; warnings of the fit (convergence, boundary) go in the note.
    """
    nan = float("nan")
    out: dict[str, Any] = {"mixed_coef": nan, "mixed_ci_low": nan, "mixed_ci_high": nan, "mixed_p": nan,
                           "mixed_note": ""}
    n_groups = long["subject_id"].nunique()
    n_params = 2 + max(long["organ"].nunique() - 1, 0)
    if n_groups < 3:
        out["mixed_note"] = f"not fitted: {n_groups} subjects are too few groups for a random intercept"
        return out
    if len(long) <= n_params + 2:
        out["mixed_note"] = f"not fitted: {len(long)} values for {n_params} fixed effects"
        return out
    if long["value"].nunique() < 2:
        out["mixed_note"] = "not fitted: every value is the same"
        return out
    import statsmodels.formula.api as smf  # lazy: ~0.5 s to import, only the headline needs it

    formula = f"value ~ C(view, Treatment(reference={ref!r})) + C(organ)"
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = smf.mixedlm(formula, long, groups=long["subject_id"]).fit(reml=True, method=["powell", "bfgs"])
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, IndexError) as exc:
            out["mixed_note"] = f"fit failed: {type(exc).__name__}: {exc}"
            return out
    for w in caught:
        msg = str(w.message).split("\n")[0].rstrip(".")
        short = next((v for k, v in _FIT_WARNINGS.items() if k in msg), None)
        if short is None and issubclass(w.category, (UserWarning, RuntimeWarning)) and not msg.startswith("Retrying"):
            short = msg
        if short:
            notes.append(short)
    name = next((k for k in fit.params.index if k.startswith("C(view")), None)
    if name is None:
        out["mixed_note"] = "fit has no view coefficient"
        return out
    ci = fit.conf_int(alpha=1.0 - level).loc[name]
    out.update(mixed_coef=float(fit.params[name]), mixed_ci_low=float(ci.iloc[0]), mixed_ci_high=float(ci.iloc[1]),
               mixed_p=float(fit.pvalues[name]))
    if not fit.converged:
        notes.append("did not converge")
    group_var = float(np.asarray(fit.cov_re)[0, 0]) if np.size(fit.cov_re) else nan
    if np.isfinite(group_var) and group_var <= 1e-6 * max(float(fit.scale), 1e-300):
        notes.append("subject variance 0: the fit is least squares with organ effects")
    out["mixed_note"] = "; ".join(dict.fromkeys(notes))
    return out


def _fmt(value: float, metric: str) -> str:
    digits = 1 if metric in METRIC_UNITS else 2
    return f"{value:.{digits}f}"


def _interval_text(lo: float, hi: float, diff: float, metric: str) -> str:
    """``a to b`` in the words of the difference (sizes when it lies on one side), else signed."""
    if diff and np.sign(lo) == np.sign(hi) == np.sign(diff):
        a, b = sorted((abs(lo), abs(hi)))
        return f"{_fmt(a, metric)} to {_fmt(b, metric)}"
    return f"{'+' if lo >= 0 else '-'}{_fmt(abs(lo), metric)} to {'+' if hi >= 0 else '-'}{_fmt(abs(hi), metric)}"


def headline_sentence(row: Mapping[str, Any], level: float = 0.95, alpha: float = 0.05) -> str:
    """The plain-words headline of one :func:`headline_table` row.

    Example: "On PET_CT, unet_ct's Dice is 0.75 lower than on CT (95% CI 0.74 to 0.76, subject-clustered
    bootstrap; t interval 0.73 to 0.77 with 4 subjects; 13 of 13 organs worse on average, worse in 4 of 4
    subjects; underpowered: n=4 cannot reach p<0.05 after Holm, needs 8)".
    """
    metric, diff = str(row["metric"]), float(row["mean_diff"])
    label, unit = METRIC_LABELS.get(metric, metric), METRIC_UNITS.get(metric, "")
    if not np.isfinite(diff):
        return f"{row['model']}: no subject has both {row['ref_view']} and {row['cmp_view']} {label} values"
    way = "lower" if diff < 0 else ("higher" if diff > 0 else "no different")
    size = f"{_fmt(abs(diff), metric)}{unit} {way}" if diff else way
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    parts = []
    if np.isfinite(lo) and np.isfinite(hi):
        parts.append(f"{100 * level:g}% CI {_interval_text(lo, hi, diff, metric)}, subject-clustered bootstrap")
    n = int(row["n_worse_of"])
    t_lo, t_hi = float(row.get("t_ci_low", np.nan)), float(row.get("t_ci_high", np.nan))
    if n < BCA_MIN_N and np.isfinite(t_lo) and np.isfinite(t_hi):
        parts.append(f"t interval {_interval_text(t_lo, t_hi, diff, metric)} with {n} subjects")
    parts.append(f"{int(row['organs_worse'])} of {int(row['n_organs'])} organs worse on average, "
                 f"worse in {int(row['k_worse'])} of {n} subjects")
    if row.get("underpowered"):
        parts.append(f"underpowered: n={int(row['n_nonzero'])} cannot reach p<{alpha:g} after Holm, "
                     f"needs {int(row['subjects_needed'])} subjects")
    elif np.isfinite(float(row.get("p_holm", np.nan))):
        parts.append(f"Wilcoxon p={float(row['p']):.2g}, Holm p={float(row['p_holm']):.2g}")
    return f"On {row['cmp_view']}, {row['model']}'s {label} is {size} than on {row['ref_view']} ({'; '.join(parts)})"


def headline_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    pair_kinds: Mapping[str, tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
    mixed_metrics: Sequence[str] = (PRIMARY_METRIC,),
) -> pd.DataFrame:
    """One organ-averaged paired difference per model x pair kind x metric (see the module docstring).

    Args:
        df: results table.
        metrics: metric columns; absent ones are skipped.
        pair_kinds: ``{name: (ref_view, cmp_view)}``; default ``organs.PAIR_KINDS`` (a pair kind is
            reported for a model when the table holds both views for it).
        n_boot: subject-clustered bootstrap resamples (0: no interval).
        seed: base seed; each row draws from :func:`~.discrepancy.row_seed`.
        level: interval level.
        alpha: family-wise level of the Holm correction across pair kinds.
        mixed_metrics: metrics whose rows get the mixed-model check (others say so in ``mixed_note``).

    Returns:
        Frame with columns :data:`HEADLINE_COLUMNS`.
    """
    df = normalise(validate_results(df))
    pair_kinds = dict(PAIR_KINDS if pair_kinds is None else pair_kinds)
    axes = CubeAxes.of(df)
    rows: list[dict[str, Any]] = []
    for metric in [m for m in metrics if m in df.columns]:
        cube = subject_cube(df, metric, axes)
        for mi, model in enumerate(axes.models):
            model_views = set(df.loc[df["model"] == model, "view"])
            block = []
            for kind, (ref, cmp) in pair_kinds.items():
                if ref not in model_views or cmp not in model_views:
                    continue
                key = {"model": model, "pair_kind": kind, "ref_view": ref, "cmp_view": cmp, "metric": metric}
                values = cube[mi][..., [axes.views.index(ref), axes.views.index(cmp)]]
                block.append(_headline_row(values, axes, key, n_boot, seed, level, mixed_metrics))
            holm_family(block, alpha)
            needed = subjects_needed(max(len(block), 1), alpha)
            for r in block:
                r["subjects_needed"] = needed
                r["sentence"] = headline_sentence(r, level, alpha)
            rows.extend(block)
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def _headline_row(
    values: np.ndarray, axes: CubeAxes, key: dict[str, Any], n_boot: int, seed: int, level: float,
    mixed_metrics: Sequence[str],
) -> dict[str, Any]:
    """values: (subjects, organs, 2) of the reference and compared view (NaN: no value)."""
    nan = float("nan")
    model, kind, ref, metric = key["model"], key["pair_kind"], key["ref_view"], key["metric"]
    paired = np.isfinite(values).all(axis=2)
    subj, org = paired.any(axis=1), paired.any(axis=0)
    values = np.where(paired[..., None], values, np.nan)[subj][:, org]
    diffs = values[..., 1] - values[..., 0]
    n_subjects, n_organs = diffs.shape
    ones = np.ones((1, n_subjects))
    rec: dict[str, Any] = {**key, "n_subjects": n_subjects, "n_organs": n_organs}
    if n_subjects:
        rec["mean_ref"] = float(cluster_bootstrap_means(values[..., 0], ones)[0])
        rec["mean_cmp"] = float(cluster_bootstrap_means(values[..., 1], ones)[0])
        rec["mean_diff"] = float(cluster_bootstrap_means(diffs, ones)[0])
    else:
        rec.update(mean_ref=nan, mean_cmp=nan, mean_diff=nan)
    lo, hi = cluster_bootstrap_ci(diffs, n_boot, row_seed(seed, model, kind, metric, "headline"), level)
    rec.update(ci_low=lo, ci_high=hi, ci_method=CLUSTER_CI_METHOD if n_boot > 0 else "")
    have = np.isfinite(diffs)
    with np.errstate(invalid="ignore", divide="ignore"):
        subject_avg = np.where(have, diffs, 0.0).sum(axis=1) / have.sum(axis=1)  # every kept subject has a pair
        organ_avg = np.where(have, diffs, 0.0).sum(axis=0) / have.sum(axis=0)
    rec["t_ci_low"], rec["t_ci_high"], _ = t_interval(subject_avg, level)
    rec["k_worse"] = int(np.count_nonzero(worse(subject_avg, metric)))
    rec["n_worse_of"] = int(subject_avg.size)
    rec["organs_worse"] = int(np.count_nonzero(worse(organ_avg, metric)))
    rec["subjects_all_organs_worse"] = int(np.where(have, worse(diffs, metric), True).all(axis=1).sum())
    rec["p"], _ = wilcoxon_p(subject_avg)
    rec["n_nonzero"] = int(np.count_nonzero(subject_avg))
    rec["min_attainable_p"] = min_attainable_p(rec["n_nonzero"])
    if metric in mixed_metrics:
        si, oi = np.nonzero(have)
        subjects, organs = np.asarray(axes.subjects)[subj][si], np.asarray(axes.organs)[org][oi]
        long = pd.DataFrame({"subject_id": np.concatenate([subjects, subjects]), "organ": np.concatenate([organs, organs]),
                             "view": [ref] * len(si) + [key["cmp_view"]] * len(si),
                             "value": np.concatenate([values[si, oi, 0], values[si, oi, 1]])})
        rec.update(mixed_view_effect(long, ref, level))
    else:
        rec.update(mixed_coef=nan, mixed_ci_low=nan, mixed_ci_high=nan, mixed_p=nan,
                   mixed_note=f"not fitted: the mixed-model check runs for {', '.join(mixed_metrics) or 'no metric'}")
    return rec
