"""Three-plane overlays of the best, median and worst test case per view, at the end of test.

Reads the ``image``, ``label`` and ``prediction`` NIfTI paths of the chosen cases from the module's
``results_table``; the image and label are sampled onto the prediction's grid in world coordinates
(``umd_lightning.analysis.overlay``). Rank 0 only.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pandas as pd
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

    Reading three NIfTI files per case and drawing take seconds, so by default the overlays are drawn
    in a forked process that runs beside the other end-of-test callbacks (the discrepancy analysis);
    ``teardown`` waits for it, logs the figures and re-renders the report.

    Args:
        metric: case score used to rank cases (mean over organs); ``dice`` or ``nsd`` (higher is
            better) or ``hd95`` (lower is better).
        write_report: re-render ``report.html`` with the overlays.
        output_dir: where to write; default ``trainer.default_root_dir``.
        wandb_prefix: key prefix in wandb.
        dpi: PNG resolution.
        background: draw in a forked process (where the platform can fork); False draws in
            ``on_test_end`` itself.
    """

    def __init__(
        self,
        metric: Literal["dice", "nsd", "hd95"] = "dice",
        write_report: bool = True,
        output_dir: str | None = None,
        wandb_prefix: str = "analysis",
        dpi: int = 100,
        background: bool = True,
    ) -> None:
        super().__init__()
        self.metric = metric
        self.write_report = bool(write_report)
        self.output_dir = output_dir
        self.wandb_prefix = wandb_prefix
        self.dpi = int(dpi)
        self.background = bool(background)
        self.outputs: dict[str, Any] = {}
        self.skipped: list[str] = []
        self._job: tuple[Any, Any, Path] | None = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = getattr(pl_module, "results_table", None)
        if table is None or len(table) == 0:
            log.warning("OverlayCallback: %s has no results_table; no overlays", type(pl_module).__name__)
            return
        meta = dict(getattr(pl_module, "results_meta", None) or {})
        out = Path(self.output_dir or trainer.default_root_dir)
        if self.background and "fork" in mp.get_all_start_methods():
            # fork: the child gets the table without pickling and exits through os._exit, so the
            # parent's atexit handlers (wandb's) never run twice
            ctx = mp.get_context("fork")
            receive, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_draw_in_child, args=(send, table, meta, out, self.metric, self.dpi),
                                name="umd-overlays", daemon=True)
            child.start()
            send.close()
            self._job = (child, receive, out)
            return
        self._finish(trainer, out, *draw_overlays(table, meta, out, self.metric, self.dpi))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.wait(trainer)

    def wait(self, trainer: pl.Trainer) -> None:
        """Collect the background drawing, if one runs: log its figures and re-render the report."""
        if self._job is None:
            return
        child, receive, out = self._job
        self._job = None
        try:
            paths, skipped = receive.recv()  # before join: a full pipe would block the child
        except EOFError:
            paths, skipped = {}, []
        finally:
            receive.close()
            child.join()
        if child.exitcode != 0:
            log.warning("OverlayCallback: the drawing process ended with exit code %s; no overlays", child.exitcode)
            return
        self._finish(trainer, out, paths, skipped)

    def _finish(self, trainer: pl.Trainer, out: Path, paths: dict[str, Path], skipped: list[str]) -> None:
        self.skipped = skipped
        for reason in skipped:
            log.warning("OverlayCallback: %s", reason)
        report = None
        if self.write_report and ((out / META_FILE).is_file() or (out / TABLE_FILES["discrepancy"]).is_file()):
            report = write_report(out)
        self.outputs = {"figures": paths, "report": report, "figure_dir": out / FIGURE_DIR}
        log_tables_and_images(trainer, {}, paths, self.wandb_prefix)


def draw_overlays(
    table: pd.DataFrame, meta: dict[str, Any], out: Path, metric: str, dpi: int
) -> tuple[dict[str, Path], list[str]]:
    """Choose the cases, draw their overlays into ``out``; return ``({name: png}, skipped)``."""
    selected = select_cases(table, metric)
    figs, skipped = overlay_figures(selected, organ_names(meta, table))
    out.mkdir(parents=True, exist_ok=True)
    selected.to_csv(out / TABLE_FILES["selected_cases"], index=False)
    return write_figures(figs, out, dpi=dpi), skipped


def _draw_in_child(send: Any, table: pd.DataFrame, meta: dict[str, Any], out: Path, metric: str, dpi: int) -> None:
    try:
        send.send(draw_overlays(table, meta, out, metric, dpi))
    finally:
        send.close()
