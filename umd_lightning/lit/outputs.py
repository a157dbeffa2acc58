"""What a run makes after its test loop, from what is on disk: the results table built from the case
journal, its scalars and tables in the trainer's loggers, and the discrepancy analysis, figures,
overlays and report.

These are plain functions called by :func:`umd_lightning.lit.run.run` after ``trainer.test()`` (on
rank 0, after a barrier), never Lightning hooks: Lightning skips the test-epoch hooks when nothing is
left to score, and a re-run of a run folder must still end with its table and analysis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from umd_lightning.analysis.discrepancy import DEFAULT_METRICS
from umd_lightning.metrics.functional import failed_rows
from umd_lightning.organs import VIEWS, OrganSet
from umd_lightning.results import read_journal, sort_results, table_from_rows, write_results

log = logging.getLogger(__name__)

#: Error of a case in the run's scope that has no journal file when the table is built.
NOT_SCORED = "no result journaled for this case (the run stopped before it was scored); re-run in this folder to score it"


def build_table(
    run_dir: str | Path,
    organ_set: OrganSet,
    cases: Sequence[Any],
    failed: Iterable[tuple[Any, Any]] = (),
    identity: Mapping[str, Any] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The results table of a run folder, from its journal on disk.

    Args:
        run_dir: the run folder (its ``cases/*.json``).
        organ_set: every case has one row per organ of it.
        cases: the run's scored cases (records with ``case_id``, ``subject_id``, ``session``, ``view``,
            ``image``, ``label``); a journal file of any other case is left out of the table.
        failed: ``(record, problem)`` of cases that failed validation (never scored): failed rows.
        identity: columns of the model (``model``, ``prompt_kind``, ``oracle``) for the failed rows.

    Returns:
        ``(table, problems)``: the sorted table and one message per journal file that failed its
        check (set aside; its case is reported as not scored).
    """
    wanted = [str(r.case_id) for r in cases]
    journal, problems = read_journal(run_dir, organs=organ_set.organs, cases=wanted)
    rows: list[dict[str, Any]] = []
    unscored = []
    for record in cases:
        case_rows = journal.get(str(record.case_id))
        if case_rows is None:
            unscored.append((record, NOT_SCORED))
            continue
        rows.extend(case_rows)
    for record, problem in [*unscored, *((r, f"{p.path}: {p.problem}") for r, p in failed)]:
        case = {
            **{k: getattr(record, k) for k in ("subject_id", "session", "view", "case_id")},
            "image_path": str(record.image),
            "label_path": str(record.label),
            **dict(identity or {}),
        }
        rows.extend({**case, **row} for row in failed_rows(organ_set.labels, str(problem)))
    return sort_results(table_from_rows(rows), organ_set.organs, VIEWS), problems


def view_means(table: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric per view and per view x organ, as logger names ``test/<metric>/<view>/<organ|mean>``.

    Metrics the table lacks are left out; ``mean`` is over the view's rows (as the summary prints it).
    """
    ok = table[table["status"] != "failed"]
    out: dict[str, float] = {}
    for metric in [m for m in metrics if m in ok.columns]:
        per_organ = ok.groupby(["view", "organ"], sort=False)[metric].mean()
        out.update({f"test/{metric}/{view}/{organ}": float(v) for (view, organ), v in per_organ.items() if pd.notna(v)})
        out.update({f"test/{metric}/{view}/mean": float(v)
                    for view, v in ok.groupby("view")[metric].mean().items() if pd.notna(v)})
    return out


def headline_scalars(headline: pd.DataFrame | None, prefix: str = "headline") -> dict[str, float]:
    """The headline differences and their CIs as scalars ``<prefix>/<model>/<pair_kind>/<metric>/<stat>``.

    ``stat`` is ``mean_diff``, ``ci_low``, ``ci_high`` (and ``k_worse``, ``n_worse_of`` where given).
    """
    out: dict[str, float] = {}
    if headline is None or headline.empty:
        return out
    stats = [c for c in ("mean_diff", "ci_low", "ci_high", "k_worse", "n_worse_of") if c in headline.columns]
    for _, row in headline.iterrows():
        for stat in stats:
            v = pd.to_numeric(row[stat], errors="coerce")
            if pd.notna(v):
                out[f"{prefix}/{row['model']}/{row['pair_kind']}/{row['metric']}/{stat}"] = float(v)
    return out


def log_scalars(loggers: Sequence[Any], scalars: Mapping[str, float], step: int = 0) -> None:
    """Log ``scalars`` on every logger and flush it (CSV ``metrics.csv``, wandb summary)."""
    for logger in loggers:
        logger.log_metrics(dict(scalars), step=step)
        logger.save()


def wandb_loggers(loggers: Sequence[Any]) -> list[Any]:
    """The ``WandbLogger`` instances among ``loggers`` (empty when wandb is not used)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning always ships it, wandb may be absent
        return []
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def wandb_frame(df: pd.DataFrame, max_rows: int | None = None) -> pd.DataFrame:
    """A copy wandb.Table accepts: numbers and bools kept, everything else as text ("" for missing).

    wandb infers one type per column and rejects a column mixing NaN with strings (e.g. an
    ``error`` column that is empty for most rows).
    """
    out = df.head(max_rows) if max_rows else df.copy()
    out = out.reset_index(drop=True).copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_bool_dtype(s):
            out[col] = s.astype(bool)
        elif pd.api.types.is_numeric_dtype(s):
            out[col] = s.astype(np.float64) if not pd.api.types.is_integer_dtype(s) else s.astype(np.int64)
        else:
            out[col] = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    out.columns = [str(c) for c in out.columns]
    return out


def log_tables_and_images(
    loggers: Sequence[Any],
    tables: Mapping[str, pd.DataFrame],
    images: Mapping[str, Path],
    prefix: str = "analysis",
    max_rows: int | None = 200_000,
) -> int:
    """Log ``tables`` as wandb.Table and ``images`` (PNG paths) as wandb.Image on every WandbLogger.

    Keys are ``<prefix>/<table name>`` and ``<prefix>/figures/<image name>``.

    Returns:
        Number of WandbLoggers written to.
    """
    found = wandb_loggers(loggers)
    for lg in found:
        for name, table in tables.items():
            if table is not None and len(table.columns):
                lg.log_table(key=f"{prefix}/{name}", dataframe=wandb_frame(table, max_rows))
        for name, path in images.items():
            lg.log_image(key=f"{prefix}/figures/{name}", images=[str(path)], caption=[name])
    return len(found)


def log_report_artifact(loggers: Sequence[Any], report: Path | None, name: str = "report") -> int:
    """Attach ``report.html`` to every wandb run as an artifact of type ``report``; returns how many."""
    found = wandb_loggers(loggers)
    if report is None or not Path(report).is_file() or not found:
        return 0
    import wandb

    for lg in found:
        art = wandb.Artifact(f"{name}-{lg.experiment.id}", type="report",
                             description="self-contained discrepancy report of the run")
        art.add_file(str(report), name=Path(report).name)
        lg.experiment.log_artifact(art)
    return len(found)


def mask_image(case: Any, organ_names: Mapping[int, str], plane: str = "axial") -> Any:
    """A ``wandb.Image`` of one overlay case: the plane's image with the predicted and reference
    label maps as masks (class labels = organ names), top row first as wandb draws it."""
    import wandb

    from umd_lightning.analysis.overlay import display, image_window

    planes = case.planes
    lo, hi = image_window(planes, pet=case.view.startswith("PET"))
    img = display(planes.image[plane])[::-1]  # display() is bottom-up; an image array is top-down
    grey = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)
    labels = {0: "background", **{int(i): str(n) for i, n in organ_names.items()}}
    masks = {
        "prediction": {"mask_data": np.ascontiguousarray(display(planes.prediction[plane])[::-1]).astype(np.uint8),
                       "class_labels": labels},
        "ground_truth": {"mask_data": np.ascontiguousarray(display(planes.label[plane])[::-1]).astype(np.uint8),
                         "class_labels": labels},
    }
    return wandb.Image((grey * 255).astype(np.uint8), masks=masks, caption=case.caption.replace("\n", " "))


def log_overlay_masks(loggers: Sequence[Any], cases: Mapping[tuple[str, str], Sequence[Any]],
                      organ_names: Mapping[int, str], prefix: str = "analysis", step: int = 0) -> int:
    """Log each overlay case's axial plane as a wandb.Image with prediction / reference masks, one list
    per model x view under ``<prefix>/overlays/<model>/<view>``; returns the number of wandb runs."""
    found = wandb_loggers(loggers)
    if not found:
        return 0
    images = {f"{prefix}/overlays/{model}/{view}": [mask_image(c, organ_names) for c in group]
              for (model, view), group in cases.items() if group}
    if images:
        for lg in found:
            lg.log_metrics(images, step=step)
    return len(found)


def _overlay_worker() -> Any:
    """One worker process for the overlays. Forked where the platform can: the figures need no import
    (a spawned interpreter spends seconds importing matplotlib, scipy and pandas again) and the child
    runs numpy / matplotlib only, never torch, CUDA or wandb."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context(method))


class RunAnalysis:
    """The discrepancy analysis of a run's results table: tables, figures, overlays and ``report.html``
    into the run folder, and the same tables and figures on every wandb logger.

    Called by the run after the table is written (:meth:`__call__`); it reads nothing but the table
    and its metadata, so re-running it gives the same files.

    Args:
        n_boot: bootstrap resamples per confidence interval.
        seed: bootstrap seed.
        level: confidence level.
        alpha: family-wise level for the Holm-adjusted significance flag.
        metrics: metric columns to analyse.
        figures: build the standard figures.
        overlays: three-plane overlays of the best, median and worst case per view.
        write_report: render ``report.html``.
        log_results_table: log the results table itself to wandb (``<prefix>/results``).
        wandb_prefix: key prefix in wandb.
        max_table_rows: cap on rows per wandb table.
        dpi: resolution of the PNG of each figure (an SVG is written beside it).
    """

    def __init__(
        self,
        n_boot: int = 2000,
        seed: int = 0,
        level: float = 0.95,
        alpha: float = 0.05,
        metrics: Sequence[str] = DEFAULT_METRICS,
        figures: bool = True,
        overlays: bool = True,
        write_report: bool = True,
        log_results_table: bool = True,
        wandb_prefix: str = "analysis",
        max_table_rows: int | None = 200_000,
        dpi: int = 300,
    ) -> None:
        if int(n_boot) < 1:
            raise ValueError(f"analysis: n_boot must be >= 1, got {n_boot}")
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.level = float(level)
        self.alpha = float(alpha)
        self.metrics = tuple(str(m) for m in metrics)
        self.figures = bool(figures)
        self.overlays = bool(overlays)
        self.write_report = bool(write_report)
        self.log_results_table = bool(log_results_table)
        self.wandb_prefix = wandb_prefix
        self.max_table_rows = max_table_rows
        self.dpi = int(dpi)

    def __call__(
        self, table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, loggers: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """Analyse ``table`` into ``out_dir`` and log it; returns :func:`write_analysis`'s paths.

        The overlays (reading NIfTI files, drawing, 300-dpi PNG and SVG) are made in a worker process
        while this one computes the tables and the other figures: on 2 cores the analysis then costs
        about what the slower of the two costs.
        """
        from umd_lightning.analysis.discrepancy import select_cases
        from umd_lightning.analysis.overlay import render_overlays
        from umd_lightning.analysis.report import FIGURE_DIR, META_FILE, analyze, organ_names, write_analysis, write_report

        out_dir = Path(out_dir)
        names = organ_names(meta, table)
        pool = future = None
        if self.overlays:
            pool = _overlay_worker()
            future = pool.submit(render_overlays, select_cases(table, "dice"), names, table, out_dir / FIGURE_DIR,
                                 dpi=self.dpi)
        try:
            analysis = analyze(
                table, dict(meta), metrics=self.metrics, n_boot=self.n_boot, seed=self.seed, level=self.level,
                alpha=self.alpha, figures=self.figures, overlays=False,
            )
            # figures saved by two processes beside the overlay worker: both cores busy until the end
            written = write_analysis(analysis, out_dir, write_report_html=False, dpi=self.dpi, processes=2)
            cases: dict = {}
            if future is not None:
                overlays, skipped, cases = future.result()
                written["figures"].update({name: files["png"] for name, files in overlays.items()})
                analysis.notes += [f"overlay skipped: {s}" for s in skipped]
                (out_dir / META_FILE).write_text(json.dumps(analysis.meta, indent=2, default=str))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        written["report"] = write_report(out_dir) if self.write_report else None
        for note in analysis.notes:
            log.warning("analysis: %s", note)
        tables = {"results": table} if self.log_results_table else {}
        tables.update(analysis.tables())
        log_tables_and_images(loggers, tables, written["figures"], self.wandb_prefix, self.max_table_rows)
        log_scalars(wandb_loggers(loggers), headline_scalars(tables.get("headline")))
        log_overlay_masks(loggers, cases, names, self.wandb_prefix)
        log_report_artifact(loggers, written["report"])
        log.info("discrepancy analysis written to %s", out_dir)
        return written


def write_table(table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, loggers: Sequence[Any] = (), step: int = 0) -> dict[str, Path]:
    """Write the results table (CSV, Parquet, meta) and log its means on every logger."""
    paths = write_results(table, meta, out_dir)
    log.info("results table: %s", {k: str(v) for k, v in paths.items()})
    log_scalars(loggers, view_means(table), step=step)
    return paths
