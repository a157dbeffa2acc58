"""What the analysis did and what its numbers can carry, for ``analysis.meta.json``'s ``methods``.

One place states the primary endpoint, the tests, the correction families and the intervals the
tables use, how many subjects a comparison needs, the voxel spacing the metrics were computed on and
the caveats a reader needs (sample size, worst-case HD95, an NSD tolerance below the voxel size).

Voxel spacing: metrics are computed on each case's label grid (``results`` meta ``eval_grid``), so the
spacing is read from the label files' NIfTI headers (header only). Without readable labels it falls
back to the voxel volume the table implies, ``ref_volume_ml * 1000 / ref_voxels`` mm^3, whose cube root
is a lower bound on the largest voxel edge (enough to tell that a tolerance lies below it). The
results meta's ``target_spacing`` is the model's own input grid, not the metrics' grid.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .discrepancy import ONE_SIDED_EMPTY, present_views, with_path_columns
from .stats import BCA_MIN_N, subjects_needed

#: Label headers read per view for the spacing (runs share a few grids; reading is ~1 ms a file).
MAX_HEADERS_PER_VIEW = 20
SPACING_FROM_HEADER = "label NIfTI headers (the metrics' grid)"
SPACING_FROM_VOLUME = ("cube root of the voxel volume ref_volume_ml / ref_voxels (no readable label file): "
                       "the largest edge is at least this")


def _header_zooms(path: str) -> tuple[float, float, float] | None:
    import nibabel as nib  # lazy: only when the table names label files

    try:
        zooms = nib.load(path).header.get_zooms()[:3]
    except (OSError, ValueError, nib.filebasedimages.ImageFileError):
        return None
    return tuple(float(z) for z in zooms) if len(zooms) == 3 else None


def voxel_spacing(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Smallest and largest voxel edge (mm) of the metrics' grid per view, and where they come from.

    Args:
        df: results table (label paths in ``label``/``label_path``/``ref_file``, or the voxel counts
            and volumes).

    Returns:
        ``{view: {"min": mm, "max": mm, "source": text}}``; views with neither source are left out.
    """
    paths = with_path_columns(df)
    out: dict[str, dict[str, Any]] = {}
    for view in present_views(df):
        sel = paths[paths["view"] == view]
        edges: list[float] = []
        if "label" in sel.columns:
            labels = [p for p in pd.unique(sel["label"]) if isinstance(p, str) and p.strip() not in ("", "nan", "None")]
            for path in labels[:MAX_HEADERS_PER_VIEW]:
                zooms = _header_zooms(path)
                if zooms:
                    edges.extend(zooms)
        if edges:
            out[view] = {"min": min(edges), "max": max(edges), "source": SPACING_FROM_HEADER}
            continue
        if {"ref_volume_ml", "ref_voxels"} <= set(sel.columns):
            ml = pd.to_numeric(sel["ref_volume_ml"], errors="coerce").to_numpy(np.float64)
            vox = pd.to_numeric(sel["ref_voxels"], errors="coerce").to_numpy(np.float64)
            ok = np.isfinite(ml) & np.isfinite(vox) & (vox > 0) & (ml > 0)
            if ok.any():
                cube = np.cbrt(ml[ok] * 1000.0 / vox[ok])
                out[view] = {"min": float(cube.min()), "max": float(cube.max()), "source": SPACING_FROM_VOLUME}
    return out


def nsd_tolerance(df: pd.DataFrame, meta: Mapping[str, Any]) -> float | None:
    """The NSD tolerance (mm) of the table: its ``nsd_tolerance_mm`` column, else the meta's; None if unknown
    or if rows disagree (then the per-row column is the one to read)."""
    if "nsd_tolerance_mm" in df.columns:
        vals = pd.unique(pd.to_numeric(df["nsd_tolerance_mm"], errors="coerce").dropna())
        if len(vals) == 1:
            return float(vals[0])
        if len(vals) > 1:
            return None
    tol = meta.get("nsd_tolerance_mm")
    return float(tol) if isinstance(tol, (int, float)) and not isinstance(tol, bool) else None


def nsd_tolerance_note(tolerance: float | None, spacing: Mapping[str, Mapping[str, Any]]) -> str:
    """A warning when the NSD tolerance lies below the largest voxel edge of a view, else ``""``.

    Example:
        >>> nsd_tolerance_note(2.0, {"CT": {"min": 3.0, "max": 4.0, "source": "x"}})
        'NSD tolerance 2 mm is below the voxel edge (CT 3-4 mm): a boundary one voxel off counts as a miss there, so NSD reads as near-exact boundary agreement'
    """
    if tolerance is None:
        return ""
    below = {v: s for v, s in spacing.items() if tolerance < float(s["max"])}
    if not below:
        return ""
    grids = ", ".join(f"{v} {s['min']:g}-{s['max']:g} mm" if s["min"] != s["max"] else f"{v} {s['max']:g} mm"
                      for v, s in below.items())
    lower_bound = any(s.get("source") == SPACING_FROM_VOLUME for s in below.values())
    return (f"NSD tolerance {tolerance:g} mm is below the voxel edge ({grids}"
            + (", from voxel volumes" if lower_bound else "") + "): a boundary one voxel off counts as a miss "
            "there, so NSD reads as near-exact boundary agreement")


def methods_block(
    df: pd.DataFrame,
    meta: Mapping[str, Any],
    discrepancy: pd.DataFrame,
    headline: pd.DataFrame,
    n_boot: int,
    level: float,
    alpha: float,
    mixed_metrics: Sequence[str],
) -> dict[str, Any]:
    """The ``methods`` dict of ``analysis.meta.json`` (keys agreed with the report)."""
    n_subjects = int(df["subject_id"].nunique())
    organ_family = int(discrepancy.groupby(["model", "pair_kind", "metric"]).size().max()) if len(discrepancy) else 0
    head_family = int(headline.groupby(["model", "metric"]).size().max()) if len(headline) else 0
    need_organ = subjects_needed(max(organ_family, 1), alpha)
    need_head = subjects_needed(max(head_family, 1), alpha)
    need_one = subjects_needed(1, alpha)
    spacing = voxel_spacing(df)
    tol = nsd_tolerance(df, meta)
    nsd_note = nsd_tolerance_note(tol, spacing)
    pct = f"{100 * level:g}%"
    needed = (f"An organ comparison (Holm across the {organ_family} organs of a model x pair kind x metric) needs "
              f"at least {need_organ} subjects with a non-zero difference to reach p<{alpha:g}; the headline (Holm "
              f"across {head_family} pair kinds) needs {need_head}; a single uncorrected test {need_one}. "
              f"This table has {n_subjects}. The exact two-sided Wilcoxon p cannot go below 2/2^n.")
    caveats = _caveats(df, meta, discrepancy, headline, n_subjects, need_organ, need_head, alpha, nsd_note)
    return {
        "primary_endpoint": "organ-averaged paired Dice difference (compared - reference view) per model x pair "
                            "kind, e.g. PET_CT - CT",
        "test": "Wilcoxon signed-rank, exact two-sided (zero differences dropped, mid-ranks for ties), over subjects "
                "with both views; the headline tests the subjects' organ-averaged differences",
        "correction": "Holm (statsmodels multipletests)",
        "correction_family": "organ rows: the organs of one model x pair kind x metric; headline: the pair kinds of "
                             "one model x metric; rankings: the model pairs of one view x metric",
        "interval_method": f"{pct} t interval of the mean paired difference below {BCA_MIN_N} subjects, BCa bootstrap "
                           f"({n_boot} resamples, scipy.stats.bootstrap) from {BCA_MIN_N} on; ci_method names it per row",
        "headline_interval": f"{pct} subject-clustered percentile bootstrap ({n_boot} resamples of whole subjects, "
                             "every organ of a drawn subject kept), beside a t interval of the subjects' organ averages",
        "mixed_model": "statsmodels MixedLM, value ~ C(view) + C(organ) with a random intercept per subject, REML, "
                       f"fitted for {', '.join(mixed_metrics) or 'no metric'} as a check of the headline",
        "ranking": "models ranked per view x metric by organ-averaged mean (1 = best); rank intervals and p_first "
                   f"from {n_boot} subject resamples shared by all models",
        "n_boot": int(n_boot),
        "level": float(level),
        "alpha": float(alpha),
        "nsd_tolerance_mm": tol,
        "voxel_spacing_mm": {v: {"min": s["min"], "max": s["max"]} for v, s in spacing.items()},
        "voxel_spacing_source": "; ".join(sorted({s["source"] for s in spacing.values()})),
        "nsd_tolerance_note": nsd_note,
        "subjects_needed": needed,
        "caveats": caveats,
    }


def _caveats(df: pd.DataFrame, meta: Mapping[str, Any], discrepancy: pd.DataFrame, headline: pd.DataFrame,
             n_subjects: int, need_organ: int, need_head: int, alpha: float, nsd_note: str) -> list[str]:
    out: list[str] = []
    if len(discrepancy) and discrepancy["underpowered"].all():
        out.append(f"With {n_subjects} subjects no organ comparison can reach p<{alpha:g} after Holm (needs {need_organ})"
                   + (f" and no headline can (needs {need_head})" if len(headline) and headline["underpowered"].all() else "")
                   + ": read the intervals and how many subjects agree in sign, not the p-values.")
    elif len(discrepancy) and discrepancy["underpowered"].any():
        k = int(discrepancy["underpowered"].sum())
        out.append(f"{k} of {len(discrepancy)} organ comparisons cannot reach p<{alpha:g} after Holm with the subjects "
                   "they have (underpowered column).")
    if n_subjects < BCA_MIN_N:
        out.append(f"With fewer than {BCA_MIN_N} subjects the organ intervals are t intervals; the headline's "
                   "subject-clustered bootstrap has few distinct resamples and is narrower than its t interval "
                   "(both are in headline.csv).")
    policy = meta.get("empty_policy", "worst")
    one_sided = int(df["status"].isin(ONE_SIDED_EMPTY).sum())
    if policy == "worst" and one_sided and "hd95" in df.columns:
        out.append(f"{one_sided} of {len(df)} rows have one empty mask (missed or false positive) and are scored "
                   "with the worst-case HD95 (the volume diagonal): they dominate HD95 means; the medians in "
                   "view_summary are robust to them.")
    if nsd_note:
        out.append(nsd_note + ".")
    if len(discrepancy) and discrepancy["both_failed"].any():
        k = int(discrepancy.loc[discrepancy["metric"] == discrepancy["metric"].iloc[0], "both_failed"].sum())
        out.append(f"In {k} organ rows both views failed in every subject: their zero differences mean 'failed "
                   "twice', not 'no difference' (both_failed column).")
    if len(discrepancy) and discrepancy["dz_flag"].any():
        out.append(f"d_z is not interpretable in {int(discrepancy['dz_flag'].sum())} rows (fewer than 5 non-zero "
                   "differences, or failures in both views): dz_flag marks them.")
    if len(headline) and "mixed_note" in headline.columns:
        boundary = headline["mixed_note"].fillna("").str.contains("subject variance 0").sum()
        if boundary:
            out.append(f"The mixed model's subject variance is 0 in {int(boundary)} fits: its interval there is that "
                       "of least squares with organ effects.")
    return out
