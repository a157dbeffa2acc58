"""Reading results tables (CSV or Parquet with a ``<stem>.meta.json`` sidecar) for analysis.

The writer lives in ``umd_lightning.metrics.table``; analysis may not import it (imports point one
way), so this is a small reader of the same on-disk format: ``results.csv`` or ``results.parquet``
beside ``results.meta.json`` (a Parquet file also carries the metadata in its schema).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Columns analysis needs; the rest of the results-table contract is optional here.
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "subject_id", "view", "case_id", "organ", "dice", "status")
METRIC_COLUMNS: tuple[str, ...] = ("dice", "hd95", "nsd", "assd")
EMPTY_POLICIES: tuple[str, ...] = ("worst", "exclude")
#: Columns read from CSV as text whatever they look like.
TEXT_COLUMNS: tuple[str, ...] = ("model", "subject_id", "session", "view", "case_id", "organ", "status")
#: Where the results writer also embeds the metadata in a Parquet file's schema.
PARQUET_META_KEY = b"umd_lightning.meta"


def sidecar_path(path: str | Path) -> Path:
    """``results.csv`` -> ``results.meta.json``."""
    path = Path(path)
    return path.with_name(path.with_suffix("").name + ".meta.json")


def resolve_results_path(path: str | Path) -> Path:
    """A results file, or a run folder holding ``results.parquet`` / ``results.csv``.

    Raises:
        FileNotFoundError: if nothing readable is there.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: folder holds no results.parquet or results.csv")
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} does not exist")
    return path


def read_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a results table and its metadata sidecar.

    Args:
        path: ``.csv`` / ``.parquet`` file or a run folder that holds one.

    Returns:
        ``(table, meta)``; ``meta`` comes from the sidecar, else from the Parquet schema, else ``{}``.

    Raises:
        FileNotFoundError: if the table is missing.
        ValueError: if the file type is unknown or required columns are absent.
    """
    path = resolve_results_path(path)
    embedded: dict[str, Any] = {}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        arrow = pq.read_table(path)
        raw = (arrow.schema.metadata or {}).get(PARQUET_META_KEY)
        embedded = json.loads(raw) if raw else {}
        df = arrow.to_pandas()
    elif path.suffix == ".csv":
        # ids stay text: a case id "001" must not become the number 1
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    else:
        raise ValueError(f"{path}: expected a .csv or .parquet results table")
    meta_path = sidecar_path(path)
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else embedded
    validate_results(df, source=str(path))
    return df, meta


def validate_results(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check the columns analysis relies on.

    Raises:
        ValueError: naming ``source`` and the missing columns.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; has {list(df.columns)}")
    return df


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with string ids and float metrics, so CSV and in-memory tables pair identically."""
    out = df.copy()
    for col in ("model", "subject_id", "view", "case_id", "organ", "status"):
        if col in out.columns:
            out[col] = out[col].astype(str)
    for col in METRIC_COLUMNS:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
    return out


def organ_order(df: pd.DataFrame) -> list[str]:
    """Organs in label-id order when ``label_id`` is there, else in order of first appearance."""
    if "label_id" in df.columns:
        ids = df.groupby("organ", sort=False)["label_id"].min()
        return list(ids.sort_values(kind="stable").index.astype(str))
    return list(pd.unique(df["organ"].astype(str)))
