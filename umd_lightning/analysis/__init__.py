"""Discrepancy analysis from results tables alone (never re-runs a model).

``stats`` (paired statistics), ``discrepancy`` (tables), ``figures`` and ``overlay`` (matplotlib),
``report`` (pipeline + self-contained HTML). Imports only ``organs``, ``results`` and libraries.
"""

from __future__ import annotations

from .discrepancy import (
    apply_empty_policy,
    discrepancy_table,
    generalisation_gap,
    reported_from_meta,
    select_cases,
    sensitivity_table,
    view_summary,
)
from ..results import read_results  # the results contract's reader, for notebooks
from .report import Analysis, analyze, combine_results, render_report, write_analysis, write_report
from .stats import bootstrap_ci, cohens_dz, holm, paired_comparison, wilcoxon_p

__all__ = [
    "Analysis", "analyze", "apply_empty_policy", "bootstrap_ci", "cohens_dz", "combine_results",
    "discrepancy_table", "generalisation_gap", "holm", "paired_comparison", "read_results", "render_report",
    "reported_from_meta", "select_cases", "sensitivity_table", "view_summary", "wilcoxon_p", "write_analysis",
    "write_report",
]
