"""The results table: the one contract between scoring and analysis.

One row per case x organ. This module owns what a row holds (:data:`COLUMNS`, :data:`STATUSES`,
:data:`TEXT_COLUMNS`), how the table and its metadata lie on disk and how they are read back, and the
per-case journal a run writes while it scores. It depends on nothing else in the package: metrics,
analysis, ``evaluate``, ``report`` and the run wiring all import it.

On disk (:func:`write_results`), beside each other in one folder:

- ``results.csv``: the table; text cells are written as they are, missing numbers as empty cells.
- ``results.parquet``: the same table, with the metadata embedded in its schema.
- ``results.meta.json``: the metadata (metric conventions, organ set, model, ...).

Each file is written to a temporary name and renamed, so a reader never sees half a file; the
sidecar is written first and the Parquet file last.

Where metadata is read from (one rule, :func:`read_results`): from the file the table is read from.
A Parquet file carries its own (schema metadata; the sidecar only when it holds none), a CSV file
has its sidecar ``<stem>.meta.json``. A folder is read through its Parquet file when it has one.

Text columns stay text whatever they look like: a subject named ``NA`` stays ``"NA"``, a case id
``001`` stays ``"001"``, and a missing text cell (an ``error`` cell of a case that did not fail) is
``""`` in memory, in CSV and in Parquet alike.

The journal (:func:`write_case`, :func:`read_journal`): ``<run>/cases/<case_id>.json`` holds one
finished case's rows, written atomically when the case is scored. A run builds its table from these
files, so a killed run resumes where it stopped. A file is checked before it is trusted
(:func:`read_case`); one that is not a complete case is named and set aside (moved into
``cases/set_aside/``, never deleted), and its case is scored again.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

Status = Literal["ok", "missed", "false_positive", "both_empty", "not_predicted", "failed"]

#: Every status a row can have; the first four come from the masks themselves.
STATUSES: tuple[str, ...] = ("ok", "missed", "false_positive", "both_empty", "not_predicted", "failed")
#: Empty-mask policies (stated in every table's metadata as ``empty_policy``).
EMPTY_POLICIES: tuple[str, ...] = ("worst", "exclude")
#: Metric columns (NaN where a row is excluded from means).
METRIC_COLUMNS: tuple[str, ...] = ("dice", "hd95", "nsd", "assd")
#: What scoring one organ of one case gives, in table order.
ROW_COLUMNS: tuple[str, ...] = (
    "organ",
    "label_id",
    "status",
    *METRIC_COLUMNS,
    "pred_voxels",
    "ref_voxels",
    "pred_volume_ml",
    "ref_volume_ml",
    "nsd_tolerance_mm",
)
#: Optional columns of the failure modes (:mod:`umd_lightning.metrics.failure`): written by scoring since
#: they exist, NaN where undefined; tables without them still read and the analysis runs without them.
FAILURE_COLUMNS: tuple[str, ...] = ("n_components", "farthest_component_mm", "suv_mean_pred", "suv_mean_ref")
#: What identifies and describes a case (a test run fills the first group, ``evaluate`` the files).
CASE_COLUMNS: tuple[str, ...] = (
    "subject_id",
    "session",
    "view",
    "case_id",
    "image_path",
    "label_path",
    "pred_file",
    "ref_file",
    "model",
    "prompt_kind",
    "oracle",
    "prediction",
    "prompts",
)
#: Every known column, in table order; a table holds those it needs (others follow, as first seen).
COLUMNS: tuple[str, ...] = (*CASE_COLUMNS, *ROW_COLUMNS, *FAILURE_COLUMNS, "error")
#: Columns that are text whatever their cells look like (``""`` when missing).
TEXT_COLUMNS: tuple[str, ...] = (*(c for c in CASE_COLUMNS if c != "oracle"), "organ", "status", "error")
#: Columns the discrepancy analysis needs.
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "subject_id", "view", "case_id", "organ", "dice", "status")

RESULTS_STEM = "results"
META_SUFFIX = ".meta.json"
#: Key of the metadata in a Parquet file's schema metadata.
PARQUET_META_KEY = b"umd_lightning.meta"
#: The journal's folder inside a run folder, and where files that fail their check are moved.
CASES_DIR = "cases"
SET_ASIDE_DIR = "set_aside"
#: Version of a journal file's layout.
CASE_FORMAT = "umd_lightning.case/1"


class JournalError(ValueError):
    """A journal file that is not one complete case; the message names the file and the problem."""


# --------------------------------------------------------------------------- the table


def order_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The table with known columns in :data:`COLUMNS` order first, the others after as they come."""
    known = [c for c in COLUMNS if c in table.columns]
    return table[known + [c for c in table.columns if c not in known]]


def normalise(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with text columns as ``str`` (``""`` when missing), metric and failure columns as float64.

    Any table (built in memory, read from CSV or Parquet) compares equal to its round trip after this.
    """
    out = table.copy()
    for col in TEXT_COLUMNS:
        if col in out.columns:
            out[col] = [_text(v) for v in out[col]]
            out[col] = out[col].astype(object)
    for col in (*METRIC_COLUMNS, *FAILURE_COLUMNS):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
    return out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    return str(value)


def validate_results(table: pd.DataFrame, source: str = "results table", required: Sequence[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Check that ``required`` columns are there and statuses are known.

    Raises:
        ValueError: naming ``source`` and the missing columns or unknown statuses.
    """
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; has {list(table.columns)}")
    if "status" in table.columns and len(table):
        unknown = sorted(set(map(str, table["status"])) - set(STATUSES))
        if unknown:
            raise ValueError(f"{source}: unknown status {unknown}; expected one of {list(STATUSES)}")
    return table


def sort_results(table: pd.DataFrame, organs: Sequence[str] = (), views: Sequence[str] = ()) -> pd.DataFrame:
    """Rows by subject, then view (in ``views`` order), then organ (in ``organs`` order); stable."""
    if table.empty:
        return table.reset_index(drop=True)
    keys, extra = [], {}
    if "subject_id" in table.columns:
        keys.append("subject_id")
    for col, order in (("view", views), ("organ", organs)):
        if col in table.columns:
            rank = {v: i for i, v in enumerate(order)}
            extra[f"_{col}"] = table[col].map(lambda v, r=rank: r.get(v, len(r)))
            keys.append(f"_{col}")
    return table.assign(**extra).sort_values(keys, kind="stable").drop(columns=list(extra)).reset_index(drop=True)


def organ_order(table: pd.DataFrame) -> list[str]:
    """Organs in label-id order when ``label_id`` is there, else in order of first appearance."""
    if "label_id" in table.columns:
        ids = table.groupby("organ", sort=False)["label_id"].min()
        return list(ids.sort_values(kind="stable").index.astype(str))
    return list(pd.unique(table["organ"].astype(str)))


def table_from_rows(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The table of rows (dicts): known columns in order, text normalised."""
    rows = list(rows)
    if not rows:
        return pd.DataFrame(columns=[c for c in COLUMNS if c in (*CASE_COLUMNS[:4], *ROW_COLUMNS)])
    return normalise(order_columns(pd.DataFrame(rows)))


# --------------------------------------------------------------------------- metadata


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


def meta_json(meta: Mapping[str, Any]) -> str:
    """The metadata as the strict, sorted JSON text written beside (and into) a table."""
    return json.dumps(_clean(json.loads(json.dumps(dict(meta), default=_json_default))), indent=2, sort_keys=True)


# --------------------------------------------------------------------------- files


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it takes a file (a probe written and removed).

    Raises:
        OSError: it cannot be created or written (``strerror`` says why).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def results_paths(out_dir: str | Path, stem: str = RESULTS_STEM) -> dict[str, Path]:
    out = Path(out_dir)
    return {"csv": out / f"{stem}.csv", "parquet": out / f"{stem}.parquet", "meta": out / f"{stem}{META_SUFFIX}"}


def write_results(
    table: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path, *, stem: str = RESULTS_STEM
) -> dict[str, Path]:
    """Write the table as CSV and Parquet and its metadata as JSON, each atomically.

    Args:
        table: one row per case x organ.
        meta: conventions and run information (JSON-serialisable; NaN becomes null).
        out_dir: folder, created if missing.
        stem: file name stem (``results`` -> ``results.csv``, ``results.parquet``, ``results.meta.json``).

    Returns:
        ``{"csv": path, "parquet": path, "meta": path}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = results_paths(out_dir, stem)
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    table = normalise(order_columns(table))
    text = meta_json(meta)
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), PARQUET_META_KEY: text.encode()})
    atomic_write_text(paths["meta"], text + "\n")
    atomic_write(paths["csv"], lambda p: table.to_csv(p, index=False))
    atomic_write(paths["parquet"], lambda p: pq.write_table(arrow, p))
    return paths


def resolve_results_path(path: str | Path) -> Path:
    """The table file of ``path``: a ``.parquet`` / ``.csv`` file, its ``.meta.json`` or a folder holding one.

    Raises:
        FileNotFoundError: nothing readable there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}: {path} does not exist")
    if path.is_dir():
        candidates = [path / f"{RESULTS_STEM}.parquet", path / f"{RESULTS_STEM}.csv"]
    elif path.name.endswith(META_SUFFIX):
        stem = path.name[: -len(META_SUFFIX)]
        candidates = [path.with_name(f"{stem}.parquet"), path.with_name(f"{stem}.csv")]
    else:
        candidates = [path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no results table at {path} (looked for {', '.join(str(c) for c in candidates)})")
    return found


def sidecar_path(path: str | Path) -> Path:
    """``results.csv`` -> ``results.meta.json``."""
    path = Path(path)
    return path.with_name(path.with_suffix("").name + META_SUFFIX)


def read_results(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a results table and its metadata.

    Args:
        path: a folder holding ``results.parquet`` or ``results.csv``, or one of the files
            (``.parquet``, ``.csv`` or ``.meta.json``).

    Returns:
        ``(table, meta)``: text columns as text (``""`` when missing), ``meta`` from the file the table
        came from (see the module docstring), ``{}`` when none was written.

    Raises:
        FileNotFoundError: no table at ``path``.
        ValueError: not a table file, or a file that cannot be parsed (the message names it).
    """
    found = resolve_results_path(path)
    meta: dict[str, Any] = {}
    sidecar = sidecar_path(found)
    try:
        if found.suffix == ".parquet":
            import pyarrow.parquet as pq

            arrow = pq.read_table(found)
            raw = (arrow.schema.metadata or {}).get(PARQUET_META_KEY)
            meta = json.loads(raw) if raw else {}
            table = arrow.to_pandas()
        elif found.suffix == ".csv":
            header = pd.read_csv(found, nrows=0).columns
            text = [c for c in header if c in TEXT_COLUMNS]
            table = pd.read_csv(
                found,
                dtype={c: str for c in text},
                keep_default_na=False,
                na_values={c: ["", "nan", "NaN"] for c in header if c not in TEXT_COLUMNS},
            )
        else:
            raise ValueError(f"{found}: not a results table (expected .parquet or .csv)")
        if not meta and sidecar.is_file():
            meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(found)):
            raise
        raise ValueError(f"{found}: cannot read the results table ({type(exc).__name__}: {exc})") from exc
    return normalise(table), meta


# --------------------------------------------------------------------------- the journal


def cases_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CASES_DIR


def case_path(run_dir: str | Path, case_id: str) -> Path:
    return cases_dir(run_dir) / f"{case_id}.json"


def _json_value(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_case(run_dir: str | Path, case_id: str, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Journal one finished case: ``<run_dir>/cases/<case_id>.json``, written atomically.

    Args:
        run_dir: the run folder.
        case_id: the case; every row must carry it.
        rows: the case's rows, one per organ.

    Returns:
        The file written.

    Raises:
        ValueError: a row names another case.
    """
    rows = [dict(r) for r in rows]
    other = {str(r.get("case_id")) for r in rows} - {str(case_id)}
    if other:
        raise ValueError(f"case {case_id}: rows of another case {sorted(other)}")
    folder = cases_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"format": CASE_FORMAT, "case_id": str(case_id), "n_rows": len(rows), "rows": rows}
    return atomic_write_text(folder / f"{case_id}.json", json.dumps(payload, default=_json_value))


def read_case(path: str | Path, organs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of one journal file, checked.

    Args:
        path: ``cases/<case_id>.json``.
        organs: the organs every case must have exactly one row of (None: not checked).

    Returns:
        The rows.

    Raises:
        JournalError: the file cannot be read or parsed, or is not one complete case.
    """
    path = Path(path)
    case_id = path.name[: -len(".json")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise JournalError(f"{path}: not a readable case file ({type(exc).__name__}: {exc})") from None
    if isinstance(data, list):  # the layout before CASE_FORMAT: the rows alone
        rows, expected = data, None
    elif isinstance(data, dict) and data.get("format") == CASE_FORMAT and isinstance(data.get("rows"), list):
        rows, expected = data["rows"], data.get("n_rows")
        if data.get("case_id") != case_id:
            raise JournalError(f"{path}: holds case {data.get('case_id')!r}, not {case_id!r}")
    else:
        raise JournalError(f"{path}: not a case file (expected {CASE_FORMAT!r} with its rows)")
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise JournalError(f"{path}: holds no rows")
    if expected is not None and expected != len(rows):
        raise JournalError(f"{path}: partial case ({len(rows)} of {expected} rows)")
    for row in rows:
        if str(row.get("case_id")) != case_id:
            raise JournalError(f"{path}: a row of case {row.get('case_id')!r}")
        if row.get("status") not in STATUSES:
            raise JournalError(f"{path}: row of organ {row.get('organ')!r} has status {row.get('status')!r}")
    if organs is not None:
        got = [str(r.get("organ")) for r in rows]
        if sorted(got) != sorted(map(str, organs)):
            missing = sorted(set(organs) - set(got))
            extra = sorted(set(got) - set(organs)) or sorted({o for o in got if got.count(o) > 1})
            raise JournalError(
                f"{path}: partial case (organs missing: {', '.join(missing) or '-'}; unexpected or repeated: "
                f"{', '.join(extra) or '-'})"
            )
    return rows


def set_aside(path: str | Path) -> Path:
    """Move a journal file into ``cases/set_aside/`` (a timestamped name; nothing is deleted)."""
    path = Path(path)
    folder = path.parent / SET_ASIDE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    os.replace(path, target)
    return target


def read_journal(
    run_dir: str | Path,
    organs: Sequence[str] | None = None,
    cases: Iterable[str] | None = None,
    put_aside: bool = True,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The checked journal of a run folder.

    Args:
        run_dir: the run folder (its ``cases/``).
        organs: the organs every case must have (see :func:`read_case`).
        cases: read only these case ids (None: every file).
        put_aside: move a file that fails its check into ``cases/set_aside/``.

    Returns:
        ``({case_id: rows}, problems)``: the good cases, and one message per file that failed its
        check (naming the file, the problem and where it was moved).
    """
    folder = cases_dir(run_dir)
    wanted = None if cases is None else set(map(str, cases))
    good: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return good, problems
    for path in sorted(folder.glob("*.json")):
        case_id = path.name[: -len(".json")]
        if case_id.startswith(".") or (wanted is not None and case_id not in wanted):
            continue
        try:
            good[case_id] = read_case(path, organs)
        except JournalError as exc:
            message = str(exc)
            if put_aside:
                message += f"; set aside as {set_aside(path)}, the case is scored again"
            problems.append(message)
    return good, problems


def journaled_cases(run_dir: str | Path) -> set[str]:
    """Case ids that have a journal file (unchecked: use :func:`read_journal` to trust them)."""
    folder = cases_dir(run_dir)
    return {p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.startswith(".")} if folder.is_dir() else set()
