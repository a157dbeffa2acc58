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
from .exports import challenger_table, summary_json
from .failure import OVER_RATIO, STRAY_MM, failure_figures, failure_modes, volume_agreement
from .figures import FIGURE_DPI, FIGURE_FORMATS, main_figures, save_figure
from .headline import PRIMARY_METRIC, headline_table
from .methods import methods_block
from .overlay import overlay_figures
from .ranking import ranking_tables

#: File names written into an analysis folder, by table.
TABLE_FILES: dict[str, str] = {
    "discrepancy": "discrepancy.csv",
    "view_summary": "view_summary.csv",
    "generalisation_gap": "generalisation_gap.csv",
    "sensitivity": "sensitivity.csv",
    "selected_cases": "selected_cases.csv",
    "failure_modes": "failure_modes.csv",
    "volume_agreement": "volume_agreement.csv",
    "headline": "headline.csv",
    "ranking": "ranking.csv",
    "ranking_pairs": "ranking_pairs.csv",
    "challenger": "challenger.csv",
}
META_FILE = "analysis.meta.json"
#: nnU-Net-style summary of the cases (``exports.summary_json``).
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
FIGURE_DIR = "figures"


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
    headline: pd.DataFrame = field(default_factory=pd.DataFrame)
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)
    ranking_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    challenger: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: dict[str, Any] = field(default_factory=dict)

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
    mixed_metrics: Sequence[str] = (PRIMARY_METRIC,),
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
        mixed_metrics: metrics whose headline rows get the mixed-model check.

    Returns:
        An :class:`Analysis`; ``meta["methods"]`` states the endpoint, tests, families, intervals,
        voxel spacing and caveats (``methods.methods_block``).

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
    head = headline_table(df, metrics, n_boot=n_boot, seed=seed, level=level, alpha=alpha, mixed_metrics=mixed_metrics)
    ranking, ranking_pairs = ranking_tables(df, metrics, n_boot=n_boot, seed=seed, level=level, alpha=alpha)
    methods = methods_block(df, meta, disc, head, n_boot, level, alpha, mixed_metrics)
    if methods["nsd_tolerance_note"]:
        notes.append(methods["nsd_tolerance_note"])
    selected = select_cases(df, "dice")
    figs: dict[str, Figure] = main_figures(df, disc, gap, metrics) if figures else {}
    modes, agreement = failure_modes(df), volume_agreement(df, level=level)
    if figures:
        figs.update(failure_figures(df, modes, agreement))
    if overlays:
        over, skipped = overlay_figures(selected, organ_names(meta, df), results=df)
        figs.update(over)
        notes += [f"overlay skipped: {s}" for s in skipped]
    info = {
        "results_meta": meta,
        "analysis": {"metrics": list(metrics), "n_boot": n_boot, "seed": seed, "level": level, "alpha": alpha,
                     "empty_policy": policy, "models": models,
                     "n_subjects": int(df["subject_id"].nunique()), "n_rows": int(len(df)),
                     "failure_modes": {"over_segmented_ratio": OVER_RATIO, "stray_component_mm": STRAY_MM}},
        "methods": methods,
        "notes": notes,
    }
    return Analysis(disc, view_summary(df, metrics), gap, sens, selected, figs, info, notes,
                    failure_modes=modes, volume_agreement=agreement, headline=head, ranking=ranking,
                    ranking_pairs=ranking_pairs, challenger=challenger_table(df, metrics), summary=summary_json(df))


def write_analysis(
    analysis: Analysis,
    out_dir: str | Path,
    write_report_html: bool = True,
    title: str | None = None,
    dpi: int = FIGURE_DPI,
    processes: int = 1,
) -> dict[str, Any]:
    """Write tables (CSV), figures (``figures/<name>.png`` and ``.svg``), metadata and optionally the report.

    Args:
        analysis: from :func:`analyze`.
        out_dir: target folder (created).
        write_report_html: also render ``report.html``.
        title: report title.
        dpi: PNG resolution.
        processes: processes that save figures (see :func:`write_figures`).

    Returns:
        ``{"tables": {name: path}, "figures": {name: path}, "meta": path, "report": path | None,
        "summary": path of summary.json | None}``.
    """
    out = Path(out_dir)
    (out / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
    tables = {}
    for name, table in analysis.tables().items():
        path = out / TABLE_FILES[name]
        table.to_csv(path, index=False)
        tables[name] = path
    summary = None
    if analysis.summary:
        summary = out / SUMMARY_FILE
        summary.write_text(json.dumps(analysis.summary, indent=1, allow_nan=False))
    figures = write_figures(analysis.figures, out, dpi=dpi, processes=processes)
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(analysis.meta, indent=2, default=str))
    report = write_report(out, title=title) if write_report_html else None
    return {"tables": tables, "figures": figures, "meta": meta_path, "report": report, "summary": summary}


def write_figures(figs: Mapping[str, Figure], out_dir: str | Path, dpi: int = FIGURE_DPI,
                  formats: Sequence[str] = FIGURE_FORMATS, processes: int = 1) -> dict[str, Path]:
    """Save each figure as ``out_dir/figures/<name>.png`` (``dpi``) and ``.svg``; returns ``{name: png path}``.

    Args:
        figs: figures by file stem.
        out_dir: analysis folder.
        dpi: PNG resolution.
        formats: file formats.
        processes: with more than one (and where processes can be forked), forked children save a
            share of the figures each: they inherit the figures, nothing is pickled, and the 300-dpi
            rendering, most of the analysis' time, runs on every core.

    Raises:
        RuntimeError: a child process failed to save its share.
    """
    import multiprocessing as mp

    fig_dir = Path(out_dir) / FIGURE_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: fig_dir / f"{name}.png" for name in figs}
    shares = _shares(figs, processes)

    def save(share: Sequence[str]) -> None:
        for name in share:
            save_figure(figs[name], fig_dir / name, dpi=dpi, formats=formats)

    if len(shares) < 2 or "fork" not in mp.get_all_start_methods():
        save(list(figs))
        return paths
    children = [mp.get_context("fork").Process(target=save, args=(share,), daemon=True) for share in shares[1:]]
    for child in children:
        child.start()
    save(shares[0])
    for child, share in zip(children, shares[1:]):
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"saving figures {', '.join(share)} failed (exit code {child.exitcode})")
    return paths


def _shares(figs: Mapping[str, Figure], processes: int) -> list[list[str]]:
    """Figure names split into ``processes`` shares of about equal drawing work (axes count as the cost)."""
    shares: list[list[str]] = [[] for _ in range(max(1, min(int(processes), len(figs))))]
    load = [0] * len(shares)
    for name in sorted(figs, key=lambda n: -len(figs[n].axes)):  # largest first, each to the lightest share
        k = load.index(min(load))
        shares[k].append(name)
        load[k] += len(figs[name].axes) + 1
    return [s for s in shares if s]


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
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.sig td{background:#fff2e6}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
.meta td{text-align:left}.note{color:#8a4b00}
#headline p.lead{font-size:1.15em;background:#f5f9ff;border-left:4px solid #0072B2;padding:.5em .8em}
dl.methods dt{font-weight:600;margin-top:.4em}dl.methods dd{margin-left:1.5em}
details summary{cursor:pointer;font-weight:600;margin:.5em 0}.scroll{overflow-x:auto}
"""

_FIGURE_ORDER = ("forest", "slope", "heatmap", "overlay", "dice_vs_volume", "bland_altman", "suv_agreement",
                 "reported_vs_measured")
_FIGURE_CAPTIONS = {
    "slope": "Paired slopes per organ from each anatomical view to its PET (grey: one subject; colour: the "
             "PET view's mean).",
    "heatmap": "Mean Dice per view and organ.",
    "forest": "Mean paired difference (compared - reference) with its 95% CI per organ, every panel on one "
              "x-axis; the arrows say which side is worse; filled: Holm-adjusted p below alpha.",
    "reported_vs_measured": "Measured macro Dice per view against the Dice the model's paper reports (only "
                            "where one is reported).",
    "overlay": "Best, median and worst case of the view (by case mean Dice), planes through each case's worst "
               "organ: prediction filled, reference outlined; R/L, A/P, S/I from the image affine; PET in SUV.",
    "dice_vs_volume": "Dice against the reference organ volume.",
    "bland_altman": "Bland-Altman agreement of predicted and reference volumes.",
    "suv_agreement": "SUVmean inside the predicted mask against inside the reference mask (PET views).",
}

#: Readable table headers, by raw column name; other columns get :func:`readable_column`'s generic form.
COLUMN_NAMES: dict[str, str] = {
    "model": "Model", "view": "View", "pair_kind": "Pair", "ref_view": "Reference view",
    "cmp_view": "Compared view", "organ": "Organ", "metric": "Metric", "n": "Subjects (n)",
    "mean_ref": "Mean, reference", "mean_cmp": "Mean, compared", "mean_diff": "Mean difference (compared - reference)",
    "ci_low": "CI low", "ci_high": "CI high", "p": "p (Wilcoxon)", "p_holm": "p (Holm)", "significant": "Significant",
    "effect_dz": "Effect size d_z", "cmp_worse": "Worse on compared view", "reason": "Note", "n_rows": "Rows",
    "n_nonzero": "Non-zero differences", "min_attainable_p": "Smallest attainable p", "underpowered": "Underpowered",
    "k_worse": "Subjects worse", "n_compared": "Subjects compared", "n_worse_of": "Subjects compared",
    "sign_consistent": "Same sign in all", "ci_method": "Interval", "dz_flag": "d_z caveat", "both_failed": "Both failed",
    "n_subjects": "Subjects", "n_organs": "Organs", "organs_worse": "Organs worse", "mixed_coef": "Mixed model: view effect",
    "mixed_ci_low": "Mixed model CI low", "mixed_ci_high": "Mixed model CI high", "mixed_p": "Mixed model p",
    "mixed_note": "Mixed model note", "sentence": "Headline", "rank": "Rank (1 = best)", "rank_ci_low": "Rank CI low",
    "rank_ci_high": "Rank CI high", "p_first": "Share of bootstraps ranked first",
    "rank_change_vs_ref": "Rank change vs structural view", "failure_rate": "Failure rate", "missed_rate": "Missed rate",
    "n_both_empty": "Both empty", "n_not_predicted": "Not predicted", "n_failed": "Failed", "scope": "Scope",
    "quantity": "Quantity", "value_worst": "Worst-case policy", "value_exclude": "Exclude policy",
    "delta": "Delta (exclude - worst)", "policy_run": "Policy of the run", "reported_dice": "Reported Dice",
    "measured_dice": "Measured Dice", "gap": "Gap (reported - measured)", "case_id": "Case", "subject_id": "Subject",
    "which": "Shown as", "score": "Case mean Dice",
}
_TOKENS = {"dice": "Dice", "hd95": "HD95", "nsd": "NSD", "assd": "ASSD", "ci": "CI", "iqr": "IQR", "q1": "Q1",
           "q3": "Q3", "suv": "SUV", "mm": "(mm)", "ml": "(ml)", "p": "p", "n": "n", "ref": "reference",
           "pred": "predicted", "cmp": "compared", "loa": "limit of agreement"}


def readable_column(col: str) -> str:
    """A table header in words: ``COLUMN_NAMES`` or the raw name with its tokens spelled out."""
    if col in COLUMN_NAMES:
        return COLUMN_NAMES[col]
    words = [_TOKENS.get(w, w) for w in str(col).split("_") if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else str(col)


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "&ndash;"
        if 1e-12 < abs(v) < 10 ** -digits:  # small p-values stay readable
            return f"{v:.2e}"
        return f"{0.0 if abs(v) <= 1e-12 else v:.{digits}f}"
    return "" if v is None else html.escape(str(v))


def _table_html(df: pd.DataFrame | None, highlight: str | None = None, digits: int = 3) -> str:
    if df is None:
        return "<p>(not computed)</p>"
    if df.empty:
        return "<p>(empty)</p>"
    cols = list(df.columns)
    head = "".join(f"<th title='{html.escape(str(c))}'>{html.escape(readable_column(str(c)))}</th>" for c in cols)
    body = []
    for _, row in df.iterrows():
        cells = "".join(f"<td>{_cell(row[c], digits)}</td>" for c in cols)
        sig = highlight is not None and bool(row.get(highlight, False)) is True
        body.append(f"<tr{' class=sig' if sig else ''}>{cells}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _figure_kind(name: str) -> str:
    for kind in _FIGURE_ORDER:
        if name.startswith(kind):
            return kind
    return "other"


def _data_uri(path: Path) -> str:
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float, np.floating)) and np.isfinite(v) else "?"


def headline_sentences(tables: Mapping[str, pd.DataFrame | None]) -> tuple[list[str], str]:
    """The plain-words headline: ``headline.csv``'s sentences, else one per model x PET pair from the
    discrepancy table (organ-averaged Dice difference, without an interval).

    Returns:
        ``(sentences, source)`` where ``source`` names the table they come from.
    """
    head = tables.get("headline")
    if head is not None and not head.empty and "sentence" in head.columns:
        order = {"dice": 0, "nsd": 1, "hd95": 2}
        h = head.assign(_m=head["metric"].map(order).fillna(9) if "metric" in head.columns else 0)
        h = h.sort_values("_m", kind="stable")
        h = h[h["sentence"].notna() & h["sentence"].astype(str).str.strip().ne("")]
        if "metric" in h.columns:  # Dice first, then the other metrics behind a fold
            h = pd.concat([h[h["metric"] == "dice"], h[h["metric"] != "dice"]])
        return [str(x) for x in h["sentence"]], "headline"
    disc = tables.get("discrepancy")
    if disc is None or disc.empty:
        return [], ""
    out = []
    # the structural -> PET pairs (CT vs PET_CT, MRI vs PET_MRI): the question the benchmark asks
    d = disc[(disc["metric"] == "dice") & disc["cmp_view"].astype(str).str.startswith("PET")
             & ~disc["ref_view"].astype(str).str.startswith("PET")]
    for (model, kind), g in d.groupby(["model", "pair_kind"], sort=False):
        diff = g["mean_diff"].to_numpy(np.float64)
        diff = diff[np.isfinite(diff)]
        if not len(diff):
            continue
        ref, cmp = g["ref_view"].iloc[0], g["cmp_view"].iloc[0]
        m = float(diff.mean())
        worse = int((diff < 0).sum())
        out.append(f"On {cmp}, {model}'s Dice is {abs(m):.2f} {'lower' if m < 0 else 'higher'} than on {ref} "
                   f"(mean over {len(diff)} organs; {worse} of {len(diff)} organs worse; no subject-clustered "
                   "interval in this folder)")
    return out, "discrepancy"


def _synthetic_source(run_dir: Path, rmeta: Mapping[str, Any]) -> bool:
    """Whether the run read the built-in synthetic cohort (its ``run_manifest.json`` says so)."""
    folders = [run_dir] + [Path(str(s)).parent for s in rmeta.get("sources", []) or []]
    for folder in folders:
        path = folder / "run_manifest.json"
        if path.is_file():
            try:
                cfg = json.loads(path.read_text()).get("config", {})
            except (OSError, ValueError):
                continue
            if str(((cfg.get("data") or {}).get("source") or {}).get("layout", "")) == "synthetic":
                return True
    return False


def caveats(run_dir: Path, info: Mapping[str, Any], tables: Mapping[str, pd.DataFrame | None]) -> list[str]:
    """The caveats a reader needs: ``methods.caveats`` plus those only the run folder knows
    (synthetic data, sample size, worst-case HD95, NSD tolerance) where the stats do not say them."""
    methods = info.get("methods", {}) or {}
    rmeta = info.get("results_meta", {}) or {}
    ameta = info.get("analysis", {}) or {}
    out = [str(c) for c in methods.get("caveats", []) or []]
    said = " ".join(out).lower()
    if _synthetic_source(run_dir, rmeta) and "synthetic" not in said:
        out.append("The images are the built-in synthetic cohort, not patient data: the numbers test the pipeline, "
                   "not a model's clinical accuracy.")
    n = ameta.get("n_subjects")
    if isinstance(n, int) and "subject" not in said:
        out.append(f"{n} subjects: with so few, an exact Wilcoxon test cannot reach small p-values and intervals "
                   "are wide; read the consistency of signs more than the p-values.")
    vs = tables.get("view_summary")
    if "hd95" not in said and ameta.get("empty_policy", rmeta.get("empty_policy")) == "worst":
        rate = ""
        if vs is not None and not vs.empty and {"missed_rate", "organ"} <= set(vs.columns):
            rate = f" (up to {100 * float(vs.loc[vs['organ'] == 'all', 'missed_rate'].max()):.0f}% of organs " \
                   "missed in a view)"
        out.append("HD95 of a missed or hallucinated organ is the volume diagonal (worst-case policy): a few such "
                   f"organs dominate HD95 means{rate}; the medians and Dice are less affected.")
    tol = methods.get("nsd_tolerance_mm", rmeta.get("nsd_tolerance_mm"))
    if "nsd" not in said and isinstance(tol, (int, float)):
        note = methods.get("nsd_tolerance_note") or ""
        spacing = rmeta.get("target_spacing")
        if not note and spacing:
            note = f"the model's grid has {', '.join(f'{s:g}' for s in spacing)} mm voxels"
        out.append(f"NSD counts boundary voxels within {tol:g} mm" + (f"; {note}" if note else "")
                   + ": a tolerance below the voxel size makes NSD a near-exact-boundary score.")
    return out


def _spacing_text(spacing: Any) -> Any:
    """``{"CT": {"min": 3, "max": 4}}`` as ``CT 3-4``; anything else as given."""
    if not isinstance(spacing, Mapping):
        return spacing
    parts = []
    for view, r in spacing.items():
        lo, hi = (r.get("min"), r.get("max")) if isinstance(r, Mapping) else (r, r)
        parts.append(f"{view} {lo:g}" + (f"-{hi:g}" if hi != lo else "") if isinstance(lo, (int, float))
                     and isinstance(hi, (int, float)) else f"{view} {r}")
    return ", ".join(parts)


def _methods_html(info: Mapping[str, Any]) -> str:
    methods = info.get("methods", {}) or {}
    rmeta = info.get("results_meta", {}) or {}
    ameta = info.get("analysis", {}) or {}
    items: list[tuple[str, Any]] = [
        ("Primary endpoint", methods.get("primary_endpoint")),
        ("Test", methods.get("test", "Wilcoxon signed-rank, two-sided, over subjects with both views")),
        ("Multiple comparisons", " ".join(str(x) for x in (methods.get("correction", "Holm"),
                                                           methods.get("correction_family",
                                                                       "across organs within model x pair kind x metric"))
                                          if x)),
        ("Intervals", methods.get("interval_method",
                                  f"bootstrap over subjects, {ameta.get('n_boot', '?')} resamples, level "
                                  f"{ameta.get('level', '?')}")),
        ("Headline interval", methods.get("headline_interval")),
        ("Mixed model (check)", methods.get("mixed_model")),
        ("Alpha", methods.get("alpha", ameta.get("alpha"))),
        ("Empty-mask policy", rmeta.get("empty_policy_rule") or ameta.get("empty_policy")),
        ("HD95", rmeta.get("hd_rule")),
        ("NSD", "; ".join(str(x) for x in (f"tolerance {rmeta.get('nsd_tolerance_mm', '?')} mm",
                                           methods.get("nsd_tolerance_note"), rmeta.get("nsd_rule")) if x)),
        ("Voxel spacing (mm)", _spacing_text(methods.get("voxel_spacing_mm"))),
        ("Subjects needed", methods.get("subjects_needed")),
        ("Paired differences", "compared - reference over subjects with both views: for Dice and NSD negative "
                               "means worse on the compared view, for HD95 positive does."),
    ]
    rows = []
    for key, val in items:
        if val in (None, "", {}, []):
            continue
        text = json.dumps(val) if isinstance(val, (dict, list)) else str(val)
        rows.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(text)}</dd>")
    return "<dl class='methods'>" + "".join(rows) + "</dl>"


#: Tables of the report, in order: (table, heading, columns shown first or None for all, metric split).
_SECTIONS: tuple[tuple[str, str], ...] = (
    ("ranking", "Models side by side: ranking per view"),
    ("failure_modes", "Failure modes per case and organ"),
    ("volume_agreement", "Volume agreement (Bland-Altman)"),
)


def render_report(run_dir: str | Path, title: str | None = None) -> str:
    """The HTML report of an analysis folder, every figure inlined (SVG, else PNG) as a data URI.

    Order: the headline in plain words with its interval, methods, caveats, the run's settings,
    tables with readable headers, figures.

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
    files = {**TABLE_FILES, "headline": "headline.csv", "ranking": "ranking.csv"}
    t = {name: _read_csv(run_dir / fname) for name, fname in files.items()}

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    sentences, source = headline_sentences(t)
    parts.append("<section id='headline'><h2>Headline</h2>")
    if sentences:
        n_lead = sum(1 for s in sentences if "Dice" in s) or len(sentences)
        parts += [f"<p class='lead'>{html.escape(s)}</p>" for s in sentences[:1]]
        parts += [f"<p>{html.escape(s)}</p>" for s in sentences[1:n_lead]]
        if sentences[n_lead:]:
            parts.append("<details><summary>the other metrics</summary>"
                         + "".join(f"<p>{html.escape(s)}</p>" for s in sentences[n_lead:]) + "</details>")
        if source == "discrepancy":
            parts.append("<p class='note'>headline.csv is absent: these are organ averages of the discrepancy "
                         "table, without a subject-clustered interval.</p>")
    else:
        parts.append("<p>(no paired comparison in this table)</p>")
    parts.append("</section>")

    parts.append("<section id='methods'><h2>Methods</h2>" + _methods_html(info) + "</section>")
    caveat_list = caveats(run_dir, info, t)
    parts.append("<section id='caveats'><h2>Caveats</h2><ul>"
                 + "".join(f"<li>{html.escape(c)}</li>" for c in caveat_list) + "</ul>")
    said = {c.rstrip(".") for c in caveat_list}  # the NSD note is also a caveat: say it once
    for note in info.get("notes", []):
        if str(note).rstrip(".") not in said:
            parts.append(f"<p class='note'>{html.escape(str(note))}</p>")
    parts.append("</section>")

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
    parts.append("<h2>Run</h2><table class='meta'>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta_rows.items()) + "</table>")

    head = t["headline"]
    if head is not None and not head.empty:
        cols = [c for c in head.columns if c != "sentence"]
        parts.append("<h2>Headline estimates</h2>" + _table_html(head[cols]))

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
    parts.append("<h2>Paired discrepancy per organ</h2>")
    if disc is not None and not disc.empty:
        first = ["model", "pair_kind", "organ", "n", "mean_ref", "mean_cmp", "mean_diff", "ci_low", "ci_high",
                 "p", "p_holm", "significant", "k_worse", "n_compared", "underpowered", "effect_dz", "dz_flag",
                 "both_failed", "reason"]
        cols = [c for c in first if c in disc.columns]
        for metric in pd.unique(disc["metric"]):
            d = disc[disc["metric"] == metric]
            block = _table_html(d[cols], highlight="significant")
            if metric == "dice":
                parts.append(f"<h3>{html.escape(readable_column(str(metric)))}</h3>{block}")
            else:
                parts.append(f"<details><summary>{html.escape(readable_column(str(metric)))}</summary>{block}</details>")
    else:
        parts.append(_table_html(disc))

    for name, heading in _SECTIONS:
        table = t.get(name)
        if table is None:
            continue
        block = _table_html(table)
        if name == "failure_modes" and len(table) > 30:
            block = f"<details><summary>{len(table)} rows</summary>{block}</details>"
        parts.append(f"<h2>{html.escape(heading)}</h2>{block}")

    gap = t["generalisation_gap"]
    if gap is not None and "reported_dice" in gap.columns and gap["reported_dice"].notna().any():
        parts.append("<h2>Generalisation gap (reported - measured Dice)</h2>"
                     + _table_html(gap[gap["reported_dice"].notna()]))
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

    parts.append("<h2>Figures</h2>")
    figs = report_figures(run_dir)
    if not figs:
        parts.append("<p>(no figures)</p>")
    for stem, path in figs.items():
        cap = _FIGURE_CAPTIONS.get(_figure_kind(stem), "")
        parts.append(f"<figure id='{html.escape(stem)}'><img alt='{html.escape(stem)}' src='{_data_uri(path)}'>"
                     f"<figcaption><b>{html.escape(stem)}</b>. {html.escape(cap)}</figcaption></figure>")
    if t["selected_cases"] is not None and not t["selected_cases"].empty:
        parts.append("<details><summary>cases shown in overlays</summary>" + _table_html(t["selected_cases"])
                     + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report_figures(run_dir: str | Path) -> dict[str, Path]:
    """``{stem: file}`` of every figure in ``run_dir/figures`` in report order, the SVG where there is one
    (vector, and smaller than the 300-dpi PNG), else the PNG."""
    fig_dir = Path(run_dir) / FIGURE_DIR
    if not fig_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(fig_dir.glob("*.png")) + sorted(fig_dir.glob("*.svg")):
        found[path.stem] = path  # the SVG, listed last, wins
    rank = {k: i for i, k in enumerate(_FIGURE_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(_figure_kind(kv[0]), len(rank)), kv[0])))


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Render :func:`render_report` into ``run_dir/report.html`` and return its path."""
    path = Path(run_dir) / REPORT_FILE
    path.write_text(render_report(run_dir, title), encoding="utf-8")
    return path
