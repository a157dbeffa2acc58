"""Dice + HD95 + NSD for every organ of a whole-body case: ours against MONAI (and DeepMind's
surface-distance where it runs), in the same process.

The case of the issue: a 512 x 512 x 400 label map, spacing (0.98, 0.98, 2.0) mm, the 13 umd13
organs as deformed ellipsoids of realistic size; the prediction is the reference with every organ
shifted, rescaled and re-deformed, one organ missed (pancreas) and one false-positive organ
(urinary bladder, absent from the reference).

Each method runs once on the same uint8 label maps already in memory. Reported per method: wall
time, and peak RSS above the RSS before the call (``VmHWM`` reset through ``/proc/self/clear_refs``
just before), next to the label maps' own size. glibc keeps freed heap pages resident and hands
them out again, which hides the peak of a method whose arrays are mid-sized (ours: per-organ crops);
so ours is run a second time, for memory only, after fixing glibc's mmap threshold at 128 KiB (every
larger array then is mapped and unmapped on its own). MONAI's and DeepMind's whole-volume arrays
are far above any threshold, so their timed runs show their peaks. MONAI is called the way that needs least memory: per
organ on (1, 1, D, H, W) masks (a 14-channel one-hot would hold 14 float copies of the volume);
DeepMind's library per organ on boolean masks. Agreement: HD95, NSD and Dice against MONAI where both
masks are non-empty (MONAI gives NaN or inf elsewhere), and our area-weighted NSD against DeepMind's.

Examples:
    python benchmarks/metrics_bench.py                       # the whole-body case (minutes: MONAI is slow)
    python benchmarks/metrics_bench.py --size 128 128 100    # a quick smoke run
    python benchmarks/metrics_bench.py --skip-monai          # ours only
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proc_status import status_kib  # noqa: E402  (beside this script)

from umd_lightning.metrics.functional import case_metrics  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402

#: Organ id -> ellipsoids (centre, radii) as fractions of the field of view (x, y, z); z = 1 is the head.
ORGANS: dict[int, list[tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    1: [((0.50, 0.52, 0.90), (0.14, 0.17, 0.075))],  # brain
    2: [((0.54, 0.46, 0.59), (0.12, 0.10, 0.062))],  # heart
    3: [((0.34, 0.52, 0.60), (0.13, 0.16, 0.14)), ((0.67, 0.52, 0.60), (0.13, 0.16, 0.14))],  # lung
    4: [((0.36, 0.48, 0.46), (0.19, 0.16, 0.088))],  # liver
    5: [((0.70, 0.60, 0.475), (0.07, 0.10, 0.056))],  # spleen
    6: [((0.66, 0.64, 0.375), (0.06, 0.07, 0.069))],  # kidney_left
    7: [((0.35, 0.64, 0.375), (0.06, 0.07, 0.069))],  # kidney_right
    8: [((0.54, 0.54, 0.425), (0.14, 0.036, 0.019))],  # pancreas
    9: [((0.64, 0.44, 0.49), (0.11, 0.09, 0.062))],  # stomach
    10: [((0.51, 0.60, 0.65), (0.02, 0.02, 0.14))],  # esophagus
    11: [((0.52, 0.60, 0.50), (0.028, 0.028, 0.275))],  # aorta
    12: [((0.50, 0.46, 0.275), (0.28, 0.12, 0.05))],  # colon
    13: [((0.50, 0.44, 0.125), (0.08, 0.07, 0.044))],  # urinary_bladder
}
MISSED = 8  # pancreas: absent from the prediction
FALSE_POSITIVE = 13  # urinary bladder: absent from the reference


def _ellipsoid(vol: np.ndarray, label: int, centre, radii, spacing, phase: float, scale: float, shift) -> None:
    """Paint a smoothly deformed ellipsoid (mm geometry) into ``vol`` inside its bounding box only."""
    shape = np.asarray(vol.shape)
    sp = np.asarray(spacing)
    fov = shape * sp
    c = np.asarray(centre) * fov + np.asarray(shift)
    r = np.asarray(radii) * fov * scale
    lo = np.clip(((c - 1.2 * r) / sp).astype(int), 0, shape)
    hi = np.clip(((c + 1.2 * r) / sp).astype(int) + 1, 0, shape)
    ax = [(np.arange(lo[i], hi[i]) * sp[i] - c[i]) / r[i] for i in range(3)]
    x, y, z = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
    radius = 1 + 0.08 * np.sin(3 * x + phase) * np.cos(2 * y - phase) + 0.05 * np.sin(4 * z + 2 * phase)
    inside = x * x + y * y + z * z <= radius * radius
    vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = label


def make_case(shape, spacing, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) uint8 label maps of the whole-body phantom."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label, parts in ORGANS.items():
        for centre, radii in parts:
            if label != FALSE_POSITIVE:
                _ellipsoid(ref, label, centre, radii, spacing, 0.0, 1.0, (0, 0, 0))
            if label != MISSED:
                _ellipsoid(
                    pred, label, centre, radii, spacing, rng.uniform(0.2, 0.6), rng.uniform(0.95, 1.05), rng.uniform(-3, 3, 3)
                )
    return pred, ref


# --------------------------------------------------------------------------- measuring


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """Run ``fn``; return its result, seconds, and peak RSS above the RSS before the call (MiB),
    None where the kernel cannot reset the peak."""
    before = status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        resettable = status_kib("VmHWM") <= before + 1024
    except OSError:
        resettable = False
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = (status_kib("VmHWM") - before) / 1024 if resettable else None
    return out, seconds, peak


def run_ours(pred, ref, spacing, tol, nsd_definition="voxel_count") -> dict[int, dict]:
    rows = case_metrics(pred, ref, spacing, UMD13.labels, nsd_tolerance=tol, nsd_definition=nsd_definition)
    return {r["label_id"]: r for r in rows}


def run_monai(pred, ref, spacing, tol) -> dict[int, dict]:
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    p, r = torch.from_numpy(pred), torch.from_numpy(ref)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty mask
        for label in UMD13.labels:
            yp = (p == label)[None, None].float()
            y = (r == label)[None, None].float()
            hd = compute_hausdorff_distance(yp, y, include_background=True, percentile=95, spacing=spacing)
            nsd = compute_surface_dice(yp, y, [tol], include_background=True, spacing=spacing)
            dice = compute_dice(yp, y, include_background=True, ignore_empty=False)
            out[label] = {"hd95": float(hd), "nsd": float(nsd), "dice": float(dice)}
            del yp, y
    return out


def run_deepmind(pred, ref, spacing, tol) -> tuple[dict[int, dict], list[str]]:
    import surface_distance as sd

    out, errors = {}, []
    for label in UMD13.labels:
        try:
            dist = sd.compute_surface_distances(ref == label, pred == label, spacing)
            out[label] = {
                "hd95": float(sd.compute_robust_hausdorff(dist, 95)),
                "nsd": float(sd.compute_surface_dice_at_tolerance(dist, tol)),
                "dice": float(sd.compute_dice_coefficient(ref == label, pred == label)),
            }
        except Exception as exc:  # noqa: BLE001 - report how the library fails (np.Inf under numpy 2)
            out[label] = {"hd95": math.nan, "nsd": math.nan, "dice": math.nan}
            errors.append(f"{UMD13.labels[label]}: {type(exc).__name__}: {exc}")
    return out, errors


def _fix_mmap_threshold() -> bool:
    """Make glibc mmap every allocation above 128 KiB from now on (M_MMAP_THRESHOLD = -3)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024))
    except OSError:
        return False


def _fmt_mem(mib: float | None) -> str:
    return "n/a" if mib is None else f"{mib:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, default=(512, 512, 400), help="label map shape")
    p.add_argument("--spacing", type=float, nargs=3, default=(0.98, 0.98, 2.0), help="voxel size in mm")
    p.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    p.add_argument("--skip-monai", action="store_true")
    p.add_argument("--skip-deepmind", action="store_true")
    args = p.parse_args(argv)
    shape, spacing, tol = tuple(args.size), tuple(args.spacing), args.tolerance

    pred, ref = make_case(shape, spacing)
    maps_mib = (pred.nbytes + ref.nbytes) / 2**20
    print(f"case: {shape} voxels, spacing {spacing} mm, 13 organs ({UMD13.labels[MISSED]} missed, "
          f"{UMD13.labels[FALSE_POSITIVE]} false positive); label maps {maps_mib:.0f} MiB in memory (uint8)")

    ours, t_ours, _ = measure(lambda: run_ours(pred, ref, spacing, tol))
    print(f"ours     : {t_ours:8.2f} s")
    ours_sa, t_sa, _ = measure(lambda: run_ours(pred, ref, spacing, tol, "surfel_area"))
    print(f"ours (area-weighted NSD): {t_sa:8.2f} s")

    print("\norgan            status          dice    hd95_mm   nsd")
    for label, r in ours.items():
        print(f"{r['organ']:16s} {r['status']:14s} {r['dice']:6.4f} {r['hd95']:9.3f} {r['nsd']:6.4f}")
    both = [label for label, r in ours.items() if r["status"] == "ok"]

    m_monai = None
    if not args.skip_monai:
        try:
            import monai.metrics  # noqa: F401  (imported before the clock starts)

            monai, t_monai, m_monai = measure(lambda: run_monai(pred, ref, spacing, tol))
        except ImportError as exc:
            print(f"\nMONAI not available ({exc}); skipped")
        else:
            print(f"\nMONAI    : {t_monai:8.2f} s  peak +{_fmt_mem(m_monai)}")
            print(f"speedup vs MONAI: {t_monai / t_ours:.1f}x")
            d_hd = max(abs(ours[k]["hd95"] - monai[k]["hd95"]) for k in both)
            d_nsd = max(abs(ours[k]["nsd"] - monai[k]["nsd"]) for k in both)
            d_dice = max(abs(ours[k]["dice"] - monai[k]["dice"]) for k in both)
            agree = d_hd < 1e-3 and d_nsd < 1e-5 and d_dice < 1e-5
            print(
                f"agreement with MONAI on {len(both)} organs present in both: max |diff| HD95 {d_hd:.2e} mm, "
                f"NSD {d_nsd:.2e}, Dice {d_dice:.2e} -> {'AGREE' if agree else 'DISAGREE'}"
            )
            for k in ours:
                if k not in both:
                    print(f"  {ours[k]['organ']} ({ours[k]['status']}): ours HD95 {ours[k]['hd95']:.1f} mm (policy 'worst'), "
                          f"MONAI HD95 {monai[k]['hd95']}, Dice {monai[k]['dice']}")

    if not args.skip_deepmind:
        try:
            import surface_distance  # noqa: F401
        except ImportError:
            print("\nDeepMind surface-distance not installed (pip install surface-distance); skipped")
        else:
            (dm, errors), t_dm, m_dm = measure(lambda: run_deepmind(pred, ref, spacing, tol))
            print(f"\nDeepMind : {t_dm:8.2f} s  peak +{_fmt_mem(m_dm)}  speedup vs DeepMind: {t_dm / t_ours:.1f}x")
            for e in errors:
                print(f"  DeepMind failed on {e}")
            d_nsd = max(abs(ours_sa[k]["nsd"] - dm[k]["nsd"]) for k in both)
            print(
                f"agreement with DeepMind (area-weighted NSD, nsd_definition='surfel_area') on {len(both)} organs: "
                f"max |diff| {d_nsd:.2e} -> {'AGREE' if d_nsd < 1e-9 else 'DISAGREE'} "
                "(its HD95 weights surfels by area, a different definition)"
            )
    m_ours = m_sa = None
    if _fix_mmap_threshold():
        _, _, m_ours = measure(lambda: run_ours(pred, ref, spacing, tol))
        _, _, m_sa = measure(lambda: run_ours(pred, ref, spacing, tol, "surfel_area"))
    ratio = "" if m_ours is None else f" = {m_ours / maps_mib:.2f}x the label maps' {maps_mib:.0f} MiB"
    print(f"\nours peak memory above the loaded label maps: +{_fmt_mem(m_ours)}{ratio}; area-weighted NSD +{_fmt_mem(m_sa)}")
    if m_monai is not None and m_ours is not None:
        less = f"{m_monai / m_ours:.0f}x less" if m_ours >= 1 else "ours under 1 MiB"
        print(f"peak memory vs MONAI: {m_ours:.0f} MiB vs {m_monai:.0f} MiB ({less})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
