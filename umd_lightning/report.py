"""Discrepancy analysis and a self-contained HTML report from one or more results tables.

Usage::

    python -m umd_lightning.report RESULTS [RESULTS ...] --out DIR [--n-boot 2000] [--seed 0]

Each RESULTS is a ``results.csv`` / ``results.parquet`` (with its ``results.meta.json``) or a run
folder holding one. Several tables (e.g. several models' runs) are analysed side by side (rankings
per view). Writes the tables (``discrepancy.csv``, ``headline.csv``, ``ranking.csv`` ...),
``summary.json``, ``figures/*.png`` and ``report.html`` into DIR and prints the Dice headline. Never
re-runs a model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from umd_lightning.analysis.discrepancy import DEFAULT_METRICS
from umd_lightning.analysis.report import analyze, combine_results, write_analysis
from umd_lightning.results import read_results


def load_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read one results table (the results contract's reader)."""
    return read_results(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m umd_lightning.report",
        description="Paired modality-discrepancy analysis and HTML report from results tables.",
    )
    p.add_argument("results", nargs="+", help="results.csv / results.parquet files or run folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    p.add_argument("--alpha", type=float, default=0.05, help="Holm family-wise level (default 0.05)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), help="metric columns to analyse")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--no-overlays", action="store_true", help="skip the NIfTI slice overlays")
    p.add_argument("--title", default=None, help="report title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = [(*load_table(p), str(p)) for p in args.results]
        df, meta, reported = combine_results(loaded)
        analysis = analyze(
            df, meta, metrics=args.metrics, n_boot=args.n_boot, seed=args.seed, level=args.level,
            alpha=args.alpha, figures=not args.no_figures, overlays=not (args.no_figures or args.no_overlays),
            reported=reported,
        )
        written = write_analysis(analysis, args.out, title=args.title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    head = analysis.headline
    dice = head[head["metric"] == "dice"] if len(head) else head
    if len(dice):
        print("Headline (organ-averaged paired Dice difference, compared - reference):")
        for sentence in dice["sentence"]:
            print(f"  {sentence}")
    rank = analysis.ranking
    if len(rank) and rank["model"].nunique() > 1:
        dice_rank = rank[rank["metric"] == "dice"]
        print("Dice ranking per view (rank, bootstrap rank interval, change from the structural view):")
        print(dice_rank[["view", "model", "mean", "rank", "rank_ci_low", "rank_ci_high", "p_first",
                         "rank_change_vs_ref"]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for note in analysis.notes:
        print(f"note: {note}")
    print(f"{len(written['tables'])} tables and {len(written['figures'])} figures in {args.out}")
    print(f"report: {written['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
