"""Evaluate a folder of NIfTI predictions against a folder of references.

    python -m umd_lightning.evaluate PRED_DIR REF_DIR --out results.csv [options]

Files are matched by name (``case_001.nii.gz`` in both folders). Every case gives one row per organ
of the organ set (Dice, HD95, NSD, ASSD, volumes, status) in the same results table as a test run:
``<out>.csv``, ``<out>.parquet`` and ``<out>.meta.json`` (with the metric conventions). A case that
cannot be evaluated (no partner file, different grids, unreadable file, label ids outside the organ
set) is reported with the file and the problem, written as ``failed`` rows, and the other cases are
still evaluated; the exit status is then 1.

Like nnU-Net's ``evaluate_folder``, with HD95 and NSD, and with label maps to compare vocabularies:
``--ref-label-map total`` maps TotalSegmentator ids of the references onto the organ set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from umd_lightning.metrics.failure import case_metrics_and_failure
from umd_lightning.metrics.functional import (
    HD_DEFINITIONS,
    METRIC_KEYS,
    NSD_DEFINITIONS,
    failed_rows,
    metrics_metadata,
)
from umd_lightning.organs import OrganSet, get_organ_set, load_label_map
from umd_lightning.results import EMPTY_POLICIES, ensure_writable, table_from_rows, write_results

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class CaseError(ValueError):
    """A case that cannot be evaluated; the message names the file and the problem."""


@dataclass(frozen=True)
class Job:
    """One case to evaluate (plain data, so it pickles to worker processes)."""

    case_id: str
    pred: Path | None
    ref: Path | None
    labels: dict[int, str]
    pred_label_map: str | None
    ref_label_map: str | None
    options: dict[str, Any]
    affine_tolerance: float
    problem: str | None = None


def case_name(path: Path) -> str | None:
    """The case id of a NIfTI file name (``case_001.nii.gz`` -> ``case_001``), None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def match_folders(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path | None, Path | None, str | None]]:
    """Pair predictions and references by case name.

    Returns:
        ``(case_id, pred, ref, problem)`` sorted by case id: a side is None when its file is missing,
        and ``problem`` then names the file and the expected partner.

    Raises:
        FileNotFoundError: a folder is missing.
    """
    for name, folder in (("prediction", pred_dir), ("reference", ref_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder {folder} does not exist")
    preds = {case_name(p): p for p in sorted(pred_dir.iterdir()) if p.is_file() and case_name(p)}
    refs = {case_name(p): p for p in sorted(ref_dir.iterdir()) if p.is_file() and case_name(p)}
    pairs = []
    for case_id in sorted(set(preds) | set(refs)):
        p, r = preds.get(case_id), refs.get(case_id)
        problem = None
        if p is None:
            problem = f"{r}: reference has no prediction (expected {pred_dir / r.name})"
        elif r is None:
            problem = f"{p}: prediction has no reference (expected {ref_dir / p.name})"
        pairs.append((case_id, p, r, problem))
    return pairs


def _load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer label array (D, H, W) and affine of a NIfTI file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - any reader error becomes a case error naming the file
        raise CaseError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3D label map, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.array_equal(data, np.round(data)):
            raise CaseError(f"{path}: label map holds non-integer values (is this an image, not labels?)")
        data = data.astype(np.int32)
    if data.size and np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
        raise CaseError(f"{path}: label map holds negative ids")
    return data, np.asarray(img.affine, dtype=np.float64)


def _map_labels(data: np.ndarray, path: Path, label_map: str | None, organ_set: OrganSet) -> np.ndarray:
    """Apply a label map, or check that the ids fit the organ set."""
    top = int(data.max()) if data.size else 0
    if label_map is None:
        if top > max(organ_set.labels):
            raise CaseError(
                f"{path}: label id {top} is outside organ set {organ_set.name!r} (ids 1..{max(organ_set.labels)}); "
                "pass --label-map/--pred-label-map/--ref-label-map to map another vocabulary"
            )
        return data
    lut = load_label_map(label_map).lookup_table(organ_set)
    if top >= len(lut):
        lut = np.concatenate([lut, np.zeros(top + 1 - len(lut), dtype=lut.dtype)])
    # Indexing with the stored integer type avoids an int64 copy of the whole volume.
    return np.take(lut.astype(organ_set.label_dtype), data)


def evaluate_case(job: Job) -> tuple[str, list[dict[str, Any]], str | None]:
    """Rows of one case, or failed rows and the error message."""
    organ_set = get_organ_set(job.labels)
    base = {
        "case_id": job.case_id,
        "pred_file": str(job.pred) if job.pred else "",
        "ref_file": str(job.ref) if job.ref else "",
    }
    try:
        if job.problem is not None or job.pred is None or job.ref is None:
            raise CaseError(job.problem or f"{job.pred or job.ref}: no partner file")
        ref, ref_affine = _load_labels(job.ref)
        pred, pred_affine = _load_labels(job.pred)
        if pred.shape != ref.shape:
            raise CaseError(f"{job.pred}: grid {pred.shape} differs from reference {job.ref} grid {ref.shape}")
        diff = float(np.abs(pred_affine - ref_affine).max())
        if diff > job.affine_tolerance:
            raise CaseError(
                f"{job.pred}: affine differs from reference {job.ref} by up to {diff:.4g} mm "
                f"(tolerance {job.affine_tolerance} mm); resample the prediction onto the reference grid"
            )
        pred = _map_labels(pred, job.pred, job.pred_label_map, organ_set)
        ref = _map_labels(ref, job.ref, job.ref_label_map, organ_set)
        spacing = np.sqrt((ref_affine[:3, :3] ** 2).sum(axis=0))
        predicted = None
        if job.pred_label_map is not None:
            predicted = load_label_map(job.pred_label_map).organs_covered(organ_set)
        # no PET here: SUV columns NaN
        rows = case_metrics_and_failure(pred, ref, spacing, job.labels, organs_predicted=predicted, **job.options)
        return job.case_id, [{**base, **row} for row in rows], None
    except CaseError as exc:
        return job.case_id, [{**base, **row} for row in failed_rows(job.labels, str(exc))], str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken case must not cost the others
        msg = f"{job.pred or job.ref}: {type(exc).__name__}: {exc}"
        return job.case_id, [{**base, **row} for row in failed_rows(job.labels, msg)], msg


def parse_tolerance(text: str, organs: Sequence[str]) -> float | dict[str, float]:
    """``"2"`` -> 2.0; ``"2,liver=3,aorta=1.5"`` -> per organ (the bare number is the default).

    Raises:
        ValueError: unknown organ or a missing default.
    """
    default: float | None = None
    per: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            organ, value = (s.strip() for s in part.split("=", 1))
            if organ not in organs:
                raise ValueError(f"--tolerance names unknown organ {organ!r}; organs: {', '.join(organs)}")
            per[organ] = float(value)
        else:
            default = float(part)
    if not per:
        if default is None:
            raise ValueError("--tolerance needs a number of mm")
        return default
    missing = [o for o in organs if o not in per]
    if missing and default is None:
        raise ValueError(f"--tolerance has no value for {', '.join(missing)}; add a bare default, e.g. '2,{text}'")
    return {o: per.get(o, default) for o in organs}  # type: ignore[misc]


def _out_paths(out: Path) -> tuple[Path, str]:
    if out.suffix in (".csv", ".parquet"):
        return out.parent, out.stem
    if out.name.endswith(".meta.json"):
        return out.parent, out.name[: -len(".meta.json")]
    return out, "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m umd_lightning.evaluate",
        description="Evaluate NIfTI predictions against references (matched by file name): Dice, HD95, NSD, ASSD per organ.",
    )
    p.add_argument("pred_dir", type=Path, help="folder of predicted label maps (*.nii.gz / *.nii)")
    p.add_argument("ref_dir", type=Path, help="folder of reference label maps, same file names")
    p.add_argument("--out", type=Path, required=True, help="results file (x.csv -> x.csv, x.parquet, x.meta.json) or folder")
    p.add_argument("--organ-set", default="umd13", help="organ set (default umd13)")
    p.add_argument("--label-map", default=None, help="label map applied to predictions and references (e.g. total)")
    p.add_argument("--pred-label-map", default=None, help="label map for the predictions only (overrides --label-map)")
    p.add_argument("--ref-label-map", default=None, help="label map for the references only (overrides --label-map)")
    p.add_argument("--tolerance", default="2.0", help="NSD tolerance in mm: '2' or '2,liver=3,aorta=1.5' (default 2)")
    p.add_argument("--empty-policy", choices=EMPTY_POLICIES, default="worst", help="empty-mask policy (default worst)")
    p.add_argument("--hd-percentile", type=float, default=95.0, help="Hausdorff percentile (default 95)")
    p.add_argument("--hd-definition", choices=HD_DEFINITIONS, default="max_directed", help="HD definition (default max_directed, MONAI's)")
    p.add_argument("--nsd-definition", choices=NSD_DEFINITIONS, default="voxel_count", help="NSD definition (default voxel_count, MONAI's)")
    p.add_argument("--affine-tolerance", type=float, default=1e-3, help="largest affine difference in mm accepted as the same grid")
    p.add_argument("--view", default=None, help="view of every case (CT, PET_CT, MRI, PET_MRI), written as a column")
    p.add_argument("--workers", type=int, default=1, help="cases evaluated in parallel processes (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; return the exit status (0 all cases evaluated, 1 some failed, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    try:
        organ_set = get_organ_set(args.organ_set)
        tolerance = parse_tolerance(args.tolerance, organ_set.organs)
        pred_map = args.pred_label_map or args.label_map
        ref_map = args.ref_label_map or args.label_map
        for name in (pred_map, ref_map):
            if name is not None:
                load_label_map(name)
        if args.view is not None:
            from umd_lightning.organs import check_view

            check_view(args.view)
        pairs = match_folders(args.pred_dir, args.ref_dir)
        options = dict(
            nsd_tolerance=tolerance,
            hd_percentile=args.hd_percentile,
            empty_policy=args.empty_policy,
            hd_definition=args.hd_definition,
            nsd_definition=args.nsd_definition,
        )
        meta = metrics_metadata(
            **options,
            organ_set=organ_set.name,
            organs=list(organ_set.organs),
            pred_dir=str(args.pred_dir),
            ref_dir=str(args.ref_dir),
            pred_label_map=pred_map,
            ref_label_map=ref_map,
            evaluation_grid="the reference's grid; predictions must share it (affine within "
            f"{args.affine_tolerance} mm)",
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not pairs:
        print(f"error: no NIfTI files in {args.pred_dir} or {args.ref_dir}", file=sys.stderr)
        return 2
    out_dir, stem = _out_paths(args.out)
    try:  # before any case is scored: an unwritable --out must not cost the scoring
        ensure_writable(out_dir)
    except OSError as exc:
        print(f"error: --out {args.out}: cannot write the results table into {out_dir} "
              f"({exc.strerror or exc}); pass --out in a writable folder", file=sys.stderr)
        return 2

    jobs = [
        Job(case_id, p, r, dict(organ_set.labels), pred_map, ref_map, options, args.affine_tolerance, problem)
        for case_id, p, r, problem in pairs
    ]
    t0 = time.perf_counter()
    if args.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(evaluate_case, jobs))
    else:
        results = [evaluate_case(job) for job in jobs]

    rows, failed = [], []
    for case_id, case_rows, error in results:
        if args.view is not None:
            case_rows = [{"view": args.view, **r} for r in case_rows]
        rows.extend(case_rows)
        if error is not None:
            failed.append({"case_id": case_id, "error": error})
            print(f"failed: {error}", file=sys.stderr)
    table = table_from_rows(rows)
    meta.update(n_cases=len(jobs), n_failed=len(failed), failed_cases=failed)
    paths = write_results(table, meta, out_dir, stem=stem)

    ok = table[table["status"] != "failed"]
    if len(ok):
        means = ok.groupby("organ", sort=False)[list(METRIC_KEYS)].mean()
        counts = ok.groupby("organ", sort=False)["status"].value_counts().unstack(fill_value=0)
        print(means.join(counts).round(4).to_string())
    print(
        f"{len(jobs) - len(failed)}/{len(jobs)} cases evaluated in {time.perf_counter() - t0:.1f} s; "
        f"table: {json.dumps({k: str(v) for k, v in paths.items()})}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
