"""The results table on disk: ``results.csv``, ``results.parquet`` and ``results.meta.json``.

The metadata (metric conventions from :func:`~umd_lightning.metrics.functional.metrics_metadata`,
organ set, model, ...) is written beside the table and also embedded in the Parquet schema, so a
Parquet file alone carries its conventions. Files are written to a temporary name and renamed, so a
reader never sees half a table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns read from CSV as text whatever they look like (a case id ``001`` stays ``001``).
_TEXT_COLUMNS = ("subject_id", "session", "view", "case_id", "organ", "status", "error", "model", "pred_file", "ref_file")
#: Key of the metadata in the Parquet schema metadata.
PARQUET_META_KEY = b"umd_lightning.meta"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the metadata is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_results_table(
    table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, *, stem: str = "results"
) -> dict[str, Path]:
    """Write the table as CSV and Parquet and its metadata as JSON.

    Args:
        table: one row per case x organ.
        meta: conventions and run information (JSON-serialisable).
        out_dir: folder, created if missing.
        stem: file name stem (``results`` -> ``results.csv``, ``results.parquet``, ``results.meta.json``).

    Returns:
        ``{"csv": path, "parquet": path, "meta": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_json = json.dumps(_clean(json.loads(json.dumps(dict(meta), default=_json_default))), indent=2, sort_keys=True)
    paths = {"csv": out / f"{stem}.csv", "parquet": out / f"{stem}.parquet", "meta": out / f"{stem}.meta.json"}
    _atomic_write(paths["csv"], lambda p: table.to_csv(p, index=False))
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), PARQUET_META_KEY: meta_json.encode()})
    _atomic_write(paths["parquet"], lambda p: pq.write_table(arrow, p))
    _atomic_write(paths["meta"], lambda p: Path(p).write_text(meta_json + "\n"))
    return paths


def read_results_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a results table and its metadata.

    Args:
        path: a folder holding ``results.parquet`` or ``results.csv``, or one of the files
            (``.parquet``, ``.csv`` or ``.meta.json``).

    Returns:
        ``(table, meta)``; meta is ``{}`` when none was written.

    Raises:
        FileNotFoundError: no table at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "results.parquet", path / "results.csv"]
    elif path.name.endswith(".meta.json"):
        stem = path.name[: -len(".meta.json")]
        candidates = [path.with_name(f"{stem}.parquet"), path.with_name(f"{stem}.csv")]
    else:
        candidates = [path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no results table at {path} (looked for {', '.join(str(c) for c in candidates)})")
    stem = found.name.rsplit(".", 1)[0]
    meta_path = found.with_name(f"{stem}.meta.json")
    meta: dict[str, Any] = {}
    if found.suffix == ".parquet":
        arrow = pq.read_table(found)
        raw = (arrow.schema.metadata or {}).get(PARQUET_META_KEY)
        if raw:
            meta = json.loads(raw)
        table = arrow.to_pandas()
    elif found.suffix == ".csv":
        table = pd.read_csv(found, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
        if "error" in table:
            table["error"] = table["error"].fillna("")
    else:
        raise ValueError(f"{found}: not a results table (expected .parquet or .csv)")
    if not meta and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    return table, meta
