"""Discrepancy tables from a results table: paired view differences, per-view summaries,
generalisation gap and empty-mask-policy sensitivity.

All functions take the results table (one row per case x organ, see ``umd_lightning.results.REQUIRED_COLUMNS``) and
never re-run a model.

Conventions, stated once:

- A paired difference is ``compared - reference`` for a pair kind ``(reference, compared)`` of
  ``organs.PAIR_KINDS`` (e.g. ``PET_CT - CT``), over the subjects that have a finite value in both
  views. A subject with several cases of one view (repeat sessions) contributes their mean.
- Rows whose metric is NaN (``both_empty``, ``not_predicted``, ``failed``, and
  ``missed``/``false_positive`` under the ``exclude`` policy) drop out of means and pairs; they are
  counted in :func:`view_summary`.
- "Headline" means are macro means: the mean over organs of each organ's mean over cases.
- Failure: an evaluable row (status ``ok``, ``missed`` or ``false_positive``) with Dice < 0.1 or a
  one-sided empty status, so the rate does not depend on the empty policy.
- Small n (see ``stats``): each paired row says how many differences are non-zero (the test's own n),
  the smallest p that n allows, whether Holm across the row's family can reach ``alpha`` at all
  (``underpowered``), in how many subjects the compared view is worse, and whether both views failed
  (differences of zero that mean "failed twice", not "no difference").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from ..organs import PAIR_KINDS, VIEWS
from ..results import EMPTY_POLICIES, STATUSES, normalise, organ_order, validate_results
from .stats import holm_family, paired_comparison

Metric = Literal["dice", "hd95", "nsd", "assd"]
EmptyPolicy = Literal["worst", "exclude"]

DEFAULT_METRICS: tuple[str, ...] = ("dice", "hd95", "nsd")
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "nsd": True, "hd95": False, "assd": False}
#: Statuses whose rows can be compared (``results.STATUSES`` holds them all).
EVALUABLE: tuple[str, ...] = ("ok", "missed", "false_positive")
ONE_SIDED_EMPTY: tuple[str, ...] = ("missed", "false_positive")
FAILURE_DICE = 0.1

DISCREPANCY_COLUMNS: tuple[str, ...] = (
    "model", "pair_kind", "ref_view", "cmp_view", "organ", "metric", "n", "mean_ref", "mean_cmp",
    "mean_diff", "ci_low", "ci_high", "ci_method", "p", "p_holm", "significant", "effect_dz", "dz_flag",
    "cmp_worse", "n_nonzero", "min_attainable_p", "underpowered", "k_worse", "n_compared",
    "sign_consistent", "both_failed", "reason",
)
#: d_z is flagged (``dz_flag``) below this many non-zero differences.
DZ_MIN_N = 5


def row_seed(seed: int, *key: str) -> list[int]:
    """A bootstrap seed for one table row, stable across runs and independent of row order.

    Analysing several models together gives each row the interval it gets when analysed alone.
    """
    return [int(seed), zlib.crc32("|".join(key).encode())]


def present_views(df: pd.DataFrame) -> list[str]:
    """Views in the table, in ``organs.VIEWS`` order (unknown ones after)."""
    seen = list(pd.unique(df["view"].astype(str)))
    return [v for v in VIEWS if v in seen] + [v for v in seen if v not in VIEWS]


def worse(diff: np.ndarray | float, metric: str) -> np.ndarray | bool:
    """Whether a difference ``compared - reference`` of ``metric`` means the compared view is worse."""
    d = np.asarray(diff, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = d < 0 if HIGHER_IS_BETTER.get(metric, True) else d > 0
    return bool(out) if out.ndim == 0 else out


def failed_rows(status: Sequence[str] | np.ndarray, dice: np.ndarray, failure_dice: float = FAILURE_DICE) -> np.ndarray:
    """Per row, a failure: evaluable and (one-sided empty or Dice < ``failure_dice``)."""
    s = np.asarray(status, dtype=str)
    with np.errstate(invalid="ignore"):
        return np.isin(s, EVALUABLE) & (np.isin(s, ONE_SIDED_EMPTY) | (np.asarray(dice, np.float64) < failure_dice))


@dataclass(frozen=True)
class CubeAxes:
    """The axes of a subject cube: (model, subject, organ, view), in a canonical order.

    Subjects are sorted by id, so a model's rows (and their seeded bootstrap) do not depend on the
    table's row order or on the other models in it.
    """

    models: tuple[str, ...]
    subjects: tuple[str, ...]
    organs: tuple[str, ...]
    views: tuple[str, ...]

    @classmethod
    def of(cls, df: pd.DataFrame) -> "CubeAxes":
        return cls(tuple(pd.unique(df["model"])), tuple(sorted(pd.unique(df["subject_id"]))),
                   tuple(organ_order(df)), tuple(present_views(df)))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.models), len(self.subjects), len(self.organs), len(self.views)


def _fill_cube(values: pd.Series, axes: CubeAxes, fill: Any, dtype: Any) -> np.ndarray:
    """A (model, subject, organ, view) array from a Series indexed by model, organ, subject_id, view."""
    cube = np.full(axes.shape, fill, dtype=dtype)
    if values.empty:
        return cube
    idx = values.index
    pos = [{v: i for i, v in enumerate(keys)} for keys in (axes.models, axes.subjects, axes.organs, axes.views)]
    codes = [np.fromiter((p.get(v, -1) for v in idx.get_level_values(level)), np.int64, len(idx))
             for p, level in zip(pos, ("model", "subject_id", "organ", "view"))]
    keep = np.all([c >= 0 for c in codes], axis=0)
    cube[tuple(c[keep] for c in codes)] = values.to_numpy()[keep]
    return cube


def subject_cube(df: pd.DataFrame, metric: str, axes: CubeAxes | None = None) -> np.ndarray:
    """(model, subject, organ, view) array of ``metric``, each cell the mean over that view's cases of the
    subject (repeat sessions); NaN where a subject has no finite value. Axes: ``CubeAxes.of(df)``."""
    axes = CubeAxes.of(df) if axes is None else axes
    d = df[np.isfinite(df[metric].to_numpy(np.float64))]
    means = d.groupby(["model", "organ", "subject_id", "view"], sort=False)[metric].mean()
    return _fill_cube(means, axes, np.nan, np.float64)


def failure_cube(df: pd.DataFrame, axes: CubeAxes | None = None, failure_dice: float = FAILURE_DICE) -> np.ndarray:
    """(model, subject, organ, view) bool array: every evaluable case of that cell failed (see
    :func:`failed_rows`); False where there is no evaluable case."""
    axes = CubeAxes.of(df) if axes is None else axes
    ev = df[df["status"].isin(EVALUABLE)]
    failed = pd.Series(failed_rows(ev["status"], ev["dice"].to_numpy(np.float64), failure_dice), index=ev.index)
    per_cell = failed.groupby([ev["model"], ev["organ"], ev["subject_id"], ev["view"]], sort=False).all()
    return _fill_cube(per_cell, axes, False, bool)


def subject_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per model x organ x subject, the metric of each view (mean over that view's cases).

    Args:
        df: results table.
        metric: a metric column, e.g. ``dice``.

    Returns:
        Frame indexed by ``(model, organ, subject_id)`` with one column per view; NaN where a subject
        has no finite value in that view.
    """
    d = df[np.isfinite(df[metric].to_numpy(dtype=np.float64))]
    if d.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["model", "organ", "subject_id"]))
    v = d.groupby(["model", "organ", "subject_id", "view"], sort=False)[metric].mean()
    return v.unstack("view")


def discrepancy_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    pair_kinds: Mapping[str, tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired view differences per model x pair kind x organ x metric.

    Each row: n subjects with both views, mean of each view over those subjects, mean difference
    ``cmp - ref`` with an interval that holds at small n (``ci_method``: t below
    ``stats.BCA_MIN_N`` pairs, BCa bootstrap seeded per row with :func:`row_seed` from there), the
    Wilcoxon signed-rank p, the Holm-adjusted p across the organs of one model x pair kind x metric,
    Cohen's d_z and a reason when a statistic is undefined. And what the sample allows:
    ``n_nonzero`` (the test's own n), ``min_attainable_p`` (``2 / 2**n_nonzero``), ``underpowered``
    (the lowest Holm p the family allows this row, ``stats.holm_floor``, is not below ``alpha``),
    ``k_worse`` of ``n_compared`` subjects worse in the compared view, ``sign_consistent`` (every
    subject's difference non-zero and on one side), ``both_failed`` (every compared subject failed in
    both views, so zero differences mean "failed twice"), ``dz_flag`` (d_z not to be read: fewer than
    :data:`DZ_MIN_N` non-zero differences, or a subject failed in both views).

    Args:
        df: results table.
        metrics: metric columns to compare; absent ones are skipped.
        pair_kinds: ``{name: (ref_view, cmp_view)}``; default ``organs.PAIR_KINDS``. A pair kind is
            reported for a model only when the table holds both of its views for that model.
        n_boot: bootstrap resamples of a BCa interval; 0 skips the intervals (NaN bounds).
        seed: base bootstrap seed.
        level: CI level.
        alpha: threshold on the Holm p for the ``significant`` and ``underpowered`` columns.

    Returns:
        Frame with columns ``DISCREPANCY_COLUMNS``.
    """
    df = normalise(validate_results(df))
    pair_kinds = dict(PAIR_KINDS if pair_kinds is None else pair_kinds)
    axes = CubeAxes.of(df)
    failed = failure_cube(df, axes)
    rows: list[dict[str, Any]] = []
    for metric in [m for m in metrics if m in df.columns]:
        cube = subject_cube(df, metric, axes)
        for mi, model in enumerate(axes.models):
            model_views = set(df.loc[df["model"] == model, "view"])
            for kind, (ref, cmp) in pair_kinds.items():
                if ref not in model_views or cmp not in model_views:
                    continue
                ri, ci = axes.views.index(ref), axes.views.index(cmp)
                block = [_paired_row(cube[mi, :, oi, ri], cube[mi, :, oi, ci], failed[mi, :, oi, ri] & failed[mi, :, oi, ci],
                                     {"model": model, "pair_kind": kind, "ref_view": ref, "cmp_view": cmp,
                                      "organ": organ, "metric": metric},
                                     n_boot, row_seed(seed, model, kind, organ, metric), level)
                         for oi, organ in enumerate(axes.organs)]
                holm_family(block, alpha)
                rows.extend(block)
    return pd.DataFrame(rows, columns=list(DISCREPANCY_COLUMNS))


def _paired_row(ref: np.ndarray, cmp: np.ndarray, both_failed: np.ndarray, key: dict[str, Any], n_boot: int,
                seed: Sequence[int], level: float) -> dict[str, Any]:
    """One discrepancy row from the subjects' values of two views (NaN: no value) and their failures."""
    metric = key["metric"]
    paired = np.isfinite(ref) & np.isfinite(cmp)
    a, b, both = ref[paired], cmp[paired], both_failed[paired]
    res = paired_comparison(a, b, n_boot=n_boot, seed=seed, level=level)
    rec = {**key, **res.as_dict()}
    k_worse = int(np.count_nonzero(worse(b - a, metric)))
    n_both = int(both.sum())
    rec.update(
        k_worse=k_worse, n_compared=res.n, both_failed=bool(res.n and n_both == res.n),
        sign_consistent=res.n >= 2 and res.n_nonzero == res.n and k_worse in (0, res.n),
        cmp_worse=bool(np.isfinite(res.mean_diff) and worse(res.mean_diff, metric)),
        dz_flag=bool(np.isfinite(res.effect_dz) and (res.n_nonzero < DZ_MIN_N or n_both > 0)),
    )
    notes = [rec["reason"]] if rec["reason"] else []
    if res.n == 0:
        notes = ["no subject with both views"]
    if n_both:
        notes.append(f"both views failed in {n_both} of {res.n} subjects")
    if rec["dz_flag"]:
        notes.append(f"d_z not interpretable: {res.n_nonzero} non-zero differences"
                     + (", failures in both views" if n_both else ""))
    rec["reason"] = "; ".join(notes)
    return rec


def _describe(values: np.ndarray, prefix: str) -> dict[str, float | int]:
    x = values[np.isfinite(values)]
    if x.size == 0:
        nan = float("nan")
        return {f"{prefix}_n": 0, f"{prefix}_mean": nan, f"{prefix}_median": nan,
                f"{prefix}_q1": nan, f"{prefix}_q3": nan, f"{prefix}_iqr": nan}
    q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return {f"{prefix}_n": int(x.size), f"{prefix}_mean": float(x.mean()), f"{prefix}_median": float(med),
            f"{prefix}_q1": float(q1), f"{prefix}_q3": float(q3), f"{prefix}_iqr": float(q3 - q1)}


def _status_counts(status: pd.Series, dice: np.ndarray, failure_dice: float) -> dict[str, float | int]:
    s = status.to_numpy(dtype=str)
    counts = {f"n_{k}": int(np.sum(s == k)) for k in STATUSES}
    evaluable = np.isin(s, EVALUABLE)
    failed = failed_rows(s, dice, failure_dice)
    n_eval = int(evaluable.sum())
    n_present = counts["n_ok"] + counts["n_missed"]
    counts["n_rows"] = int(s.size)
    counts["failure_rate"] = float(failed.sum() / n_eval) if n_eval else float("nan")
    counts["missed_rate"] = float(counts["n_missed"] / n_present) if n_present else float("nan")
    return counts


def view_summary(
    df: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    failure_dice: float = FAILURE_DICE,
) -> pd.DataFrame:
    """Per model x view x organ (plus organ ``all``): metric mean, median, quartiles and rates.

    Rates: ``failure_rate`` = failures / evaluable rows (see module docstring);
    ``missed_rate`` = ``missed`` / rows whose reference holds the organ (``ok`` + ``missed``).

    Args:
        df: results table.
        metrics: metric columns to describe; absent ones are skipped.
        failure_dice: Dice below which an evaluable row is a failure.

    Returns:
        One row per model x view x organ with ``<metric>_{n,mean,median,q1,q3,iqr}``, ``n_<status>``,
        ``n_rows``, ``failure_rate``, ``missed_rate``.
    """
    df = normalise(validate_results(df))
    metrics = [m for m in metrics if m in df.columns]
    organs = organ_order(df)
    rows: list[dict[str, Any]] = []
    for model in pd.unique(df["model"]):
        for view in present_views(df[df["model"] == model]):
            sel = df[(df["model"] == model) & (df["view"] == view)]
            for organ in [*organs, "all"]:
                sub = sel if organ == "all" else sel[sel["organ"] == organ]
                if sub.empty:
                    continue
                rec: dict[str, Any] = {"model": model, "view": view, "organ": organ}
                rec.update(_status_counts(sub["status"], sub["dice"].to_numpy(np.float64), failure_dice))
                for m in metrics:
                    rec.update(_describe(sub[m].to_numpy(np.float64), m))
                rows.append(rec)
    return pd.DataFrame(rows)


def headline_means(df: pd.DataFrame, metric: str = "dice") -> pd.Series:
    """Macro mean of ``metric`` per model x view: the mean over organs of each organ's case mean."""
    df = normalise(df)
    d = df[np.isfinite(df[metric].to_numpy(np.float64))]
    organ_means = d.groupby(["model", "view", "organ"], sort=False)[metric].mean()
    return organ_means.groupby(level=["model", "view"], sort=False).mean()


def reported_from_meta(meta: Mapping[str, Any], models: Iterable[str]) -> dict[str, dict[str, float]]:
    """Literature Dice per model from results metadata.

    ``meta["reported_dice"]`` is either ``{view or "overall": dice}`` for the table's model
    (``meta["model"]``, or every model of the table when that key is absent) or
    ``{model: {view or "overall": dice}}``.
    """
    rep = meta.get("reported_dice") or {}
    models = [str(m) for m in models]
    if not isinstance(rep, Mapping) or not rep:
        return {}
    if all(isinstance(v, Mapping) for v in rep.values()):
        return {str(m): {str(k): float(x) for k, x in v.items()} for m, v in rep.items()}
    flat = {str(k): float(x) for k, x in rep.items() if x is not None}
    owners = [str(meta["model"])] if meta.get("model") is not None else models
    return {m: dict(flat) for m in owners}


def generalisation_gap(df: pd.DataFrame, reported: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Reported (literature) Dice minus measured macro Dice, per model x view.

    Each measured organ takes its own reported value where the paper gives one
    (``reported[model]["<view>/<organ>"]``), else the view's (``reported[model][view]``), else
    ``reported[model]["overall"]``; ``reported_dice`` is the mean of those over the measured organs, so
    the gap compares like with like. ``reported_key`` says which values were used and
    ``n_organs_reported`` how many organs had their own. A positive gap means the model does worse here
    than its paper says.

    Args:
        df: results table.
        reported: ``{model: {view, "<view>/<organ>" or "overall": dice}}`` (see :func:`reported_from_meta`).

    Returns:
        Columns ``model, view, reported_dice, reported_key, n_organs_reported, measured_dice, gap, n_organs``.
    """
    df = normalise(df)
    measured = headline_means(df, "dice")
    d = df[np.isfinite(df["dice"].to_numpy(np.float64))]
    organs_measured = d.groupby(["model", "view"])["organ"].unique()
    columns = ["model", "view", "reported_dice", "reported_key", "n_organs_reported", "measured_dice", "gap", "n_organs"]
    rows = []
    for model in pd.unique(df["model"]):
        rep = reported.get(model, {})
        for view in present_views(df[df["model"] == model]):
            fallback = view if view in rep else ("overall" if "overall" in rep else "")
            organs = list(organs_measured.get((model, view), []))
            own = [o for o in organs if f"{view}/{o}" in rep]
            values = [float(rep[f"{view}/{o}"]) if o in own else (float(rep[fallback]) if fallback else np.nan) for o in organs]
            if own and len(own) < len(organs) and not fallback:
                values = [np.nan]  # some organs have no reported value at all: no like-for-like mean
            rd = float(np.mean(values)) if values else (float(rep[fallback]) if fallback else float("nan"))
            if own:
                key = f"{view}/<organ> for {len(own)} of {len(organs)} organs" + (f", {fallback} for the rest" if len(own) < len(organs) and fallback else "")
            else:
                key = fallback
            md = float(measured.get((model, view), float("nan")))
            rows.append({"model": model, "view": view, "reported_dice": rd, "reported_key": key,
                         "n_organs_reported": len(own), "measured_dice": md, "gap": rd - md, "n_organs": len(organs)})
    return pd.DataFrame(rows, columns=columns)


def label_diagonal_mm(label_path: str | Path) -> float:
    """The volume diagonal in mm of a NIfTI grid: ``|shape * spacing|`` (header only, no voxels).

    Raises:
        FileNotFoundError: if the file is missing.
    """
    import nibabel as nib  # lazy: only the exclude->worst sensitivity direction needs it

    path = Path(label_path)
    if not path.is_file():
        raise FileNotFoundError(f"label {path} does not exist (needed for the volume diagonal)")
    img = nib.load(str(path))
    shape = np.asarray(img.shape[:3], dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    return float(np.linalg.norm(shape * zooms))


def apply_empty_policy(
    df: pd.DataFrame,
    policy: EmptyPolicy,
    diagonal: Callable[[pd.Series], float] | None = None,
) -> pd.DataFrame:
    """Re-score one-sided empty rows (``missed``, ``false_positive``) under ``policy``.

    ``exclude``: their Dice, NSD, HD95 and ASSD become NaN. ``worst``: Dice 0, NSD 0, and HD95/ASSD
    the case's volume diagonal, taken from (in order) a ``diagonal_mm`` column, a finite HD95 already
    stored in the row (the table was written under ``worst``), ``diagonal(row)``, or
    :func:`label_diagonal_mm` of the row's label path (``label`` or an alias, see
    ``PATH_ALIASES``); NaN with no source. The diagonal is ``|shape * spacing|`` of the label grid,
    the metrics' worst-case distance.

    Args:
        df: results table.
        policy: target policy.
        diagonal: optional ``row -> diagonal in mm``.

    Returns:
        A re-scored copy.

    Raises:
        ValueError: on an unknown policy.
    """
    if policy not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty policy {policy!r}; expected one of {EMPTY_POLICIES}")
    out = normalise(df)
    one_sided = out["status"].isin(ONE_SIDED_EMPTY).to_numpy()
    if not one_sided.any():
        return out
    dist_cols = [c for c in ("hd95", "assd") if c in out.columns]
    if policy == "exclude":
        cols = [c for c in ("dice", "nsd", *dist_cols) if c in out.columns]
        out.loc[one_sided, cols] = np.nan
        return out
    for col in ("dice", "nsd"):
        if col in out.columns:
            out.loc[one_sided, col] = 0.0
    if dist_cols:
        cache: dict[str, float] = {}
        diag = np.full(len(out), np.nan)
        paths = with_path_columns(out)
        labels = paths["label"].to_numpy(dtype=object) if "label" in paths.columns else np.full(len(out), None)
        for i in np.flatnonzero(one_sided):
            row = out.iloc[i]
            label = labels[i]
            val = float("nan")
            if "diagonal_mm" in out.columns and np.isfinite(row["diagonal_mm"]):
                val = float(row["diagonal_mm"])
            elif "hd95" in out.columns and np.isfinite(row["hd95"]):
                val = float(row["hd95"])
            elif diagonal is not None:
                val = float(diagonal(row))
            elif isinstance(label, str) and label.strip() not in ("", "nan", "None"):
                if label not in cache:
                    try:
                        cache[label] = label_diagonal_mm(label)
                    except (FileNotFoundError, OSError, ValueError):
                        cache[label] = float("nan")
                val = cache[label]
            diag[i] = val
        for col in dist_cols:
            out.loc[one_sided, col] = diag[one_sided]
    return out


def sensitivity_table(
    df: pd.DataFrame,
    policy_run: EmptyPolicy = "worst",
    metrics: Sequence[str] = DEFAULT_METRICS,
    pair_kinds: Mapping[str, tuple[str, str]] | None = None,
    alpha: float = 0.05,
    diagonal: Callable[[pd.Series], float] | None = None,
    discrepancy_run: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """How the headline numbers move when one-sided empty rows are scored under the other policy.

    Quantities, each under ``worst`` and ``exclude``: per model x view the macro mean of each metric
    (``scope`` = the view), and per model x pair kind the macro mean paired difference and the
    number of organs with Holm p < ``alpha`` (``scope`` = the pair kind).

    Args:
        df: results table as written by the run.
        policy_run: the empty policy the table was written under (``meta["empty_policy"]``).
        metrics: metric columns.
        pair_kinds: as in :func:`discrepancy_table`.
        alpha: significance threshold for the organ count.
        diagonal: passed to :func:`apply_empty_policy` for the exclude -> worst direction.
        discrepancy_run: :func:`discrepancy_table` of ``df`` already computed with the same
            ``metrics``, ``pair_kinds`` and ``alpha`` (saves recomputing it; CIs are not used).

    Returns:
        Columns ``model, scope, quantity, metric, value_worst, value_exclude, delta, policy_run``
        with ``delta = value_exclude - value_worst``.
    """
    if policy_run not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty policy {policy_run!r}; expected one of {EMPTY_POLICIES}")
    metrics = [m for m in metrics if m in df.columns]
    other = "exclude" if policy_run == "worst" else "worst"
    tables = {policy_run: normalise(df), other: apply_empty_policy(df, other, diagonal=diagonal)}
    values: dict[str, dict[tuple[str, str, str, str], float]] = {}
    for pol, t in tables.items():
        vals: dict[tuple[str, str, str, str], float] = {}
        for m in metrics:
            for (model, view), v in headline_means(t, m).items():
                vals[(model, view, "mean", m)] = float(v)
        if pol == policy_run and discrepancy_run is not None:
            disc = discrepancy_run
        else:
            disc = discrepancy_table(t, metrics, pair_kinds, n_boot=0, alpha=alpha)
        for (model, kind, m), g in disc.groupby(["model", "pair_kind", "metric"], sort=False):
            vals[(model, kind, "mean_paired_diff", m)] = float(g["mean_diff"].mean())
            vals[(model, kind, "n_organs_significant", m)] = float(g["significant"].sum())
        values[pol] = vals
    keys = list(dict.fromkeys([*values[policy_run], *values[other]]))
    rows = []
    for k in keys:
        w = values["worst"].get(k, float("nan"))
        e = values["exclude"].get(k, float("nan"))
        rows.append({"model": k[0], "scope": k[1], "quantity": k[2], "metric": k[3],
                     "value_worst": w, "value_exclude": e, "delta": e - w, "policy_run": policy_run})
    return pd.DataFrame(rows, columns=["model", "scope", "quantity", "metric", "value_worst",
                                       "value_exclude", "delta", "policy_run"])


#: Path columns of the contract and the other names writers use for them (first present wins).
PATH_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "image_file"),
    "label": ("label", "label_path", "ref_file"),
    "prediction": ("prediction", "prediction_path", "pred_file"),
}


def with_path_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``image``, ``label`` and ``prediction`` columns filled from their aliases."""
    out = df
    for name, aliases in PATH_ALIASES.items():
        found = [a for a in aliases if a in df.columns]
        if not found:
            continue
        if out is df:
            out = df.copy()
        col = out[found[0]].astype(object)
        for alias in found[1:]:
            empty = col.isna() | col.astype(str).str.strip().isin(["", "nan", "None"])
            col = col.where(~empty, out[alias])
        out[name] = col
    return out


def select_cases(df: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """The best, median and worst case per model x view by the case's mean ``metric`` over organs.

    Ties are broken by ``case_id``; the median is the lower median. Cases with no finite value are
    skipped.

    Returns:
        Columns ``model, view, which, case_id, subject_id, score`` plus ``image, label, prediction``
        when the table has them; ``which`` is ``best``, ``median`` or ``worst``.
    """
    df = with_path_columns(normalise(df))
    d = df[np.isfinite(df[metric].to_numpy(np.float64))]
    path_cols = [c for c in PATH_ALIASES if c in df.columns]
    rows = []
    higher = HIGHER_IS_BETTER.get(metric, True)
    for (model, view), g in d.groupby(["model", "view"], sort=False):
        scores = g.groupby("case_id")[metric].mean().reset_index()
        scores = scores.sort_values([metric, "case_id"], ascending=[not higher, True], kind="stable")
        scores = scores.reset_index(drop=True)  # best first
        n = len(scores)
        picks = {"best": 0, "median": (n - 1) // 2, "worst": n - 1}
        for which, i in picks.items():
            case = scores.loc[i, "case_id"]
            first = df[(df["model"] == model) & (df["view"] == view) & (df["case_id"] == case)].iloc[0]
            rec = {"model": model, "view": view, "which": which, "case_id": case,
                   "subject_id": first["subject_id"], "score": float(scores.loc[i, metric])}
            rec.update({c: first[c] for c in path_cols})
            rows.append(rec)
    views = {v: i for i, v in enumerate(VIEWS)}
    out = pd.DataFrame(rows, columns=["model", "view", "which", "case_id", "subject_id", "score", *path_cols])
    if not out.empty:
        out = out.sort_values(["model", "view"], key=lambda s: s.map(views) if s.name == "view" else s, kind="stable")
    return out.reset_index(drop=True)
