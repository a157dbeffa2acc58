"""Discrepancy analysis from results tables alone (never re-runs a model).

``stats`` (paired statistics and what small samples allow), ``discrepancy`` (organ tables),
``headline`` (organ-averaged difference with a subject-clustered interval and a mixed-model check),
``ranking`` (models side by side), ``exports`` (challengeR table, nnU-Net ``summary.json``),
``methods`` (what was done and its caveats), ``figures`` and ``overlay`` (matplotlib), ``report``
(pipeline + self-contained HTML). Imports only ``organs``, ``results`` and libraries.
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
from .exports import challenger_table, nnunet_summary, summary_json
from .headline import headline_table
from .methods import methods_block, voxel_spacing
from .ranking import ranking_tables
from .report import Analysis, analyze, combine_results, render_report, write_analysis, write_report
from .stats import (
    bootstrap_ci,
    cohens_dz,
    holm,
    holm_floor,
    mean_ci,
    min_attainable_p,
    paired_comparison,
    subjects_needed,
    wilcoxon_p,
)

__all__ = [
    "Analysis", "analyze", "apply_empty_policy", "bootstrap_ci", "challenger_table", "cohens_dz",
    "combine_results", "discrepancy_table", "generalisation_gap", "headline_table", "holm", "holm_floor",
    "mean_ci", "methods_block", "min_attainable_p", "nnunet_summary", "paired_comparison", "ranking_tables",
    "read_results", "render_report", "reported_from_meta", "select_cases", "sensitivity_table",
    "subjects_needed", "summary_json", "view_summary", "voxel_spacing", "wilcoxon_p", "write_analysis",
    "write_report",
]
