"""Generating the synthetic cohort at clinical resolution: memory and time per subject against voxels.

For each ``scale`` (1 = the built-in 3x3x4 mm cohort; 0.33 = clinical CT at 0.99x0.99x1.32 mm; 0.25 =
CT about 530x360x900) one subject (its PET/CT and PET/MRI sessions, six volumes) is generated in a
fresh process. Printed per scale: the voxels of the subject's volumes, the voxels sampled (the label
grids and the PET's 2x finer simulation grid), seconds, the process' peak RSS (``VmHWM``), and the
peak's ratio to the largest volume held as float32: a constant ratio across scales means memory that
grows linearly with voxels. Then a least-squares line of the peak against the voxels sampled.

The anatomy is sampled a slab of the body at a time (``synthetic.sampling.SLAB_VOXELS``) and the
images are made in place, so the peak is a few bytes a voxel of the largest volume; before that a
0.25 subject took 17 GB.

Examples:
    python benchmarks/cohort_bench.py                     # scales 1 0.5 0.33 0.25
    python benchmarks/cohort_bench.py --scales 1 0.33
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proc_status import status_kib  # noqa: E402  (beside this script)


def worker(scale: float, out: Path) -> None:
    """Generate subject 0 at ``scale`` into ``out``; print one JSON line."""
    import nibabel as nib

    from umd_lightning.data.synthetic import CohortConfig, generate_subject

    base = status_kib("VmRSS") * 1024
    start = time.perf_counter()
    rows = generate_subject(out, CohortConfig(n_subjects=1, scale=scale), 0)
    seconds = time.perf_counter() - start
    shapes = {row["view"]: nib.load(str(out / row["image"])).shape for row in rows}
    shapes.update({f"label_{row['session']}": nib.load(str(out / row["label"])).shape for row in rows})
    voxels = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    # sampled: both label grids and each PET's simulation grid (8 fine voxels per PET voxel)
    sampled = voxels["label_petct"] + voxels["label_petmri"] + 8 * (voxels["PET_CT"] + voxels["PET_MRI"])
    print("RESULT " + json.dumps({
        "scale": scale, "seconds": seconds, "peak": status_kib("VmHWM") * 1024, "base": base,
        "voxels": sum(v for k, v in voxels.items() if not k.startswith("label_")), "sampled": sampled,
        "largest": max(voxels.values()), "ct_shape": list(shapes["CT"]),
    }), flush=True)


def run_one(scale: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="umd_cohort_bench_") as tmp:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(scale), "--out", tmp],
                              capture_output=True, text=True)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"scale {scale}: the generator failed with exit code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 0.5, 0.33, 0.25])
    p.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.out)
    gb = 1e9
    print("scale  CT grid          voxels   sampled   seconds  peak RSS  peak / largest volume as float32")
    results = []
    for scale in args.scales:
        r = run_one(scale)
        results.append(r)
        ratio = r["peak"] / (4 * r["largest"])
        print(f"{scale:5.2f}  {'x'.join(map(str, r['ct_shape'])):15s} {r['voxels'] / 1e6:6.1f} M {r['sampled'] / 1e6:7.1f} M"
              f" {r['seconds']:8.1f} s {r['peak'] / gb:6.2f} GB  {ratio:5.1f}", flush=True)
    if len(results) >= 2:
        x = np.array([r["sampled"] for r in results], dtype=float)
        y = np.array([r["peak"] for r in results], dtype=float)
        slope, icept = np.polyfit(x, y, 1)
        resid = y - (slope * x + icept)
        print(f"peak RSS = {icept / gb:.2f} GB + {slope:.2f} bytes x voxels sampled "
              f"(residuals {', '.join(f'{v / gb:+.2f}' for v in resid)} GB)")


if __name__ == "__main__":
    main()
