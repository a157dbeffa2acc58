"""What a run makes after its test loop, from what is on disk: the results table built from the case
journal, its scalars and tables in the trainer's loggers, and the discrepancy analysis, figures,
overlays and report.

These are plain functions called by :func:`umd_lightning.lit.run.run` after ``trainer.test()`` (on
rank 0, after a barrier), never Lightning hooks: Lightning skips the test-epoch hooks when nothing is
left to score, and a re-run of a run folder must still end with its table and analysis.
"""

from __future__ import annotations

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


def view_means(table: pd.DataFrame) -> dict[str, float]:
    """Mean Dice per view and per view x organ, as logger names ``test/dice/<view>/<organ|mean>``."""
    ok = table[table["status"] != "failed"]
    out = {
        f"test/dice/{view}/{organ}": float(v)
        for (view, organ), v in ok.groupby(["view", "organ"], sort=False)["dice"].mean().items()
        if pd.notna(v)
    }
    out.update({f"test/dice/{view}/mean": float(v) for view, v in ok.groupby("view")["dice"].mean().items() if pd.notna(v)})
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

    def __call__(
        self, table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, loggers: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """Analyse ``table`` into ``out_dir`` and log it; returns :func:`write_analysis`'s paths."""
        from umd_lightning.analysis.report import analyze, write_analysis

        analysis = analyze(
            table, dict(meta), metrics=self.metrics, n_boot=self.n_boot, seed=self.seed, level=self.level,
            alpha=self.alpha, figures=self.figures, overlays=self.overlays,
        )
        for note in analysis.notes:
            log.warning("analysis: %s", note)
        written = write_analysis(analysis, out_dir, write_report_html=self.write_report)
        tables = {"results": table} if self.log_results_table else {}
        tables.update(analysis.tables())
        log_tables_and_images(loggers, tables, written["figures"], self.wandb_prefix, self.max_table_rows)
        log.info("discrepancy analysis written to %s", out_dir)
        return written


def write_table(table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, loggers: Sequence[Any] = (), step: int = 0) -> dict[str, Path]:
    """Write the results table (CSV, Parquet, meta) and log its means on every logger."""
    paths = write_results(table, meta, out_dir)
    log.info("results table: %s", {k: str(v) for k, v in paths.items()})
    log_scalars(loggers, view_means(table), step=step)
    return paths
