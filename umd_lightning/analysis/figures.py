"""Figures of the discrepancy analysis (matplotlib, no pyplot state, Agg rendering).

Figures are built as ``matplotlib.figure.Figure`` objects, never through ``pyplot``, so they render
without a display, leave the caller's backend alone and show inline in notebooks. Each function
returns ``None`` when the table holds nothing to draw.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..organs import SESSION_VIEWS
from ..results import normalise, organ_order
from .discrepancy import HIGHER_IS_BETTER, present_views, subject_values

METRIC_LABEL: dict[str, str] = {"dice": "Dice", "hd95": "HD95 (mm)", "nsd": "NSD", "assd": "ASSD (mm)"}
#: One colour per view in every figure (Okabe-Ito: distinguishable under the common colour-vision deficiencies).
VIEW_COLOR: dict[str, str] = {"CT": "#0072B2", "PET_CT": "#D55E00", "MRI": "#009E73", "PET_MRI": "#CC79A7"}
#: One colour per organ of ``umd13`` in every overlay, hand-picked from Kelly's colours of maximum contrast so
#: that no two organs (heart/lung, liver/spleen, the kidneys) look alike: every pair differs by CIELAB dE > 25.
ORGAN_COLOR: dict[str, str] = {
    "brain": "#F3C300", "heart": "#BE0032", "lung": "#A1CAF1", "liver": "#882D17", "spleen": "#875692",
    "kidney_left": "#008856", "kidney_right": "#8DB600", "pancreas": "#F38400", "stomach": "#E68FAC",
    "esophagus": "#C2B280", "aorta": "#0067A5", "colon": "#7F7F00", "urinary_bladder": "#00C8C8",
}
#: Colours for organs outside ``ORGAN_COLOR`` (other organ sets), in label-id order.
EXTRA_ORGAN_COLORS: tuple[str, ...] = ("#E25822", "#604E97", "#F99379", "#654522", "#B3446C", "#DCD300",
                                       "#2B3D26", "#848482", "#F6A600", "#000000")
#: Rendered for every figure: a 300-dpi PNG (print) and an SVG (vector, editable).
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")
FIGURE_DPI = 300


def organ_colors(names: Mapping[int, str]) -> dict[int, str]:
    """``{label id: colour}``: the organ's own colour, or the next spare one for organs not in umd13."""
    spare = iter(EXTRA_ORGAN_COLORS * (1 + len(names) // len(EXTRA_ORGAN_COLORS)))
    return {i: ORGAN_COLOR.get(str(names[i])) or next(spare) for i in sorted(names)}


def worse_text(metric: str, cmp: str) -> tuple[str, str]:
    """``(left, right)`` arrow labels of a paired-difference axis: which side means worse on ``cmp``."""
    if HIGHER_IS_BETTER.get(metric, True):
        return f"\u2190 worse on {cmp}", "better \u2192"
    return "\u2190 better", f"worse on {cmp} \u2192"


def to_png(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """Render ``fig`` to PNG bytes (RGB, its resolution stored) with the Agg canvas.

    The figures lay themselves out (``layout="constrained"``), so no ``bbox_inches="tight"``: that
    renders every figure twice. RGB without the alpha channel (the figures are opaque) and a fast
    zlib level: at 300 dpi about a fifth less time and an eighth less bytes than matplotlib's RGBA PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    old = fig.dpi
    fig.set_dpi(dpi)
    try:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    finally:
        fig.set_dpi(old)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="png", compress_level=1, dpi=(dpi, dpi))
    return buf.getvalue()


def save_figure(fig: Figure, stem: str | Path, dpi: int = FIGURE_DPI,
                formats: Sequence[str] = FIGURE_FORMATS) -> dict[str, Path]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format (``png``, ``svg``); returns ``{fmt: path}``."""
    stem = Path(stem)
    out = {}
    engine = fig.get_layout_engine()
    try:
        for k, fmt in enumerate(formats):
            path = stem.with_suffix(f".{fmt}")
            if fmt == "png":
                path.write_bytes(to_png(fig, dpi))
            else:
                # images inside an SVG are embedded at the figure's dpi: 150 keeps overlays sharp at half the bytes
                fig.savefig(path, format=fmt, dpi=min(dpi, 150), metadata={"Date": None})
            out[fmt] = path
            if k == 0 and engine is not None:
                # positions are in figure fractions and fonts in points: the first render's layout holds
                # for the others, so it is not solved again (it costs as much as drawing)
                fig.set_layout_engine("none")
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return out


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
    better = "higher" if HIGHER_IS_BETTER.get(metric, True) else "lower"
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} ({better} is better)")
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
    fig.colorbar(im, ax=ax, label=f"{METRIC_LABEL.get(metric, metric)} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(f"{model}: mean {METRIC_LABEL.get(metric, metric)} per view and organ")
    return fig


def forest_plot(disc: pd.DataFrame, model: str, metric: str = "dice",
                xlim: tuple[float, float] | None = None) -> Figure | None:
    """Mean paired difference with its CI per organ, one panel per pair kind, on one shared x-axis.

    Markers take the colour of the compared view (:data:`VIEW_COLOR`); filled: Holm-adjusted p below
    alpha (the ``significant`` column), hollow: not significant or untested. Arrows under each
    panel say which side of zero is worse on the compared view.

    Args:
        disc: output of :func:`discrepancy.discrepancy_table`.
        model: model to draw.
        metric: metric to draw.
        xlim: x-range shared with other models' forest plots of this metric (default: this table's).
    """
    d = disc[(disc["model"] == model) & (disc["metric"] == metric)]
    if d.empty or not np.isfinite(d["mean_diff"].to_numpy(np.float64)).any():
        return None
    kinds = list(pd.unique(d["pair_kind"]))
    organs = list(pd.unique(d["organ"]))
    fig = Figure(figsize=(3.2 * len(kinds) + 1.2, 1.5 + 0.32 * len(organs)), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True, sharex=True)[0]
    y = np.arange(len(organs))[::-1]
    label = METRIC_LABEL.get(metric, metric)
    for ax, kind in zip(axes, kinds):
        g = d[d["pair_kind"] == kind].set_index("organ").reindex(organs)
        mean = g["mean_diff"].to_numpy(np.float64)
        lo = g["ci_low"].to_numpy(np.float64)
        hi = g["ci_high"].to_numpy(np.float64)
        sig = g["significant"].fillna(False).to_numpy(bool)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ref, cmp = str(g["ref_view"].dropna().iloc[0]), str(g["cmp_view"].dropna().iloc[0])
        color = VIEW_COLOR.get(cmp, "k")
        ax.hlines(y[ok], lo[ok], hi[ok], color=color, lw=1.5)
        fin = np.isfinite(mean)
        ax.scatter(mean[fin & sig], y[fin & sig], color=color, zorder=3, s=30)
        ax.scatter(mean[fin & ~sig], y[fin & ~sig], facecolor="white", edgecolor=color, zorder=3, s=30)
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{cmp} vs {ref}", fontsize=9, color=color)
        left, right = worse_text(metric, cmp)
        ax.set_xlabel(f"{cmp} - {ref} ({label})\n{left}    {right}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if xlim is not None and all(np.isfinite(xlim)) and xlim[1] > xlim[0]:
        axes[0].set_xlim(*xlim)
    axes[0].set_yticks(y, organs, fontsize=8)
    handles = [
        Line2D([], [], ls="", marker="o", color="0.3", label="Holm p < alpha"),
        Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3", label="not significant"),
        *(Patch(color=VIEW_COLOR[v], label=f"compared view {v}") for v in VIEW_COLOR if v in set(d["cmp_view"])),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    fig.suptitle(f"{model}: paired {label} difference with 95% CI per organ")
    return fig


def forest_limits(disc: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """x-range covering every model's means and CIs of ``metric`` (0 included), with a 5% margin."""
    d = disc[disc["metric"] == metric]
    vals = d[["mean_diff", "ci_low", "ci_high"]].to_numpy(np.float64).ravel()
    vals = np.append(vals[np.isfinite(vals)], 0.0)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        return None
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def reported_vs_measured(gap: pd.DataFrame) -> Figure | None:
    """Measured macro Dice (bars) against the model's reported Dice (black ticks) per model x view.

    Only the model x view pairs with a reported value are drawn; ``None`` when there is none (a figure
    without a reference would compare nothing).

    Args:
        gap: output of :func:`discrepancy.generalisation_gap`.
    """
    if gap.empty or "reported_dice" not in gap.columns:
        return None
    gap = gap[np.isfinite(gap["reported_dice"].to_numpy(np.float64))]
    if gap.empty:
        return None
    models = list(pd.unique(gap["model"]))
    views = [v for v in VIEW_COLOR if v in set(gap["view"])] + sorted(set(gap["view"]) - set(VIEW_COLOR))
    width = 0.8 / max(len(views), 1)
    fig = Figure(figsize=(2.6 + 1.2 * len(models) * max(1, len(views)) / 2, 3.8), layout="constrained")
    ax = fig.subplots()
    for j, view in enumerate(views):
        g = gap[gap["view"] == view].set_index("model").reindex(models)
        x = np.arange(len(models)) + (j - (len(views) - 1) / 2) * width
        ax.bar(x, g["measured_dice"].to_numpy(np.float64), width * 0.95, color=VIEW_COLOR.get(view, "0.5"),
               label=f"measured, {view}")
        rep = g["reported_dice"].to_numpy(np.float64)
        ok = np.isfinite(rep)
        ax.hlines(rep[ok], x[ok] - width * 0.45, x[ok] + width * 0.45, color="k", lw=2)
    ax.plot([], [], color="k", lw=2, label="reported (paper)")
    ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("macro Dice (higher is better)")
    fig.legend(fontsize=7, loc="outside right upper")
    ax.set_title("Reported vs measured Dice", fontsize=10)
    return fig


def main_figures(
    df: pd.DataFrame,
    disc: pd.DataFrame,
    gap: pd.DataFrame,
    metrics: Sequence[str] = ("dice", "hd95", "nsd"),
) -> dict[str, Figure]:
    """The standard figure set, named ``<kind>_<model>[_<metric>]`` (names are file stems).

    Per model: Dice slope plot, Dice view x organ heatmap, one forest plot per metric (every
    model's on the same x-range); and one reported-vs-measured figure where any Dice is reported.
    """
    figs: dict[str, Figure | None] = {}
    df = normalise(df)
    limits = {m: forest_limits(disc, m) for m in metrics if m in set(disc["metric"])}
    for model in pd.unique(df["model"]):
        tag = safe_name(model)
        figs[f"slope_{tag}_dice"] = slope_plot(df, model, "dice")
        figs[f"heatmap_{tag}_dice"] = view_organ_heatmap(df, model, "dice")
        for m in metrics:
            if m in set(disc["metric"]):
                figs[f"forest_{tag}_{m}"] = forest_plot(disc, model, m, xlim=limits[m])
    figs["reported_vs_measured"] = reported_vs_measured(gap)
    return {k: v for k, v in figs.items() if v is not None}


def safe_name(text: str) -> str:
    """File-name-safe version of a model name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)) or "model"


__all__ = [
    "FIGURE_DPI", "FIGURE_FORMATS", "ORGAN_COLOR", "VIEW_COLOR", "forest_limits", "forest_plot", "main_figures",
    "organ_colors", "reported_vs_measured", "safe_name", "save_figure", "slope_plot", "to_png",
    "view_organ_heatmap", "worse_text",
]
