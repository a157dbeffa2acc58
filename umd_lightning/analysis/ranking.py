"""Models side by side: per view x metric, the models' ranking, how stable it is, and which gaps are real.

A model's score on a view is its organ-averaged mean (per organ the mean over subjects, averaged over
organs; a subject's repeat cases are averaged first). Ranks go from 1 (best; the direction follows
``discrepancy.HIGHER_IS_BETTER``), ties share the lower rank. Stability, as challengeR does it: the
subjects are resampled with replacement (the same draw for every model, since every model saw the
same subjects) and the models re-ranked in each resample; ``rank_ci_*`` are percentiles of a model's
rank over the resamples and ``p_first`` is the share of resamples in which it ranks first.

``rank_change_vs_ref`` makes the generalisation illusion visible: a model's rank on a view minus its
rank on the structural view of that session (``PET_CT`` against ``CT``, ``PET_MRI`` against ``MRI``;
0 on the structural views themselves). A model that leads on CT and drops on PET has a positive change.

Pairwise: per view x metric and pair of models, the subjects' organ-averaged differences
``model_a - model_b`` with a Wilcoxon signed-rank p, Holm-corrected across the pairs of one
view x metric.
"""

from __future__ import annotations

import warnings
from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ..organs import VIEWS, anatomical_view
from ..results import normalise, validate_results
from .discrepancy import DEFAULT_METRICS, HIGHER_IS_BETTER, CubeAxes, row_seed, subject_cube
from .headline import cluster_bootstrap_means, resample_weights
from .stats import holm_family, min_attainable_p, wilcoxon_p

RANKING_COLUMNS: tuple[str, ...] = (
    "view", "metric", "model", "n_subjects", "mean", "rank", "rank_ci_low", "rank_ci_high", "p_first",
    "rank_change_vs_ref",
)
RANKING_PAIR_COLUMNS: tuple[str, ...] = (
    "view", "metric", "model_a", "model_b", "n_subjects", "mean_a", "mean_b", "mean_diff", "better", "p",
    "p_holm", "significant", "min_attainable_p", "underpowered",
)


def rank_scores(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks along the last axis, 1 = best, ties share the lower rank, NaN scores rank last.

    Args:
        scores: (..., K) scores of K models.
        higher_is_better: direction of the metric.

    Example:
        >>> rank_scores(np.array([0.7, 0.9, 0.7])).tolist()
        [2.0, 1.0, 2.0]
    """
    oriented = -scores if higher_is_better else scores
    oriented = np.where(np.isfinite(oriented), oriented, np.inf)
    return _sps.rankdata(oriented, method="min", axis=-1).astype(np.float64)


def ranking_tables(
    df: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rankings with bootstrap stability and pairwise Wilcoxon + Holm (see the module docstring).

    Args:
        df: results table (one or several models).
        metrics: metric columns; absent ones are skipped.
        n_boot: subject resamples for the rank intervals (0: no intervals, ``p_first`` NaN).
        seed: base seed (per view x metric via :func:`~.discrepancy.row_seed`).
        level: level of the rank intervals.
        alpha: family-wise level across the model pairs of one view x metric.

    Returns:
        ``(ranking, ranking_pairs)`` with columns :data:`RANKING_COLUMNS` and
        :data:`RANKING_PAIR_COLUMNS`; with one model each view ranks it first and there are no pairs.
    """
    df = normalise(validate_results(df))
    axes = CubeAxes.of(df)
    ranking: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    for metric in [m for m in metrics if m in df.columns]:
        cube = subject_cube(df, metric, axes)
        higher = HIGHER_IS_BETTER.get(metric, True)
        for vi, view in enumerate(axes.views):
            values = cube[..., vi]  # (K, S, O)
            have = np.isfinite(values).any(axis=(1, 2))
            if not have.any():
                continue
            kept = [m for m, h in zip(axes.models, have) if h]
            values = values[have]
            ranking.extend(_rank_rows(values, kept, view, metric, higher, n_boot,
                                      row_seed(seed, view, metric, "ranking"), level))
            pairs.extend(_pair_rows(values, kept, view, metric, higher, alpha))
    rank_df = pd.DataFrame(ranking, columns=list(RANKING_COLUMNS))
    if len(rank_df):
        rank_df["rank_change_vs_ref"] = _rank_change(rank_df)
        order = {v: i for i, v in enumerate(VIEWS)}
        rank_df = rank_df.sort_values(["metric", "view", "rank", "model"], kind="stable",
                                      key=lambda s: s.map(lambda v: order.get(v, len(order))) if s.name == "view" else s)
        rank_df = rank_df.reset_index(drop=True)
    return rank_df, pd.DataFrame(pairs, columns=list(RANKING_PAIR_COLUMNS))


def _rank_rows(values: np.ndarray, models: Sequence[str], view: str, metric: str, higher: bool, n_boot: int,
               seed: Sequence[int], level: float) -> list[dict[str, Any]]:
    """values: (K models, S subjects, O organs)."""
    k, s, _ = values.shape
    ones = np.ones((1, s))
    means = np.array([cluster_bootstrap_means(values[i], ones)[0] for i in range(k)])
    ranks = rank_scores(means, higher)
    lo = hi = np.full(k, np.nan)
    p_first = np.full(k, np.nan)
    if k == 1 and np.isfinite(means[0]):  # one model: first in every resample
        lo = hi = p_first = np.ones(1)
    elif n_boot > 0 and s >= 2:
        weights = resample_weights(s, n_boot, seed)
        boot = np.stack([cluster_bootstrap_means(values[i], weights) for i in range(k)], axis=1)  # (B, K)
        boot_ranks = rank_scores(boot, higher)
        lo, hi = np.quantile(boot_ranks, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
        p_first = (boot_ranks == 1).mean(axis=0)
    n_subj = np.isfinite(values).any(axis=2).sum(axis=1)
    return [{"view": view, "metric": metric, "model": m, "n_subjects": int(n_subj[i]), "mean": float(means[i]),
             "rank": float(ranks[i]), "rank_ci_low": float(lo[i]), "rank_ci_high": float(hi[i]),
             "p_first": float(p_first[i]), "rank_change_vs_ref": np.nan} for i, m in enumerate(models)]


def _pair_rows(values: np.ndarray, models: Sequence[str], view: str, metric: str, higher: bool,
               alpha: float) -> list[dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a subject a model has no value for: NaN
        subject_avg = np.nanmean(values, axis=2)  # (K, S)
    rows = []
    for i, j in combinations(range(len(models)), 2):
        both = np.isfinite(subject_avg[i]) & np.isfinite(subject_avg[j])
        a, b = subject_avg[i][both], subject_avg[j][both]
        d = a - b
        p, _ = wilcoxon_p(d)
        mean_diff = float(d.mean()) if d.size else float("nan")
        better = "" if not d.size or mean_diff == 0 else (models[i] if (mean_diff > 0) == higher else models[j])
        rows.append({"view": view, "metric": metric, "model_a": models[i], "model_b": models[j],
                     "n_subjects": int(d.size), "mean_a": float(a.mean()) if d.size else float("nan"),
                     "mean_b": float(b.mean()) if d.size else float("nan"), "mean_diff": mean_diff,
                     "better": better, "p": p, "min_attainable_p": min_attainable_p(int(np.count_nonzero(d)))})
    holm_family(rows, alpha)
    return rows


def _rank_change(rank_df: pd.DataFrame) -> pd.Series:
    """Rank on a view minus rank on its session's structural view (0 on the structural views)."""
    by = rank_df.set_index(["metric", "view", "model"])["rank"]

    def change(row: pd.Series) -> float:
        view = row["view"]
        try:
            ref = anatomical_view(view)
        except (KeyError, ValueError):
            return float("nan")
        return float(row["rank"] - by.get((row["metric"], ref, row["model"]), np.nan))

    return rank_df.apply(change, axis=1)
