"""The analysis pipeline (tables + figures from a results table) and the self-contained HTML report.

``analyze`` computes everything in memory, ``write_analysis`` writes it into a folder, and
``write_report`` renders ``report.html`` from what a folder holds (CSV tables, ``figures/*.png``,
``analysis.meta.json``), so callbacks that add figures later (overlays) can re-render it. Figures
are embedded as base64 PNG data URIs: the report is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..organs import get_organ_set
from ..results import EMPTY_POLICIES, normalise, validate_results
from .discrepancy import (
    DEFAULT_METRICS,
    discrepancy_table,
    generalisation_gap,
    reported_from_meta,
    select_cases,
    sensitivity_table,
    view_summary,
)
from .failure import OVER_RATIO, STRAY_MM, failure_figures, failure_modes, volume_agreement
from .figures import main_figures, to_png
from .overlay import overlay_figures

#: File names written into an analysis folder, by table.
TABLE_FILES: dict[str, str] = {
    "discrepancy": "discrepancy.csv",
    "view_summary": "view_summary.csv",
    "generalisation_gap": "generalisation_gap.csv",
    "sensitivity": "sensitivity.csv",
    "selected_cases": "selected_cases.csv",
    "failure_modes": "failure_modes.csv",
    "volume_agreement": "volume_agreement.csv",
}
META_FILE = "analysis.meta.json"
REPORT_FILE = "report.html"
FIGURE_DIR = "figures"
_FIGURE_ORDER = ("slope", "heatmap", "forest", "reported_vs_measured", "overlay")


@dataclass
class Analysis:
    """Everything the discrepancy analysis computes from one (combined) results table."""

    discrepancy: pd.DataFrame
    view_summary: pd.DataFrame
    generalisation_gap: pd.DataFrame
    sensitivity: pd.DataFrame
    selected_cases: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failure_modes: pd.DataFrame = field(default_factory=pd.DataFrame)
    volume_agreement: pd.DataFrame = field(default_factory=pd.DataFrame)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: getattr(self, name) for name in TABLE_FILES}


def organ_names(meta: Mapping[str, Any], df: pd.DataFrame) -> dict[int, str]:
    """``{label id: organ}`` from the table's ``label_id`` column, else from the meta's organ set."""
    if "label_id" in df.columns:
        pairs = df[["label_id", "organ"]].dropna().drop_duplicates()
        return {int(i): str(o) for i, o in zip(pairs["label_id"], pairs["organ"])}
    try:
        return dict(get_organ_set(meta.get("organ_set", "umd13")).labels)
    except (ValueError, TypeError):
        return {}


def analyze(
    df: pd.DataFrame,
    meta: Mapping[str, Any] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
    figures: bool = True,
    overlays: bool = False,
    reported: Mapping[str, Mapping[str, float]] | None = None,
) -> Analysis:
    """Run the discrepancy analysis on a results table.

    Args:
        df: results table (one row per case x organ).
        meta: its metadata (``empty_policy``, ``reported_dice``, ...).
        metrics: metric columns to analyse.
        n_boot: bootstrap resamples per CI.
        seed: bootstrap seed (each row derives its own stream from it).
        level: CI level.
        alpha: family-wise level for the Holm-adjusted ``significant`` column.
        figures: build the standard figures.
        overlays: also build best/median/worst overlays from the table's NIfTI paths (missing files
            are skipped with a note).
        reported: ``{model: {view or "overall": dice}}``; default from ``meta["reported_dice"]``.

    Returns:
        An :class:`Analysis`.

    Raises:
        ValueError: on missing columns or an unknown ``meta["empty_policy"]``.
    """
    meta = dict(meta or {})
    df = normalise(validate_results(df))
    metrics = [m for m in metrics if m in df.columns]
    models = list(pd.unique(df["model"]))
    policy = meta.get("empty_policy", "worst")
    if policy not in EMPTY_POLICIES:
        raise ValueError(f"results meta: unknown empty_policy {policy!r}; expected one of {EMPTY_POLICIES}")
    notes: list[str] = []
    if "empty_policy" not in meta:
        notes.append("results meta has no empty_policy; assumed 'worst'")
    if reported is None:
        reported = reported_from_meta(meta, models)
    disc = discrepancy_table(df, metrics, n_boot=n_boot, seed=seed, level=level, alpha=alpha)
    gap = generalisation_gap(df, reported)
    sens = sensitivity_table(df, policy, metrics, alpha=alpha, discrepancy_run=disc)
    selected = select_cases(df, "dice")
    figs: dict[str, Figure] = main_figures(df, disc, gap, metrics) if figures else {}
    modes, agreement = failure_modes(df), volume_agreement(df, level=level)
    if figures:
        figs.update(failure_figures(df, modes, agreement))
    if overlays:
        over, skipped = overlay_figures(selected, organ_names(meta, df))
        figs.update(over)
        notes += [f"overlay skipped: {s}" for s in skipped]
    info = {
        "results_meta": meta,
        "analysis": {"metrics": list(metrics), "n_boot": n_boot, "seed": seed, "level": level, "alpha": alpha,
                     "empty_policy": policy, "models": models,
                     "n_subjects": int(df["subject_id"].nunique()), "n_rows": int(len(df)),
                     "failure_modes": {"over_segmented_ratio": OVER_RATIO, "stray_component_mm": STRAY_MM}},
        "notes": notes,
    }
    return Analysis(disc, view_summary(df, metrics), gap, sens, selected, figs, info, notes,
                    failure_modes=modes, volume_agreement=agreement)


def write_analysis(
    analysis: Analysis,
    out_dir: str | Path,
    write_report_html: bool = True,
    title: str | None = None,
    dpi: int = 100,
) -> dict[str, Any]:
    """Write tables (CSV), figures (``figures/<name>.png``), metadata and optionally the report.

    Args:
        analysis: from :func:`analyze`.
        out_dir: target folder (created).
        write_report_html: also render ``report.html``.
        title: report title.
        dpi: PNG resolution.

    Returns:
        ``{"tables": {name: path}, "figures": {name: path}, "meta": path, "report": path | None}``.
    """
    out = Path(out_dir)
    (out / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
    tables = {}
    for name, table in analysis.tables().items():
        path = out / TABLE_FILES[name]
        table.to_csv(path, index=False)
        tables[name] = path
    figures = write_figures(analysis.figures, out, dpi=dpi)
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(analysis.meta, indent=2, default=str))
    report = write_report(out, title=title) if write_report_html else None
    return {"tables": tables, "figures": figures, "meta": meta_path, "report": report}


def write_figures(figs: Mapping[str, Figure], out_dir: str | Path, dpi: int = 100) -> dict[str, Path]:
    """Save each figure as ``out_dir/figures/<name>.png``; returns ``{name: path}``."""
    fig_dir = Path(out_dir) / FIGURE_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figs.items():
        path = fig_dir / f"{name}.png"
        path.write_bytes(to_png(fig, dpi=dpi))
        paths[name] = path
    return paths


# --------------------------------------------------------------------------- combining tables


def combine_results(
    tables: Sequence[tuple[pd.DataFrame, Mapping[str, Any], str]],
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, dict[str, float]]]:
    """Stack several results tables (e.g. several models' runs) for one side-by-side analysis.

    Args:
        tables: ``(table, meta, source)`` per results file.

    Returns:
        ``(table, meta, reported)``: the stacked table, merged metadata (values that differ between
        files become a ``{source: value}`` dict; ``sources`` lists the files) and the reported Dice
        per model from each file's own metadata.

    Raises:
        ValueError: if the files were scored under different empty policies, or two files hold the
            same model name (their rows would be pooled as one model).
    """
    if not tables:
        raise ValueError("combine_results: no results tables given")
    owner: dict[str, str] = {}
    reported: dict[str, dict[str, float]] = {}
    frames = []
    for df, meta, source in tables:
        df = normalise(validate_results(df, source))
        for model in pd.unique(df["model"]):
            if model in owner:
                raise ValueError(
                    f"model {model!r} appears in both {owner[model]} and {source}; rename one model "
                    "(the 'model' column) or analyse the files separately"
                )
            owner[model] = source
        reported.update(reported_from_meta(meta, pd.unique(df["model"])))
        frames.append(df)
    policies = {src: meta.get("empty_policy", "worst") for _, meta, src in tables}
    if len(set(policies.values())) > 1:
        raise ValueError(f"results tables use different empty policies {policies}; re-score them with one policy")
    merged: dict[str, Any] = {"sources": [src for _, _, src in tables]}
    keys = list(dict.fromkeys(k for _, meta, _ in tables for k in meta if k not in ("reported_dice", "model")))
    for key in keys:
        vals = {src: meta.get(key) for _, meta, src in tables}
        uniq = {json.dumps(v, sort_keys=True, default=str) for v in vals.values()}
        merged[key] = next(iter(vals.values())) if len(uniq) == 1 else vals
    return pd.concat(frames, ignore_index=True), merged, reported


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.sig td{background:#fff2e6}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
.meta td{text-align:left}.note{color:#8a4b00}
details summary{cursor:pointer;font-weight:600;margin:.5em 0}
"""

_FIGURE_CAPTIONS = {
    "slope": "Paired slopes per organ from each anatomical view to its PET (grey: one subject; colour: mean).",
    "heatmap": "Mean Dice per view and organ.",
    "forest": "Mean paired difference (compared - reference) with 95% bootstrap CI; filled: Holm-adjusted "
              "p below alpha.",
    "reported_vs_measured": "Measured macro Dice per view against the Dice the model's paper reports.",
    "overlay": "Best, median and worst case of the view (by case mean Dice): prediction filled, reference "
               "outlined.",
}


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _table_html(df: pd.DataFrame | None, highlight: str | None = None, digits: int = 3) -> str:
    if df is None:
        return "<p>(not computed)</p>"
    if df.empty:
        return "<p>(empty)</p>"
    cols = list(df.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                if not np.isfinite(v):
                    text = "&ndash;"
                elif 1e-12 < abs(v) < 10 ** -digits:  # small p-values stay readable
                    text = f"{v:.2e}"
                else:
                    text = f"{0.0 if abs(v) <= 1e-12 else v:.{digits}f}"
            else:
                text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else html.escape(str(v))
            cells.append(f"<td>{text}</td>")
        sig = highlight is not None and bool(row.get(highlight, False)) is True
        cls = " class='sig'" if sig else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_kind(name: str) -> str:
    for kind in _FIGURE_ORDER:
        if name.startswith(kind):
            return kind
    return "other"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_report(run_dir: str | Path, title: str | None = None) -> str:
    """The HTML report of an analysis folder, with every ``figures/*.png`` inlined as a data URI.

    Args:
        run_dir: folder holding the files :func:`write_analysis` writes (missing ones are shown as
            not computed).
        title: page title; default from the folder name.

    Returns:
        One self-contained HTML document.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / META_FILE
    info = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    rmeta = info.get("results_meta", {})
    ameta = info.get("analysis", {})
    title = title or f"Modality discrepancy report: {run_dir.resolve().name}"
    t = {name: _read_csv(run_dir / fname) for name, fname in TABLE_FILES.items()}

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    meta_rows = {
        "models": ", ".join(map(str, ameta.get("models", []))),
        "subjects / rows": f"{ameta.get('n_subjects', '?')} / {ameta.get('n_rows', '?')}",
        "empty-mask policy": ameta.get("empty_policy", rmeta.get("empty_policy", "?")),
        "HD definition": str(rmeta.get("hd_definition", "?"))
        + (f", percentile {rmeta['hd_percentile']:g}" if isinstance(rmeta.get("hd_percentile"), (int, float)) else ""),
        "NSD tolerance (mm)": rmeta.get("nsd_tolerance_mm", "?"),
        "organ set": rmeta.get("organ_set", "?"),
        "bootstrap": f"{ameta.get('n_boot', '?')} resamples, seed {ameta.get('seed', '?')}, "
                     f"level {ameta.get('level', '?')}",
        "Holm alpha": ameta.get("alpha", "?"),
        "sources": ", ".join(map(str, rmeta.get("sources", []))) or "-",
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    parts.append("<table class='meta'>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta_rows.items()) + "</table>")
    parts.append("<p>Paired differences are <b>compared - reference</b> over subjects with both views: for Dice "
                 "and NSD negative means worse in the compared view, for HD95 positive does. p: Wilcoxon "
                 "signed-rank; p_holm: Holm-adjusted across organs within model x pair kind x metric; "
                 "effect_dz: mean difference / SD of differences.</p>")
    for note in info.get("notes", []):
        parts.append(f"<p class='note'>{html.escape(str(note))}</p>")

    vs = t["view_summary"]
    parts.append("<h2>Per view</h2>")
    if vs is not None and not vs.empty:
        cols = [c for c in ("model", "view", "n_rows", "dice_mean", "dice_median", "dice_q1", "dice_q3",
                            "dice_iqr", "hd95_median", "nsd_median", "failure_rate", "missed_rate",
                            "n_both_empty", "n_not_predicted", "n_failed") if c in vs.columns]
        parts.append(_table_html(vs[vs["organ"] == "all"][cols]))
        parts.append("<details><summary>per organ</summary>" + _table_html(vs) + "</details>")
    else:
        parts.append(_table_html(vs))

    disc = t["discrepancy"]
    parts.append("<h2>Paired discrepancy</h2>")
    if disc is not None and not disc.empty:
        cols = ["model", "pair_kind", "organ", "n", "mean_ref", "mean_cmp", "mean_diff", "ci_low", "ci_high",
                "p", "p_holm", "effect_dz", "significant", "reason"]
        for metric in pd.unique(disc["metric"]):
            d = disc[disc["metric"] == metric]
            block = _table_html(d[[c for c in cols if c in d.columns]], highlight="significant")
            if metric == "dice":
                parts.append(f"<h3>{html.escape(str(metric))}</h3>{block}")
            else:
                parts.append(f"<details><summary>{html.escape(str(metric))}</summary>{block}</details>")
    else:
        parts.append(_table_html(disc))

    parts.append("<h2>Generalisation gap (reported - measured Dice)</h2>" + _table_html(t["generalisation_gap"]))
    parts.append("<h2>Sensitivity to the empty-mask policy</h2><p>Headline numbers with one-sided empty "
                 "rows (missed / false positive) scored as worst case versus excluded; delta = exclude - "
                 "worst.</p>")
    sens = t["sensitivity"]
    if sens is not None and not sens.empty and "metric" in sens.columns:
        parts.append(_table_html(sens[sens["metric"] == "dice"]))
        rest = sens[sens["metric"] != "dice"]
        if len(rest):
            parts.append("<details><summary>other metrics</summary>" + _table_html(rest) + "</details>")
    else:
        parts.append(_table_html(sens))

    fig_dir = run_dir / FIGURE_DIR
    pngs = sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []
    pngs.sort(key=lambda p: (_FIGURE_ORDER.index(_figure_kind(p.stem)) if _figure_kind(p.stem) in _FIGURE_ORDER
                             else len(_FIGURE_ORDER), p.stem))
    parts.append("<h2>Figures</h2>")
    if not pngs:
        parts.append("<p>(no figures)</p>")
    for p in pngs:
        cap = _FIGURE_CAPTIONS.get(_figure_kind(p.stem), "")
        parts.append(f"<figure id='{html.escape(p.stem)}'><img alt='{html.escape(p.stem)}' src='{_data_uri(p)}'>"
                     f"<figcaption><b>{html.escape(p.stem)}</b>. {html.escape(cap)}</figcaption></figure>")
    if t["selected_cases"] is not None and not t["selected_cases"].empty:
        parts.append("<details><summary>cases shown in overlays</summary>" + _table_html(t["selected_cases"])
                     + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Render :func:`render_report` into ``run_dir/report.html`` and return its path."""
    path = Path(run_dir) / REPORT_FILE
    path.write_text(render_report(run_dir, title), encoding="utf-8")
    return path
