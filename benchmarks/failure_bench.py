"""Cost of the failure-mode columns (``metrics.failure.failure_columns``) against the case metrics they
sit beside (``case_metrics``), on the same label maps, in the same process; and both from one pass
(``case_metrics_and_failure``, what evaluation runs), against the metrics alone.

Cases: the whole-body phantom of ``metrics_bench.py`` (13 organs as deformed ellipsoids, one missed,
one false positive) with stray specks added to the prediction (so the farthest-component search runs
for most organs), at the main job's CT grid (133 x 90 x 225, 3 x 3 x 4 mm) and at a clinical grid
(400 x 270 x 680, 1 x 1 x 1.3 mm, 73 M voxels); the PET is a float32 SUV volume on the label grid.
Printed per grid: seconds of each call, the ratios failure/case_metrics and one pass/case_metrics, and peak RSS above the RSS
before the call (MiB) next to the size of one label map.

Examples:
    python benchmarks/failure_bench.py
    python benchmarks/failure_bench.py --specks 2000       # a noisier prediction
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_bench import make_case, measure  # noqa: E402  (beside this script; puts the repo on sys.path)

from umd_lightning.metrics.failure import case_metrics_and_failure, failure_columns  # noqa: E402
from umd_lightning.metrics.functional import case_metrics  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402

GRIDS = {
    "main job CT": ((133, 90, 225), (3.0, 3.0, 4.0)),
    "clinical": ((400, 270, 680), (1.0, 1.0, 1.32)),
}


def add_specks(pred: np.ndarray, n: int, seed: int = 1) -> None:
    """``n`` single-voxel specks of random organs anywhere in the volume (stray components)."""
    rng = np.random.default_rng(seed)
    idx = tuple(rng.integers(0, s, n) for s in pred.shape)
    pred[idx] = rng.integers(1, max(UMD13.labels) + 1, n).astype(pred.dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specks", type=int, default=200, help="stray single-voxel components in the prediction")
    args = parser.parse_args(argv)
    for name, (shape, spacing) in GRIDS.items():
        pred, ref = make_case(shape, spacing)
        add_specks(pred, args.specks)
        suv = np.ones(shape, dtype=np.float32)
        _, t_case, m_case = measure(lambda: case_metrics(pred, ref, spacing, UMD13.labels))
        cols, t_fail, m_fail = measure(lambda: failure_columns(pred, ref, spacing, UMD13.labels, suv=suv))
        _, t_both, _ = measure(lambda: case_metrics_and_failure(pred, ref, spacing, UMD13.labels, suv=suv))
        farthest = max(c["farthest_component_mm"] for c in cols.values() if np.isfinite(c["farthest_component_mm"]))
        mib = ref.nbytes / 2**20
        print(
            f"{name}: {shape} = {ref.size / 1e6:.1f} M voxels ({mib:.0f} MiB per uint8 label map); "
            f"case_metrics {t_case:.2f} s (peak +{m_case or float('nan'):.0f} MiB), "
            f"failure_columns {t_fail:.2f} s (peak +{m_fail or float('nan'):.0f} MiB); "
            f"ratio {t_fail / t_case:.2f}; case_metrics_and_failure {t_both:.2f} s (ratio {t_both / t_case:.2f}); components per organ up to "
            f"{max(int(c['n_components']) for c in cols.values())}, farthest {farthest:.0f} mm"
        )


if __name__ == "__main__":
    main()
