"""Writes the results table at test end and logs it to every wandb logger."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from umd_lightning.metrics.table import write_results_table

log = logging.getLogger(__name__)


class ResultsWriter(L.Callback):
    """On rank 0 at test end: ``results.csv``, ``results.parquet`` and ``results.meta.json`` in
    ``output_dir``, and the table as a wandb Table (``test/results``).

    Args:
        output_dir: run folder (default: the trainer's ``default_root_dir``).
        log_table: also log the table to wandb loggers.
    """

    def __init__(self, output_dir: str | None = None, log_table: bool = True) -> None:
        self.output_dir = output_dir
        self.log_table = log_table
        self.paths: dict[str, Path] = {}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        table = getattr(pl_module, "results_table", None)
        if table is None or not trainer.is_global_zero:
            return
        out = Path(self.output_dir or trainer.default_root_dir)
        self.paths = write_results_table(table, pl_module.results_meta, out)
        log.info("results table: %s", self.paths)
        if not self.log_table:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                frame = table.astype({c: str for c in table.columns if table[c].dtype == object})
                logger.log_table("test/results", dataframe=frame)
