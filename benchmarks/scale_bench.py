"""The main job at clinical resolution: memory and time per case against voxels per case (issue 18).

For each ``scale`` of the synthetic cohort (1 = the built-in 3x3x4 mm cohort; 0.33 = clinical CT at
0.99x0.99x1.32 mm, 75 M voxels) the main job runs in a fresh process on one test subject (its four
views)::

    python -m umd_lightning +experiment=zero_shot_pet data.source.n_subjects=2 data.source.scale=S \
        data.splits.n_test=1 analysis=none

(the cohort is generated first, in a process of its own, so the figures cover evaluation only). A
sampler reads the RSS of the job and of every child process (the loader worker) every 50 ms with
psutil, and their CPU times. Printed per scale: voxels per case (the label grid, the evaluation grid),
wall and CPU seconds per case (from the log line that starts the test loop to the one that writes the
table), the peak RSS of the main process and of each child during the test loop, and each peak's
ratio to one case's volume held as float32 (the largest case): constant ratios across scales mean
memory that grows with voxels, linearly. Then a least-squares line of the main process' peak against
voxels per case, with each scale's residual.

Only the test loop counts: figures and overlays (``analysis=none`` here) are another stage's cost.
Timings on a shared machine vary with its load; compare the CPU seconds, and ratios within one run.

Examples:
    python benchmarks/scale_bench.py                      # scales 1 0.5 0.33 0.25
    python benchmarks/scale_bench.py --scales 1 0.33 --extra data.num_workers=0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
START = re.compile(r"^\[(?P<t>[\d-]+ [\d:,]+)\].*?(?P<n>\d+) case\(s\) to score")
TABLE = re.compile(r"^\[(?P<t>[\d-]+ [\d:,]+)\].*results table:")


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def sample(cmd: list[str], log_path: Path, period: float = 0.05) -> list[tuple[float, int, dict[int, int], float]]:
    """Run ``cmd``; every ``period`` s record (time, main RSS, {child pid: RSS}, CPU s of main + children)."""
    timeline = []
    cpu_seen: dict[int, float] = {}
    with open(log_path, "w") as log:
        job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        main = psutil.Process(job.pid)
        while job.poll() is None:
            try:
                rss = main.memory_info().rss
                cpu_seen[job.pid] = _cpu(main)
                kids = {}
                for kid in main.children(recursive=True):
                    try:
                        kids[kid.pid] = kid.memory_info().rss
                        cpu_seen[kid.pid] = _cpu(kid)
                    except psutil.Error:
                        pass
                timeline.append((time.time(), rss, kids, sum(cpu_seen.values())))
            except psutil.Error:
                pass
            time.sleep(period)
    if job.returncode != 0:
        raise SystemExit(f"the job failed (exit {job.returncode}); see {log_path}")
    return timeline


def case_voxels(run_dir: Path) -> list[int]:
    """Label-grid voxels of every scored case, from the journal's label paths."""
    import nibabel as nib

    voxels = []
    for case in sorted((run_dir / "cases").glob("*.json")):
        row = json.loads(case.read_text())["rows"][0]
        voxels.append(int(np.prod(nib.load(row["label_path"]).shape[:3])))
    return voxels


def run_scale(scale: float, extra: list[str], workdir: Path) -> dict:
    python = sys.executable
    # The cohort first, alone: its generation is not evaluation.
    gen = (
        "from pathlib import Path; import os;"
        "from umd_lightning.data.synthetic import CohortConfig, ensure_cohort;"
        "root = Path(os.environ.get('UMD_CACHE_DIR', Path.home() / '.cache/umd_lightning'));"
        f"ensure_cohort(root / 'synthetic', CohortConfig(n_subjects=2, scale={scale}), workers=1)"
    )
    subprocess.run([python, "-c", gen], check=True, cwd=REPO)
    run_dir = workdir / f"scale_{scale:g}"
    cmd = [
        python, "-m", "umd_lightning", "+experiment=zero_shot_pet", "data.source.n_subjects=2",
        f"data.source.scale={scale}", "data.splits.n_test=1", "analysis=none", "logger=none",
        f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    log_path = workdir / f"scale_{scale:g}.log"
    timeline = sample(cmd, log_path)
    start = end = None
    n_cases = 0
    for line in log_path.read_text().splitlines():
        if (m := START.match(line)) is not None:
            start, n_cases = _stamp(m["t"]), int(m["n"])
        elif (m := TABLE.match(line)) is not None:
            end = _stamp(m["t"])
    if start is None or end is None or n_cases == 0:
        raise SystemExit(f"no test loop found in {log_path}")
    loop = [s for s in timeline if start <= s[0] <= end]
    cpu = np.interp([start, end], [s[0] for s in timeline], [s[3] for s in timeline])
    workers: dict[int, int] = {}
    for _, _, kids, _ in loop:
        for pid, rss in kids.items():
            workers[pid] = max(workers.get(pid, 0), rss)
    voxels = case_voxels(run_dir)
    return {
        "scale": scale,
        "cases": n_cases,
        "voxels": float(np.mean(voxels)),
        "float32_case_bytes": 4 * max(voxels),
        "wall_per_case": (end - start) / n_cases,
        "cpu_per_case": float(cpu[1] - cpu[0]) / n_cases,
        "main_peak": max(s[1] for s in loop),
        "total_peak": max(s[1] + sum(s[2].values()) for s in loop),
        "workers": sorted((v for v in workers.values() if v > 50 * 2**20), reverse=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 0.33, 0.25])
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders and logs")
    args = parser.parse_args()
    workdir = args.out or Path(tempfile.mkdtemp(prefix="scale_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    gb = 1e9
    rows = []
    for scale in args.scales:
        row = run_scale(scale, args.extra, workdir)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{os.cpu_count()} CPUs; test loop only; RSS in GB; ratio = peak RSS / one case as float32 (largest case)")
    print("| scale | voxels/case | wall s/case | CPU s/case | main peak | workers' peaks | main+workers | main ratio | total ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ws = " / ".join(f"{w / gb:.2f}" for w in r["workers"]) or "-"
        print(
            f"| {r['scale']:g} | {r['voxels'] / 1e6:.1f} M | {r['wall_per_case']:.1f} | {r['cpu_per_case']:.1f} | "
            f"{r['main_peak'] / gb:.2f} | {ws} | {r['total_peak'] / gb:.2f} | "
            f"{r['main_peak'] / r['float32_case_bytes']:.1f} | {r['total_peak'] / r['float32_case_bytes']:.1f} |"
        )
    if len(rows) >= 2:
        x = np.array([r["voxels"] for r in rows])
        y = np.array([r["main_peak"] for r in rows], dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        print(f"\nmain peak = {intercept / gb:.2f} GB + {slope:.1f} bytes x voxels per case (least squares);"
              " residuals: " + ", ".join(f"{r['scale']:g}: {(yy - intercept - slope * xx) / gb:+.2f} GB"
                                         for r, xx, yy in zip(rows, x, y)))


if __name__ == "__main__":
    main()
