"""Per-case segmentation metrics (Dice, HD95, NSD, ASSD per organ), torchmetrics wrappers and the
results table. Definitions: ``umd_lightning/metrics/README.md`` and :mod:`.functional`.

The torchmetrics classes are imported on first use, so the functions load without torch (the
evaluate CLI's worker processes start faster). The table on disk is :mod:`umd_lightning.results`'s.
"""

from __future__ import annotations

from typing import Any

from umd_lightning.metrics.functional import (
    METRIC_KEYS,
    ROW_KEYS,
    STATUSES,
    case_metrics,
    failed_rows,
    metrics_metadata,
    volume_diagonal_mm,
)

_LAZY = {"CaseMetrics", "summary", "summary_to_log_dict", "records_to_table", "META_COLUMNS"}

__all__ = [
    "CaseMetrics",
    "METRIC_KEYS",
    "META_COLUMNS",
    "ROW_KEYS",
    "STATUSES",
    "case_metrics",
    "failed_rows",
    "metrics_metadata",
    "records_to_table",
    "summary",
    "summary_to_log_dict",
    "volume_diagonal_mm",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from umd_lightning.metrics import collection

        return getattr(collection, name)
    raise AttributeError(f"module 'umd_lightning.metrics' has no attribute {name!r}")
