"""Cost of issue 16's statistics (headline, rankings, exports, methods) against the organ discrepancy table
they sit beside, on the main job's table shape, in one process that holds torch (as the main job does).

Table: ``analysis.demo.demo_results`` with the main job's shape (4 subjects x 13 organs x 4 views, one
model), or a results table given with ``--results`` (e.g. a run folder's ``results.csv``). Printed: CPU
seconds per call (best of ``--repeat``) of ``discrepancy_table`` (the reference), ``headline_table``
(subject-clustered bootstrap + mixed models for Dice), ``ranking_tables``, the exports and the methods
block, and the ratio of each to the reference. The first headline call also pays statsmodels' import
(~0.5 s), shown separately.

Examples:
    python benchmarks/analysis_stats_bench.py
    python benchmarks/analysis_stats_bench.py --results runs/zero_shot_pet/<time>/results.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402,F401  (the main job's heap: statsmodels' Holm collects garbage over it)

from umd_lightning.analysis.demo import demo_results  # noqa: E402
from umd_lightning.analysis.discrepancy import DEFAULT_METRICS, discrepancy_table  # noqa: E402
from umd_lightning.analysis.exports import challenger_table, summary_json  # noqa: E402
from umd_lightning.analysis.headline import headline_table  # noqa: E402
from umd_lightning.analysis.methods import methods_block  # noqa: E402
from umd_lightning.analysis.ranking import ranking_tables  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402
from umd_lightning.results import read_results  # noqa: E402


def cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=None, help="a results table (default: the main job's shape)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    if args.results:
        df, meta = read_results(args.results)
    else:
        df, meta = demo_results(n_subjects=4, organs=UMD13.organs)
    metrics = [m for m in DEFAULT_METRICS if m in df.columns]
    t = time.process_time()
    headline_table(df, metrics, n_boot=args.n_boot)
    first = time.process_time() - t
    disc = discrepancy_table(df, metrics, n_boot=args.n_boot)
    head = headline_table(df, metrics, n_boot=args.n_boot)
    ref = cpu(lambda: discrepancy_table(df, metrics, n_boot=args.n_boot), args.repeat)
    rows = {
        "headline_table": cpu(lambda: headline_table(df, metrics, n_boot=args.n_boot), args.repeat),
        "ranking_tables": cpu(lambda: ranking_tables(df, metrics, n_boot=args.n_boot), args.repeat),
        "challenger_table + summary_json": cpu(lambda: (challenger_table(df, metrics), summary_json(df)), args.repeat),
        "methods_block": cpu(lambda: methods_block(df, meta, disc, head, args.n_boot, 0.95, 0.05, ("dice",)), args.repeat),
    }
    print(f"table: {len(df)} rows, {df['subject_id'].nunique()} subjects, {df['model'].nunique()} model(s)")
    print(f"discrepancy_table (reference): {ref:.3f} CPU s")
    for name, sec in rows.items():
        print(f"{name}: {sec:.3f} CPU s = {sec / ref:.2f}x the reference")
    total = sum(rows.values())
    print(f"all new tables: {total:.3f} CPU s = {total / ref:.2f}x the reference; "
          f"first headline call with statsmodels' import: {first:.3f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
