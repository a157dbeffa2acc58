"""Figures of the discrepancy analysis (matplotlib, no pyplot state, Agg rendering).

Figures are built as ``matplotlib.figure.Figure`` objects, never through ``pyplot``, so they render
without a display, leave the caller's backend alone and show inline in notebooks. Each function
returns ``None`` when the table holds nothing to draw.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..organs import SESSION_VIEWS
from ..results import normalise, organ_order
from .discrepancy import HIGHER_IS_BETTER, present_views, subject_values

METRIC_LABEL: dict[str, str] = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD", "assd": "ASSD (mm)"}
VIEW_COLOR: dict[str, str] = {"CT": "#1f77b4", "PET_CT": "#d62728", "MRI": "#2ca02c", "PET_MRI": "#ff7f0e"}


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas.

    The figures lay themselves out (``layout="constrained"``), so no ``bbox_inches="tight"``: that
    renders every figure twice. Fast zlib level: 8% larger files, a quarter less time.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return int(math.ceil(n / ncols)), ncols


def slope_plot(df: pd.DataFrame, model: str, metric: str = "dice", ncols: int = 5) -> Figure | None:
    """Per-organ paired slopes from each anatomical view to its PET (CT -> PET_CT, MRI -> PET_MRI).

    One panel per organ; a thin grey line per subject with both views, the mean as a thick line.

    Args:
        df: results table.
        model: model to draw.
        metric: metric column.
        ncols: panels per row.
    """
    df = normalise(df)
    df = df[df["model"] == model]
    wide = subject_values(df, metric)
    sessions = [(a, p) for a, p in SESSION_VIEWS.values() if a in wide and p in wide]
    if wide.empty or not sessions:
        return None
    organs = [o for o in organ_order(df) if (model, o) in wide.index.droplevel("subject_id")]
    nrows, ncols = _grid(len(organs), ncols)
    fig = Figure(figsize=(2.6 * ncols, 2.4 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, organ in zip(axes.ravel(), organs):
        sub = wide.loc[(model, organ)]
        ticks, labels = [], []
        for k, (anat, pet) in enumerate(sessions):
            x = np.array([0.0, 1.0]) + 1.6 * k
            pair = sub[[anat, pet]].dropna().to_numpy()
            for y in pair:
                ax.plot(x, y, color="0.6", lw=0.7, alpha=0.7)
            if len(pair):
                ax.plot(x, pair.mean(axis=0), color=VIEW_COLOR[pet], lw=2.5, marker="o")
            ticks += list(x)
            labels += [anat, f"{pet}\n(n={len(pair)})"]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_xlim(-0.3, 1.6 * (len(sessions) - 1) + 1.3)
        ax.set_title(organ, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(organs):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(METRIC_LABEL.get(metric, metric))
    fig.suptitle(f"{model}: paired {METRIC_LABEL.get(metric, metric)}, anatomical view -> PET (one line per subject)")
    return fig


def view_organ_heatmap(df: pd.DataFrame, model: str, metric: str = "dice") -> Figure | None:
    """Mean ``metric`` per view (rows) x organ (columns), annotated."""
    df = normalise(df)
    df = df[df["model"] == model]
    d = df[np.isfinite(df[metric].to_numpy(np.float64))]
    if d.empty:
        return None
    views = present_views(d)
    organs = organ_order(df)
    means = d.groupby(["view", "organ"])[metric].mean().unstack("organ").reindex(index=views, columns=organs)
    vals = means.to_numpy(np.float64)
    fig = Figure(figsize=(1.0 + 0.75 * len(organs), 1.2 + 0.55 * len(views)), layout="constrained")
    ax = fig.subplots()
    higher = HIGHER_IS_BETTER.get(metric, True)
    bounded = metric in ("dice", "nsd")
    im = ax.imshow(vals, cmap="viridis" if higher else "viridis_r", aspect="auto",
                   vmin=0.0 if bounded else None, vmax=1.0 if bounded else None)
    ax.set_xticks(range(len(organs)), organs, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(views)), views)
    lo, hi = im.get_clim()
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            if np.isfinite(vals[i, j]):
                frac = (vals[i, j] - lo) / (hi - lo) if hi > lo else 0.5
                dark = frac < 0.55 if higher else frac > 0.45
                ax.text(j, i, f"{vals[i, j]:.2f}" if bounded else f"{vals[i, j]:.1f}", ha="center",
                        va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=METRIC_LABEL.get(metric, metric))
    ax.set_title(f"{model}: mean {METRIC_LABEL.get(metric, metric)} per view and organ")
    return fig


def forest_plot(disc: pd.DataFrame, model: str, metric: str = "dice") -> Figure | None:
    """Mean paired difference with its bootstrap CI per organ, one panel per pair kind.

    Filled markers: Holm-adjusted p < alpha (the ``significant`` column); hollow: not significant
    or untested.

    Args:
        disc: output of :func:`discrepancy.discrepancy_table`.
        model: model to draw.
        metric: metric to draw.
    """
    d = disc[(disc["model"] == model) & (disc["metric"] == metric)]
    if d.empty or not np.isfinite(d["mean_diff"].to_numpy(np.float64)).any():
        return None
    kinds = list(pd.unique(d["pair_kind"]))
    organs = list(pd.unique(d["organ"]))
    fig = Figure(figsize=(3.2 * len(kinds) + 1.2, 0.9 + 0.32 * len(organs)), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    y = np.arange(len(organs))[::-1]
    for ax, kind in zip(axes, kinds):
        g = d[d["pair_kind"] == kind].set_index("organ").reindex(organs)
        mean = g["mean_diff"].to_numpy(np.float64)
        lo = g["ci_low"].to_numpy(np.float64)
        hi = g["ci_high"].to_numpy(np.float64)
        sig = g["significant"].fillna(False).to_numpy(bool)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(y[ok], lo[ok], hi[ok], color="0.3", lw=1.5)
        color = VIEW_COLOR.get(str(g["cmp_view"].dropna().iloc[0]) if g["cmp_view"].notna().any() else "", "k")
        fin = np.isfinite(mean)
        ax.scatter(mean[fin & sig], y[fin & sig], color=color, zorder=3, s=30, label="Holm p < alpha")
        ax.scatter(mean[fin & ~sig], y[fin & ~sig], facecolor="white", edgecolor=color, zorder=3, s=30,
                   label="not significant")
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ref, cmp = g["ref_view"].dropna().iloc[0], g["cmp_view"].dropna().iloc[0]
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel(f"{cmp} - {ref} ({METRIC_LABEL.get(metric, metric)})", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, organs, fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7)
    fig.suptitle(f"{model}: paired difference with 95% bootstrap CI")
    return fig


def reported_vs_measured(gap: pd.DataFrame) -> Figure | None:
    """Measured macro Dice (bars) against the model's reported Dice (black ticks) per model x view.

    Args:
        gap: output of :func:`discrepancy.generalisation_gap`.
    """
    if gap.empty:
        return None
    models = list(pd.unique(gap["model"]))
    views = [v for v in VIEW_COLOR if v in set(gap["view"])]
    width = 0.8 / max(len(views), 1)
    fig = Figure(figsize=(1.5 + 1.6 * len(models) * max(1, len(views)) / 2, 3.6), layout="constrained")
    ax = fig.subplots()
    any_reported = False
    for j, view in enumerate(views):
        g = gap[gap["view"] == view].set_index("model").reindex(models)
        x = np.arange(len(models)) + (j - (len(views) - 1) / 2) * width
        ax.bar(x, g["measured_dice"].to_numpy(np.float64), width * 0.95, color=VIEW_COLOR[view], label=view)
        rep = g["reported_dice"].to_numpy(np.float64)
        ok = np.isfinite(rep)
        if ok.any():
            any_reported = True
            ax.hlines(rep[ok], x[ok] - width * 0.45, x[ok] + width * 0.45, color="k", lw=2)
    if any_reported:
        ax.plot([], [], color="k", lw=2, label="reported")
    else:
        ax.text(0.5, 0.95, "no reported Dice in the model configs", transform=ax.transAxes, ha="center", va="top")
    ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("macro Dice")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Reported (paper) vs measured Dice by model and view")
    return fig


def main_figures(
    df: pd.DataFrame,
    disc: pd.DataFrame,
    gap: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd95", "nsd"),
) -> dict[str, Figure]:
    """The standard figure set, named ``<kind>_<model>[_<metric>]`` (names are file stems).

    Per model: Dice slope plot, Dice view x organ heatmap, one forest plot per metric; and one
    reported-vs-measured figure over all models.
    """
    figs: dict[str, Figure | None] = {}
    df = normalise(df)
    for model in pd.unique(df["model"]):
        tag = safe_name(model)
        figs[f"slope_{tag}_dice"] = slope_plot(df, model, "dice")
        figs[f"heatmap_{tag}_dice"] = view_organ_heatmap(df, model, "dice")
        for m in metrics:
            if m in set(disc["metric"]):
                figs[f"forest_{tag}_{m}"] = forest_plot(disc, model, m)
    figs["reported_vs_measured"] = reported_vs_measured(gap)
    return {k: v for k, v in figs.items() if v is not None}


def safe_name(text: str) -> str:
    """File-name-safe version of a model name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)) or "model"


__all__ = [
    "forest_plot", "main_figures", "reported_vs_measured", "safe_name", "slope_plot",
    "to_png", "view_organ_heatmap",
]
