"""Cost of the paper figures (300-dpi PNG + SVG, issue 16 item 6) against the 100-dpi PNG the analysis wrote before,
on the same figures, in one process.

Table: ``analysis.demo.demo_results`` with the main job's shape (4 subjects x 13 organs x 4 views, one model),
or a results table given with ``--results`` (e.g. a run folder's ``results.csv``; its overlays are drawn too
when its NIfTI files exist). Printed: wall and CPU seconds (this process and its children) of saving every
figure as a 100-dpi PNG only (the reference), as a 300-dpi PNG + SVG in one process, and as a 300-dpi PNG + SVG
over two forked processes (what a run does), with the ratios to the reference. The machine's other load changes
the wall times; the CPU ratios hold.

Examples:
    python benchmarks/figures_bench.py
    python benchmarks/figures_bench.py --results runs/zero_shot_pet/<time>/results.csv
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from umd_lightning.analysis.demo import demo_results  # noqa: E402
from umd_lightning.analysis.report import analyze, write_figures  # noqa: E402
from umd_lightning.results import read_results  # noqa: E402


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", help="a results table (csv/parquet or run folder); default: the demo table")
    args = p.parse_args()
    if args.results:
        df, meta = read_results(args.results)
    else:
        df, meta = demo_results(n_subjects=4, models=("unet",), seed=0)
    analysis = analyze(df, meta, n_boot=200, overlays=bool(args.results))
    figs = analysis.figures
    print(f"{len(figs)} figures: {', '.join(sorted(figs))}")
    runs = {"100-dpi PNG (reference)": dict(dpi=100, formats=("png",), processes=1),
            "300-dpi PNG + SVG, 1 process": dict(dpi=300, formats=("png", "svg"), processes=1),
            "300-dpi PNG + SVG, 2 processes": dict(dpi=300, formats=("png", "svg"), processes=2)}
    ref = None
    for name, kw in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            t, c = time.perf_counter(), cpu()
            write_figures(figs, tmp, **kw)
            wall, used = time.perf_counter() - t, cpu() - c
        ref = ref or (wall, used)
        print(f"{name:32s} wall {wall:6.2f} s ({wall / ref[0]:.2f}x)   cpu {used:6.2f} s ({used / ref[1]:.2f}x)")


if __name__ == "__main__":
    main()
