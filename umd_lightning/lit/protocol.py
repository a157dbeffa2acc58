"""The study's protocol as one sweep: every model on the same test subjects, then one combined report.

``python -m umd_lightning -m +experiment=umd_protocol`` runs one job per model (each in
``<sweep>/<model>``); when the sweep ends, :class:`ProtocolReport` (a Hydra callback) reads every job's
results table from disk and writes ``<sweep>/report/``: the models side by side (the discrepancy
analysis and ``report.html`` over all of them) and ``protocol.csv``, one row per model saying whether
it ran, was skipped for want of weights (with the override that enables it), or failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from umd_lightning.lit.run import FAILED_FILE, SKIPPED_FILE
from umd_lightning.results import read_results, results_paths

log = logging.getLogger(__name__)

PROTOCOL_FILE = "protocol.csv"
_COLUMNS = ["model", "status", "prompt_kind", "oracle", "cases", "failed_cases", "run_folder", "note"]


def protocol_rows(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """One row per job folder of a sweep, and the results files of the jobs that produced one."""
    rows, results = [], []
    for folder in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name != "report"):
        skipped, failed_job = folder / SKIPPED_FILE, folder / FAILED_FILE
        table = next((p for p in (results_paths(folder)[k] for k in ("parquet", "csv")) if p.is_file()), None)
        if failed_job.is_file():
            rec = json.loads(failed_job.read_text())
            rows.append({"model": rec.get("model") or folder.name, "status": "failed", "run_folder": str(folder),
                         "note": rec.get("error", "")})
        elif skipped.is_file():
            rec = json.loads(skipped.read_text())
            rows.append({"model": rec["model"], "status": "skipped", "run_folder": str(folder),
                         "note": f"no {', '.join(rec['missing'])}: enable with {rec['enable_with']}"})
        elif table is not None:
            df = read_results(table)[0]
            failed = df.loc[df["status"] == "failed", "case_id"].unique()
            first = df.iloc[0] if len(df) else {}
            rows.append({
                "model": str(first.get("model", folder.name)),
                "status": "ran" if len(failed) < df["case_id"].nunique() else "failed",
                "prompt_kind": first.get("prompt_kind"), "oracle": first.get("oracle"),
                "cases": int(df["case_id"].nunique()), "failed_cases": len(failed), "run_folder": str(folder),
                "note": "" if not len(failed) else f"{len(failed)} case(s) failed: see the 'error' column of {table}",
            })
            results.append(table)
        elif (folder / "run_manifest.json").is_file() or (folder / ".hydra").is_dir():
            rows.append({"model": folder.name, "status": "failed", "run_folder": str(folder),
                         "note": "no results table: the job stopped before scoring (see its log)"})
    return pd.DataFrame(rows, columns=_COLUMNS), results


def write_protocol_report(sweep_dir: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Write ``<sweep>/report``: ``protocol.csv`` and, where any model ran, the side-by-side analysis.

    Returns:
        ``{"protocol": path, "report": path or None, "models": [...]}``.
    """
    from umd_lightning.analysis.report import analyze, combine_results, write_analysis

    out = Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    table, results = protocol_rows(sweep_dir)
    table.to_csv(out / PROTOCOL_FILE, index=False)
    written: dict[str, Any] = {"protocol": out / PROTOCOL_FILE, "report": None, "models": list(table["model"])}
    if results:
        df, meta, reported = combine_results([(*read_results(p), str(p)) for p in results])
        analysis = analyze(df, meta, n_boot=n_boot, seed=seed, reported=reported)
        for row in table.itertuples():
            if row.status != "ran":
                analysis.notes.append(f"{row.model}: {row.status}; {row.note}")
        written["report"] = write_analysis(analysis, out, title="UMD protocol: the study's models side by side")["report"]
    return written


class ProtocolReport(Callback):
    """Hydra callback: after a multirun, the combined report of every job in the sweep folder.

    Args:
        n_boot: bootstrap resamples per CI.
        seed: bootstrap seed.
    """

    def __init__(self, n_boot: int = 2000, seed: int = 0) -> None:
        self.n_boot = int(n_boot)
        self.seed = int(seed)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        written = write_protocol_report(sweep, n_boot=self.n_boot, seed=self.seed)
        table = pd.read_csv(written["protocol"])
        print(table[["model", "status", "cases", "failed_cases", "note"]].to_string(index=False))
        print(f"protocol: {written['protocol']}")
        if written["report"] is not None:
            print(f"report: {written['report']}")
