"""Three-plane overlays of the best, median and worst test case per view, at the end of test.

Reads the ``image``, ``label`` and ``prediction`` NIfTI paths of the chosen cases from the module's
``results_table``; the image and label are sampled onto the prediction's grid in world coordinates
(``umd_lightning.analysis.overlay``). Rank 0 only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from umd_lightning.analysis.discrepancy import select_cases
from umd_lightning.analysis.overlay import overlay_figures
from umd_lightning.analysis.report import (
    FIGURE_DIR,
    META_FILE,
    TABLE_FILES,
    organ_names,
    write_figures,
    write_report,
)
from umd_lightning.lit.callbacks.discrepancy import log_tables_and_images

log = logging.getLogger(__name__)


class OverlayCallback(Callback):
    """Writes ``figures/overlay_<model>_<view>.png`` and logs them to wandb.

    Cases whose files are missing or unreadable are skipped with a warning. When the run folder
    already holds an analysis (the discrepancy callback ran first), ``report.html`` is re-rendered so
    it includes the overlays; when the discrepancy callback runs after this one, it picks them up.

    Args:
        metric: case score used to rank cases (mean over organs); ``dice`` or ``nsd`` (higher is
            better) or ``hd95`` (lower is better).
        write_report: re-render ``report.html`` with the overlays.
        output_dir: where to write; default ``trainer.default_root_dir``.
        wandb_prefix: key prefix in wandb.
        dpi: PNG resolution.
    """

    def __init__(
        self,
        metric: Literal["dice", "nsd", "hd95"] = "dice",
        write_report: bool = True,
        output_dir: str | None = None,
        wandb_prefix: str = "analysis",
        dpi: int = 100,
    ) -> None:
        super().__init__()
        self.metric = metric
        self.write_report = bool(write_report)
        self.output_dir = output_dir
        self.wandb_prefix = wandb_prefix
        self.dpi = int(dpi)
        self.outputs: dict[str, Any] = {}
        self.skipped: list[str] = []

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = getattr(pl_module, "results_table", None)
        if table is None or len(table) == 0:
            log.warning("OverlayCallback: %s has no results_table; no overlays", type(pl_module).__name__)
            return
        meta = dict(getattr(pl_module, "results_meta", None) or {})
        out = Path(self.output_dir or trainer.default_root_dir)
        selected = select_cases(table, self.metric)
        figs, self.skipped = overlay_figures(selected, organ_names(meta, table))
        for reason in self.skipped:
            log.warning("OverlayCallback: %s", reason)
        out.mkdir(parents=True, exist_ok=True)
        selected.to_csv(out / TABLE_FILES["selected_cases"], index=False)
        paths = write_figures(figs, out, dpi=self.dpi)
        report = None
        if self.write_report and ((out / META_FILE).is_file() or (out / TABLE_FILES["discrepancy"]).is_file()):
            report = write_report(out)
        self.outputs = {"figures": paths, "report": report, "figure_dir": out / FIGURE_DIR}
        log_tables_and_images(trainer, {}, paths, self.wandb_prefix)
