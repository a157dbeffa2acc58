"""The clinical-resolution kernels against what they replace, on the same data, in one process.

1. Far surface points: ``case_metrics`` as evaluation runs it (windowed search, then the k-d tree or
   the distance-transform sweep, whichever the estimate says is cheaper) against the k-d tree alone,
   on a zero-shot-like case: the whole-body phantom of ``metrics_bench.py`` at a clinical grid (400 x 270
   x 680, 1 x 1 x 1.32 mm) with one organ's prediction scattered over the body as blobs, most of them
   100-300 mm from that organ. Every metric of every organ must agree to 1e-9.
2. Components: ``label26`` (runs and union-find) against ``scipy.ndimage.label`` with a 3x3x3
   structure, on that scattered mask; the label arrays must be equal.
3. Gzipped NIfTI: ``niigz.read_voxels`` against nibabel's reader on a CT-sized int16 volume, and
   ``niigz.save_nifti_atomic`` against ``nibabel.save`` for a C-ordered uint8 label map (what evaluation
   writes); the voxels read back must be equal.

Printed: seconds of each, the ratio reference / ours, and the check. Timings on a shared machine vary;
the ratios are measured side by side.

Examples:
    python benchmarks/kernels_bench.py
    python benchmarks/kernels_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_bench import make_case  # noqa: E402  (beside this script; puts the repo on sys.path)

from umd_lightning.data.niigz import read_voxels, save_nifti_atomic  # noqa: E402
from umd_lightning.metrics import functional as F  # noqa: E402
from umd_lightning.metrics._components import label26  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402

SHAPE, SPACING = (400, 270, 680), (1.0, 1.0, 1.32)
SCATTERED = 3  # the organ whose prediction is scattered (a zero-shot PET "lung" covers much of the body)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def scatter(pred: np.ndarray, label: int, seed: int = 2) -> None:
    """Replace ``label``'s prediction by blobs over the body: thresholded smooth noise (6% of the box)."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal(tuple(n // 4 for n in pred.shape)), 1.5)
    blobs = ndimage.zoom(coarse > np.quantile(coarse, 0.94), 4, order=0)
    pred[pred == label] = 0
    region = tuple(slice(0, min(a, b)) for a, b in zip(pred.shape, blobs.shape))
    pred[region][blobs[region] & (pred[region] == 0)] = label


def far_points(pred, ref, threads: int) -> None:
    F.warm_kernels().join()  # numba's load, once per process, is not the kernels' cost
    saved = F._SWEEP_VOXEL_S
    F._SWEEP_VOXEL_S = float("inf")  # the estimate never picks the sweep: the k-d tree alone
    kd, t_kd = _timed(lambda: F.case_metrics(pred, ref, SPACING, UMD13.labels, workers=threads))
    F._SWEEP_VOXEL_S = saved
    ours, t_ours = _timed(lambda: F.case_metrics(pred, ref, SPACING, UMD13.labels, workers=threads))
    worst = max(
        abs(a[k] - b[k]) for a, b in zip(kd, ours) for k in F.METRIC_KEYS if not (np.isnan(a[k]) and np.isnan(b[k]))
    )
    print(f"far points ({threads} thread(s)): k-d tree alone {t_kd:.2f} s, with the sweep {t_ours:.2f} s: "
          f"{t_kd / t_ours:.1f}x; largest metric difference {worst:.1e}")
    assert worst <= 1e-9


def components(mask) -> None:
    (ours, n), t_ours = _timed(lambda: label26(mask))
    (ref, n_ref), t_ref = _timed(lambda: ndimage.label(mask, structure=np.ones((3, 3, 3), bool)))
    same = n == n_ref and np.array_equal(ours, ref)
    print(f"components of {int(mask.sum())} voxels: scipy.ndimage.label {t_ref:.2f} s, by runs {t_ours:.2f} s: "
          f"{t_ref / t_ours:.1f}x; {n} components, labels equal: {same}")
    assert same


def nifti_gzip(labels) -> None:
    rng = np.random.default_rng(0)
    ct = np.asfortranarray(rng.normal(0, 300, SHAPE).astype(np.int16) // 16 * 16)  # compresses like a CT
    with tempfile.TemporaryDirectory() as tmp:
        ct_path = Path(tmp) / "ct.nii.gz"
        nib.save(nib.Nifti1Image(ct, np.diag([*SPACING, 1.0])), ct_path)
        img = nib.load(ct_path)
        fast, t_fast = _timed(lambda: read_voxels(img))
        slow, t_slow = _timed(lambda: np.asanyarray(nib.load(ct_path).dataobj))
        assert np.array_equal(fast, slow)
        print(f"read a {ct.nbytes / 2**20:.0f} MiB int16 .nii.gz: nibabel {t_slow:.2f} s, in one call {t_fast:.2f} s: "
              f"{t_slow / t_fast:.1f}x; voxels equal")
        out = nib.Nifti1Image(np.ascontiguousarray(labels), np.diag([*SPACING, 1.0]))
        _, t_nib = _timed(lambda: nib.save(out, Path(tmp) / "nib.nii.gz"))
        _, t_ours = _timed(lambda: save_nifti_atomic(out, Path(tmp) / "ours.nii.gz"))
        back = np.asanyarray(nib.load(Path(tmp) / "ours.nii.gz").dataobj)
        assert np.array_equal(back, labels)
        print(f"write a {labels.nbytes / 2**20:.0f} MiB uint8 label map: nibabel {t_nib:.2f} s, "
              f"in one call {t_ours:.2f} s: {t_nib / t_ours:.1f}x; read back equal")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="scoring threads (evaluation passes the network's)")
    args = parser.parse_args(argv)
    pred, ref = make_case(SHAPE, SPACING)
    scatter(pred, SCATTERED)
    far_points(pred, ref, args.threads)
    components(pred == SCATTERED)
    nifti_gzip(pred)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
