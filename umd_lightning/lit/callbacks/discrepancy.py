"""Discrepancy analysis at the end of test: tables, figures and report into the run folder and wandb.

The SegmentationModule sets ``results_table`` (full on every rank after the DDP gather) and
``results_meta`` in ``on_test_epoch_end``; this callback runs after it, in ``on_test_end``, on rank 0
only, so the analysis is done once per run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback

from umd_lightning.analysis.discrepancy import DEFAULT_METRICS
from umd_lightning.analysis.report import Analysis, analyze, write_analysis

log = logging.getLogger(__name__)


def wandb_loggers(trainer: pl.Trainer) -> list[Any]:
    """The trainer's ``WandbLogger`` instances (empty when wandb is not used)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning always ships it, wandb may be absent
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


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
    trainer: pl.Trainer,
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
    loggers = wandb_loggers(trainer)
    for lg in loggers:
        for name, table in tables.items():
            if table is not None and len(table.columns):
                lg.log_table(key=f"{prefix}/{name}", dataframe=wandb_frame(table, max_rows))
        for name, path in images.items():
            lg.log_image(key=f"{prefix}/figures/{name}", images=[str(path)], caption=[name])
    return len(loggers)


class DiscrepancyCallback(Callback):
    """Runs :func:`umd_lightning.analysis.analyze` on the test results and writes/logs its outputs.

    Writes into the run folder (``output_dir`` or ``trainer.default_root_dir``): ``discrepancy.csv``,
    ``view_summary.csv``, ``generalisation_gap.csv``, ``sensitivity.csv``, ``selected_cases.csv``,
    ``analysis.meta.json``, ``figures/*.png`` and (``write_report``) ``report.html``. With a
    ``WandbLogger`` it logs the results table, every analysis table and every figure.

    Args:
        n_boot: bootstrap resamples per confidence interval.
        seed: bootstrap seed.
        level: confidence level.
        alpha: family-wise level for the Holm-adjusted significance flag.
        metrics: metric columns to analyse.
        write_report: render ``report.html``.
        figures: build the standard figures.
        overlays: also build the best/median/worst overlays here (leave False when
            :class:`~umd_lightning.lit.callbacks.overlay.OverlayCallback` is configured).
        log_results_table: log the full results table to wandb too.
        output_dir: where to write; default ``trainer.default_root_dir``.
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
        write_report: bool = True,
        figures: bool = True,
        overlays: bool = False,
        log_results_table: bool = True,
        output_dir: str | None = None,
        wandb_prefix: str = "analysis",
        max_table_rows: int | None = 200_000,
    ) -> None:
        super().__init__()
        if n_boot < 1:
            raise ValueError(f"DiscrepancyCallback: n_boot must be >= 1, got {n_boot}")
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.level = float(level)
        self.alpha = float(alpha)
        self.metrics = tuple(str(m) for m in metrics)
        self.write_report = bool(write_report)
        self.figures = bool(figures)
        self.overlays = bool(overlays)
        self.log_results_table = bool(log_results_table)
        self.output_dir = output_dir
        self.wandb_prefix = wandb_prefix
        self.max_table_rows = max_table_rows
        self.analysis: Analysis | None = None
        self.outputs: dict[str, Any] = {}

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = getattr(pl_module, "results_table", None)
        if table is None or len(table) == 0:
            log.warning("DiscrepancyCallback: %s has no results_table; nothing to analyse",
                        type(pl_module).__name__)
            return
        meta = dict(getattr(pl_module, "results_meta", None) or {})
        out = Path(self.output_dir or trainer.default_root_dir)
        self.analysis = analyze(
            table, meta, metrics=self.metrics, n_boot=self.n_boot, seed=self.seed, level=self.level,
            alpha=self.alpha, figures=self.figures, overlays=self.overlays,
        )
        self.outputs = write_analysis(self.analysis, out, write_report_html=self.write_report)
        tables: dict[str, pd.DataFrame] = {}
        if self.log_results_table:
            tables["results"] = table
        tables.update(self.analysis.tables())
        log_tables_and_images(trainer, tables, self.outputs["figures"], self.wandb_prefix, self.max_table_rows)
        log.info("discrepancy analysis written to %s", out)
