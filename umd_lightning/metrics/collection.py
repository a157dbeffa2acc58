"""torchmetrics wrapper around :func:`~umd_lightning.metrics.functional.case_metrics`: per-case rows
that survive a DDP gather, a tidy table, and means per view x organ.

Each :meth:`CaseMetrics.update` evaluates one case (or a batch of cases) and appends one *record*:
the case's meta (subject, session, view, case id and any extra string/number fields) with its organ
rows, as JSON. Records are the only state (``add_state("records", [], dist_reduce_fx="cat")``), so
under DDP ``compute()`` on every rank gathers every rank's records and returns the full table.

Why records are bytes held in a float tensor: DDP gathers tensors, not strings, so a record is
encoded as its bytes (values 0..255, exact in any float dtype) behind a 4-byte length. The tensor
has the metric's own float dtype because torchmetrics substitutes an empty tensor of that dtype for
a rank that saw no case, and ``all_gather`` needs one dtype on every rank.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics import Metric

from umd_lightning.metrics.functional import (
    METRIC_KEYS,
    ROW_KEYS,
    STATUSES,
    EmptyPolicy,
    HDDefinition,
    NSDDefinition,
    case_metrics,
    failed_rows,
    metrics_metadata,
)

#: Meta columns that lead every table, in this order, when present.
META_COLUMNS: tuple[str, ...] = ("subject_id", "session", "view", "case_id")


class CaseMetrics(Metric):
    """Per-case Dice, HD95, NSD and ASSD per organ, accumulated as table rows and DDP-gathered.

    Args:
        labels: ``{label_id: organ_name}`` (or an ``OrganSet``).
        nsd_tolerance: NSD tolerance in mm, one value or ``{organ: mm}``.
        hd_percentile: Hausdorff percentile.
        empty_policy: ``"worst"`` or ``"exclude"``.
        hd_definition: ``"max_directed"`` (MONAI) or ``"pooled"`` (medpy).
        nsd_definition: ``"voxel_count"`` (MONAI) or ``"surfel_area"`` (DeepMind).
        workers: threads for the nearest-surface queries.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Example:
        >>> import torch
        >>> metric = CaseMetrics({1: "liver"})
        >>> ref = torch.zeros(8, 8, 8, dtype=torch.long); ref[2:6, 2:6, 2:6] = 1
        >>> rows = metric.update(ref.clone(), ref, (1.0, 1.0, 1.0), {"subject_id": "s1", "view": "CT", "case_id": "c1"})
        >>> rows[0]["dice"], rows[0]["status"]
        (1.0, 'ok')
        >>> metric.compute()[["case_id", "organ", "dice", "hd95"]].to_dict("records")
        [{'case_id': 'c1', 'organ': 'liver', 'dice': 1.0, 'hd95': 0.0}]
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    records: list[torch.Tensor] | torch.Tensor

    def __init__(
        self,
        labels: Mapping[int, str],
        *,
        nsd_tolerance: float | Mapping[str, float] = 2.0,
        hd_percentile: float = 95.0,
        empty_policy: EmptyPolicy = "worst",
        hd_definition: HDDefinition = "max_directed",
        nsd_definition: NSDDefinition = "voxel_count",
        workers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.labels = {int(k): str(v) for k, v in dict(getattr(labels, "labels", labels)).items()}
        self.options = dict(
            nsd_tolerance=dict(nsd_tolerance) if isinstance(nsd_tolerance, Mapping) else float(nsd_tolerance),
            hd_percentile=float(hd_percentile),
            empty_policy=empty_policy,
            hd_definition=hd_definition,
            nsd_definition=nsd_definition,
        )
        # Validates the options now rather than at the first case.
        metrics_metadata(**self.options)
        self.workers = int(workers)
        self.add_state("records", default=[], dist_reduce_fx="cat")
        #: Rows (meta merged in) of the latest update, also returned by :meth:`update`.
        self.last_rows: list[dict[str, Any]] = []

    def _wrap_update(self, update: Callable) -> Callable:
        # torchmetrics' wrapper drops update's return value; hand the case's rows back to the caller
        # (the Lightning module journals them) while keeping the wrapper's bookkeeping.
        wrapped = super()._wrap_update(update)

        @functools.wraps(update)
        def returning(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            wrapped(*args, **kwargs)
            return self.last_rows

        return returning

    def update(  # type: ignore[override]
        self,
        pred: Any,
        ref: Any,
        spacing: Any,
        meta: Mapping[str, Any],
        organs_predicted: Sequence[str] | None = None,
        error: str | None = None,
    ) -> list[dict[str, Any]]:
        """Evaluate one case (or a batch) and keep its rows.

        Args:
            pred: label map (D, H, W), or a batch (B, D, H, W) / (B, 1, D, H, W); numpy or torch.
            ref: reference label map, same shape.
            spacing: voxel size in mm (3,), or (B, 3) for a batch.
            meta: ``subject_id``, ``session``, ``view``, ``case_id`` and any extra string/number fields,
                one value each (a collated batch's lists of length B are split per case).
            organs_predicted: organs the model can name; the others are ``not_predicted``.
            error: mark the case(s) failed with this message instead of evaluating (pred/ref ignored).

        Returns:
            The rows of the case(s): meta fields merged into each organ row.
        """
        cases = _split_cases(pred, ref, spacing, meta, failed=error is not None)
        out: list[dict[str, Any]] = []
        for p, r, sp, m in cases:
            if error is not None:
                rows = failed_rows(self.labels, str(error))
            else:
                rows = case_metrics(
                    p, r, sp, self.labels, organs_predicted=organs_predicted, workers=self.workers, **self.options
                )
            self.records.append(_encode(m, rows, device=self.device, dtype=self.dtype))
            out.extend({**m, **row} for row in rows)
        self.last_rows = out
        return out

    def update_failed(self, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Record a case that could not be evaluated: one ``failed`` row per organ (NaN metrics).

        Args:
            meta: the case's meta; its ``error`` entry (if any) becomes the rows' ``error``.

        Returns:
            The rows, meta merged in.
        """
        meta = dict(meta)
        error = str(meta.pop("error", "")) or "failed"
        return self.update(None, None, None, meta, error=error)

    def compute(self) -> pd.DataFrame:
        """The gathered table: one row per case x organ, meta columns first.

        Cases recorded twice (a ``DistributedSampler`` pads ranks by repeating cases) appear once; rows
        are ordered by subject, session, view and case id, so the table does not depend on the number
        of processes.
        """
        return records_to_table(self.records)

    def summary(self, by: Sequence[str] = ("view", "organ")) -> pd.DataFrame:
        """Means per view x organ of the gathered table (see :func:`summary`)."""
        return summary(self.compute(), by=by)

    def metadata(self, **extra: Any) -> dict[str, Any]:
        """The conventions of this metric for the results table's metadata (``results.meta.json``)."""
        return metrics_metadata(**self.options, **extra)


# --------------------------------------------------------------------------- encoding


def _plain(value: Any) -> Any:
    """A JSON-able scalar from a meta value (numpy/torch scalars, paths, one-element batches)."""
    if isinstance(value, torch.Tensor):
        return _plain(value.item()) if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.item()) if value.size == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _plain(value[0])
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _meta_length(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 1:
        return int(value.shape[0])
    return None


def _split_cases(pred: Any, ref: Any, spacing: Any, meta: Mapping[str, Any], failed: bool) -> list[tuple]:
    """One (pred, ref, spacing, meta) per case from a single case or a batch."""
    if failed:
        return [(None, None, None, {str(k): _plain(v) for k, v in meta.items()})]
    shape = tuple(pred.shape)
    while len(shape) > 4 and shape[1] == 1:  # (B, 1, D, H, W)
        pred, ref = pred[:, 0], ref[:, 0]
        shape = tuple(pred.shape)
    if len(shape) == 4 and shape[0] > 1:
        n = shape[0]
        sp = spacing.detach().cpu().numpy() if isinstance(spacing, torch.Tensor) else np.asarray(spacing, dtype=float)
        sp = np.broadcast_to(sp, (n, 3)) if sp.ndim == 1 else sp
        cases = []
        for i in range(n):
            m = {}
            for k, v in meta.items():
                length = _meta_length(v)
                if length is not None and length != n and length != 1:
                    raise ValueError(f"meta {k!r} has {length} values for a batch of {n} cases")
                m[str(k)] = _plain(v[i] if length == n else v)
            cases.append((pred[i], ref[i], sp[i], m))
        return cases
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    spacing = np.asarray(spacing, dtype=float).reshape(-1)
    return [(pred, ref, spacing, {str(k): _plain(v) for k, v in meta.items()})]


def _encode(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    payload = zlib.compress(json.dumps({"meta": dict(meta), "rows": list(rows)}, allow_nan=True).encode())
    data = struct.pack(">I", len(payload)) + payload
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device=device, dtype=dtype)


def _decode(records: Any) -> list[dict[str, Any]]:
    if isinstance(records, (list, tuple)):
        if not records:
            return []
        records = torch.cat([r.reshape(-1) for r in records])
    data = records.detach().cpu().reshape(-1).round().to(torch.uint8).numpy().tobytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(json.loads(zlib.decompress(data[pos + 4 : pos + 4 + n])))
        pos += 4 + n
    return out


def records_to_table(records: Any) -> pd.DataFrame:
    """Decode gathered records into the tidy table (one row per case x organ).

    Args:
        records: the ``records`` state: a 1D tensor or a list of them.

    Returns:
        DataFrame with meta columns (:data:`META_COLUMNS` first, then extra fields in first-seen
        order), then :data:`~umd_lightning.metrics.functional.ROW_KEYS`, then ``error`` when any
        case failed.
    """
    cases, seen = [], set()
    for rec in _decode(records):
        key = json.dumps(rec["meta"], sort_keys=True)
        if key not in seen:  # a DistributedSampler repeats cases to even out ranks
            seen.add(key)
            cases.append(rec)
    sort_keys = [k for k in META_COLUMNS if any(k in c["meta"] for c in cases)]
    cases.sort(key=lambda c: tuple(str(c["meta"].get(k, "")) for k in sort_keys))
    meta_cols = [k for k in META_COLUMNS if k in sort_keys]
    for c in cases:
        meta_cols += [k for k in c["meta"] if k not in meta_cols]
    rows = [{**c["meta"], **row} for c in cases for row in c["rows"]]
    extra = ["error"] if any("error" in r for r in rows) else []
    columns = [*meta_cols, *[k for k in ROW_KEYS if k not in meta_cols], *extra]
    if not rows:
        return pd.DataFrame(columns=[*META_COLUMNS, *ROW_KEYS])
    table = pd.DataFrame(rows, columns=columns)
    if extra:
        table["error"] = table["error"].fillna("")
    return table


# --------------------------------------------------------------------------- summaries


def summary(
    table: pd.DataFrame, by: Sequence[str] = ("view", "organ"), metrics: Sequence[str] = METRIC_KEYS
) -> pd.DataFrame:
    """Means per view x organ (or any grouping), with counts per status.

    NaN values (``both_empty``, ``not_predicted``, ``failed``, one-sided empties under ``"exclude"``)
    are left out of the means and show up in the counts.

    Args:
        table: a results table (:meth:`CaseMetrics.compute` or :func:`~umd_lightning.results.read_results`).
        by: grouping columns; those missing from the table are skipped.
        metrics: metric columns to average.

    Returns:
        One row per group: ``n_rows``, ``n_<status>`` for every status, and ``<metric>_mean``,
        ``<metric>_std``, ``<metric>_n`` (rows in the mean) per metric.
    """
    keys = [k for k in by if k in table.columns]
    metrics = [m for m in metrics if m in table.columns]
    out_cols = [*keys, "n_rows", *[f"n_{s}" for s in STATUSES]]
    out_cols += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std", "n")]
    if table.empty:
        return pd.DataFrame(columns=out_cols)
    groups = table.groupby(keys, sort=False, dropna=False) if keys else [((), table)]
    recs = []
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        rec: dict[str, Any] = dict(zip(keys, key))
        rec["n_rows"] = len(sub)
        counts = sub["status"].value_counts() if "status" in sub else {}
        for s in STATUSES:
            rec[f"n_{s}"] = int(counts.get(s, 0))
        for m in metrics:
            vals = pd.to_numeric(sub[m], errors="coerce").to_numpy(dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            rec[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            rec[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            rec[f"{m}_n"] = int(len(vals))
        recs.append(rec)
    return pd.DataFrame(recs, columns=out_cols)


def summary_to_log_dict(
    table_summary: pd.DataFrame, stage: str = "test", metrics: Sequence[str] = METRIC_KEYS
) -> dict[str, float]:
    """Flatten :func:`summary` (by view x organ) to logger names ``stage/metric/view/organ``.

    Args:
        table_summary: output of :func:`summary` with ``view`` and ``organ`` columns.
        stage: ``test``, ``val``, ...
        metrics: metrics to log; groups without any value in the mean are skipped.

    Returns:
        ``{"test/dice/PET_CT/liver": 0.91, ...}``.
    """
    out: dict[str, float] = {}
    for rec in table_summary.to_dict("records"):
        for m in metrics:
            value = rec.get(f"{m}_mean")
            if value is not None and np.isfinite(value):
                out[f"{stage}/{m}/{rec.get('view', 'all')}/{rec.get('organ', 'all')}"] = float(value)
    return out
