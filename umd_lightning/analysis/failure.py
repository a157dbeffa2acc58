"""Failure modes per case x organ, volume agreement (Bland-Altman) and their figures, from the results table.

:func:`failure_modes` classifies every row; :func:`volume_agreement` gives the bias and limits of
agreement of predicted against reference volumes per model x view x organ, in ml;
:func:`failure_figures` draws Dice against the reference volume, the Bland-Altman plots and, on PET
views, SUVmean inside the predicted mask against inside the reference mask.

The mask-level columns (``n_components``, ``farthest_component_mm``, ``suv_mean_pred``,
``suv_mean_ref``: :data:`~umd_lightning.results.FAILURE_COLUMNS`) come from scoring
(:mod:`umd_lightning.metrics.failure`); a table written before they existed still works: its stray
components are unknown (``stray_component`` False) and no SUV figure is drawn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from ..results import FAILURE_COLUMNS, normalise, organ_order
from .discrepancy import EVALUABLE, present_views  # the rows with two masks, one non-empty
from .figures import VIEW_COLOR, _grid

#: Failure modes in the order they win when a row has several (the first true flag is its ``failure_mode``).
FAILURE_MODES: tuple[str, ...] = (
    "missed",  # reference present, nothing predicted
    "false_positive",  # organ absent from the reference, predicted
    "false_positive_elsewhere",  # both present, no voxel in common
    "over_segmented",  # predicted volume > over_ratio x reference volume
    "stray_component",  # a predicted component farther than stray_mm from the reference organ
)
#: ``failure_mode`` of a scored row with none of the above; unscored rows keep their status as mode.
NO_FAILURE = "none"
#: Default thresholds (stated in the analysis metadata).
OVER_RATIO = 2.0
STRAY_MM = 10.0

_MARKERS = {"missed": "x", "false_positive": "+", "false_positive_elsewhere": "v", "over_segmented": "s",
            "stray_component": "D", NO_FAILURE: "o"}
_KEYS = ("model", "subject_id", "view", "case_id", "organ")


def _with_failure_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The table with every optional failure column (NaN where a table predates them)."""
    missing = {c: np.nan for c in FAILURE_COLUMNS if c not in df.columns}
    return df.assign(**missing) if missing else df


def failure_modes(df: pd.DataFrame, over_ratio: float = OVER_RATIO, stray_mm: float = STRAY_MM) -> pd.DataFrame:
    """One row per case x organ: the failure flags, the primary ``failure_mode`` and the columns behind them.

    Args:
        df: results table.
        over_ratio: over-segmentation when the predicted volume exceeds this many reference volumes.
        stray_mm: a predicted component farther than this from the reference organ is stray.

    Returns:
        Columns ``model, subject_id, view, case_id, organ, status, dice, ref_volume_ml,
        pred_volume_ml, volume_ratio`` (pred / ref, NaN when the reference is empty), the
        :data:`~umd_lightning.results.FAILURE_COLUMNS`, ``suv_diff`` (pred - ref), one bool column per
        :data:`FAILURE_MODES` and ``failure_mode`` (the first true flag, :data:`NO_FAILURE` for a
        scored row with none, the status for rows not scored: ``both_empty``, ``not_predicted``,
        ``failed``).
    """
    df = _with_failure_columns(normalise(df))
    keys = [k for k in _KEYS if k in df.columns]
    out = df[[*keys, "status", "dice", "ref_volume_ml", "pred_volume_ml", *FAILURE_COLUMNS]].copy()
    ref_ml = pd.to_numeric(out["ref_volume_ml"], errors="coerce")
    pred_ml = pd.to_numeric(out["pred_volume_ml"], errors="coerce")
    out["volume_ratio"] = (pred_ml / ref_ml.where(ref_ml > 0)).astype(float)
    out["suv_diff"] = out["suv_mean_pred"] - out["suv_mean_ref"]
    status = out["status"]
    flags = {
        "missed": status == "missed",
        "false_positive": status == "false_positive",
        "false_positive_elsewhere": (status == "ok") & (out["dice"] == 0),
        "over_segmented": (status == "ok") & (out["volume_ratio"] > over_ratio),
        "stray_component": (status == "ok") & (out["farthest_component_mm"] > stray_mm),
    }
    for name in FAILURE_MODES:
        out[name] = flags[name].astype(bool)
    mode = np.where(status.isin(EVALUABLE), NO_FAILURE, status).astype(object)
    for name in reversed(FAILURE_MODES):  # the first mode in FAILURE_MODES wins
        mode = np.where(out[name], name, mode)
    out["failure_mode"] = mode
    front = [*keys, "status", "failure_mode", *FAILURE_MODES]
    return out[front + [c for c in out.columns if c not in front]].reset_index(drop=True)


def volume_agreement(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Bland-Altman agreement of predicted with reference volumes per model x view x organ, in ml.

    Rows scored with at least one non-empty mask (``ok``, ``missed``, ``false_positive``) enter;
    differences are predicted - reference, so a positive bias is over-segmentation.

    Args:
        df: results table.
        level: coverage of the limits of agreement and of the bias's t interval.

    Returns:
        Columns ``model, view, organ, n, mean_ref_ml, mean_pred_ml, bias_ml, sd_diff_ml, loa_low_ml,
        loa_high_ml`` (bias -+ z * SD, z = 1.96 at 95%), ``bias_ci_low_ml, bias_ci_high_ml`` (t
        interval of the mean difference) and ``relative_bias_pct`` (bias / mean reference volume);
        SD and intervals NaN when n < 2.
    """
    df = normalise(df)
    cols = ["model", "view", "organ", "n", "mean_ref_ml", "mean_pred_ml", "bias_ml", "sd_diff_ml", "loa_low_ml",
            "loa_high_ml", "bias_ci_low_ml", "bias_ci_high_ml", "relative_bias_pct"]
    rows = df[df["status"].isin(EVALUABLE)].dropna(subset=["ref_volume_ml", "pred_volume_ml"])
    if rows.empty:
        return pd.DataFrame(columns=cols)
    z = float(stats.norm.ppf(0.5 + level / 2))
    organs = {o: i for i, o in enumerate(organ_order(df))}
    out = []
    for (model, view, organ), g in rows.groupby(["model", "view", "organ"], sort=False):
        ref = g["ref_volume_ml"].to_numpy(float)
        diff = g["pred_volume_ml"].to_numpy(float) - ref
        n, bias = len(diff), float(diff.mean())
        sd = float(diff.std(ddof=1)) if n > 1 else np.nan
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)) if n > 1 else np.nan
        mean_ref = float(ref.mean())
        out.append([model, view, organ, n, mean_ref, float(g["pred_volume_ml"].mean()), bias, sd, bias - z * sd,
                    bias + z * sd, bias - half, bias + half, 100.0 * bias / mean_ref if mean_ref > 0 else np.nan])
    table = pd.DataFrame(out, columns=cols)
    views = {v: i for i, v in enumerate(VIEW_COLOR)}
    order = table.assign(_v=table["view"].map(lambda v: views.get(v, len(views))),
                         _o=table["organ"].map(lambda o: organs.get(o, len(organs))))
    return order.sort_values(["model", "_v", "_o"], kind="stable").drop(columns=["_v", "_o"]).reset_index(drop=True)


# --------------------------------------------------------------------------- figures


def dice_volume_figure(modes: pd.DataFrame, model: str) -> Figure | None:
    """Dice against the reference volume (log scale), one colour per view, one marker per failure mode."""
    d = modes[(modes["model"] == model) & (modes["ref_volume_ml"] > 0) & modes["dice"].notna()]
    if d.empty:
        return None
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    for view in present_views(d):
        for mode, marker in _MARKERS.items():
            s = d[(d["view"] == view) & (d["failure_mode"] == mode)]
            if len(s):
                edge = {"linewidths": 1.2} if marker in "x+" else {"linewidths": 0.4, "edgecolors": "white"}
                ax.scatter(s["ref_volume_ml"], s["dice"], s=22, marker=marker, color=VIEW_COLOR.get(view, "0.3"),
                           alpha=0.8, **edge)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("reference volume (ml, log scale)")
    ax.set_ylabel("Dice  (higher is better \u2191)")
    ax.set_title(f"{model}: Dice against organ size", fontsize=10)
    ax.grid(alpha=0.3)
    view_handles = [ax.scatter([], [], color=VIEW_COLOR.get(v, "0.3"), marker="o", label=v) for v in present_views(d)]
    mode_handles = [ax.scatter([], [], color="0.3", marker=_MARKERS[m], label=m.replace("_", " "))
                    for m in _MARKERS if (d["failure_mode"] == m).any()]
    # outside the axes: the failures crowd the bottom of the plot
    fig.legend(handles=view_handles, title="view", fontsize=7, title_fontsize=7, loc="outside right upper")
    fig.legend(handles=mode_handles, title="failure mode", fontsize=7, title_fontsize=7, loc="outside right lower")
    return fig


def bland_altman_figure(df: pd.DataFrame, agreement: pd.DataFrame, model: str, ncols: int = 5) -> Figure | None:
    """Bland-Altman per organ: difference (pred - ref, ml) against the mean of both volumes; per view
    its bias (solid) and limits of agreement (dashed) in the view's colour."""
    d = normalise(df)
    d = d[(d["model"] == model) & d["status"].isin(EVALUABLE)].dropna(subset=["ref_volume_ml", "pred_volume_ml"])
    if d.empty:
        return None
    organs = [o for o in organ_order(normalise(df)) if (d["organ"] == o).any()]
    nrows, ncols = _grid(len(organs), ncols)
    fig = Figure(figsize=(2.7 * ncols, 2.4 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    agree = agreement[agreement["model"] == model]
    views = present_views(d)
    for ax, organ in zip(axes.ravel(), organs):
        s = d[d["organ"] == organ]
        for view in views:
            v = s[s["view"] == view]
            color = VIEW_COLOR.get(view, "0.3")
            if len(v):
                ax.scatter((v["pred_volume_ml"] + v["ref_volume_ml"]) / 2, v["pred_volume_ml"] - v["ref_volume_ml"],
                           s=14, color=color, alpha=0.85, edgecolors="none")
            a = agree[(agree["organ"] == organ) & (agree["view"] == view)]
            if len(a):
                ax.axhline(float(a["bias_ml"].iloc[0]), color=color, lw=1.2)
                for col in ("loa_low_ml", "loa_high_ml"):
                    if np.isfinite(a[col].iloc[0]):
                        ax.axhline(float(a[col].iloc[0]), color=color, lw=0.8, ls="--")
        ax.axhline(0.0, color="0.2", lw=0.6)
        ax.set_title(organ, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(organs):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("pred - ref (ml)\n\u2191 over, \u2193 under", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("mean of both (ml)", fontsize=8)
    handles = [axes[0, 0].plot([], [], color=VIEW_COLOR.get(v, "0.3"), marker="o", lw=1.2, label=v)[0] for v in views]
    handles.append(axes[0, 0].plot([], [], color="0.4", ls="--", lw=0.8, label="limits of agreement")[0])
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"{model}: volume agreement (Bland-Altman; solid: bias, dashed: 95% limits)", fontsize=10)
    return fig


def suv_agreement_figure(modes: pd.DataFrame, model: str) -> Figure | None:
    """SUVmean inside the predicted mask against inside the reference mask, PET views, identity line."""
    d = modes[(modes["model"] == model)].dropna(subset=["suv_mean_pred", "suv_mean_ref"])
    if d.empty:
        return None
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    ax = fig.subplots()
    for view in present_views(d):
        s = d[d["view"] == view]
        ax.scatter(s["suv_mean_ref"], s["suv_mean_pred"], s=20, color=VIEW_COLOR.get(view, "0.3"), alpha=0.85,
                   edgecolors="white", linewidths=0.4, label=f"{view} (n={len(s)})")
    lo = float(min(d["suv_mean_ref"].min(), d["suv_mean_pred"].min(), 0.0))
    hi = float(max(d["suv_mean_ref"].max(), d["suv_mean_pred"].max())) * 1.05
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="identity")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("SUVmean in the reference mask")
    ax.set_ylabel("SUVmean in the predicted mask")
    ax.set_title(f"{model}: uptake measured through the prediction", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def failure_figures(df: pd.DataFrame, modes: pd.DataFrame, agreement: pd.DataFrame,
                    models: Sequence[str] | None = None) -> dict[str, Figure]:
    """``dice_vs_volume_<model>``, ``bland_altman_<model>`` and ``suv_agreement_<model>`` of every model
    that has something to draw."""
    figs: dict[str, Figure] = {}
    for model in models if models is not None else pd.unique(modes["model"]):
        for name, fig in (
            (f"dice_vs_volume_{model}", dice_volume_figure(modes, model)),
            (f"bland_altman_{model}", bland_altman_figure(df, agreement, model)),
            (f"suv_agreement_{model}", suv_agreement_figure(modes, model)),
        ):
            if fig is not None:
                figs[name] = fig
    return figs


__all__ = ["FAILURE_MODES", "NO_FAILURE", "OVER_RATIO", "STRAY_MM", "bland_altman_figure", "dice_volume_figure",
           "failure_figures", "failure_modes", "suv_agreement_figure", "volume_agreement"]
