"""Convert data into what the manifest reads: ``python -m umd_lightning.convert SRC OUT``.

- SRC a DICOM file or folder (any number of series, searched recursively): every CT, MR and PET series becomes
  ``OUT/<patient>_S<series number>_<modality>.nii.gz`` in RAS world coordinates, PET in body-weight SUV;
  DICOM SEG becomes a label map on its source series' grid; ``OUT/series.csv`` lists every series.
- SRC a NIfTI label map in another vocabulary (e.g. a TotalSegmentator output) with ``--label-map total``:
  OUT is the label map on the organ set (same grid and affine).

Exit status: 0 when everything converted, 1 when a series failed but others converted (they are written), 2 on
bad arguments, an unreadable SRC or OUT, or when no series converted. Each failure is one line naming the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from umd_lightning.data.dicom import ConvertResult, DicomError, convert_dicom


def _is_nifti(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m umd_lightning.convert",
        description="DICOM series (CT, MR, PET as SUV, SEG) to NIfTI, or a label map onto the organ set.",
    )
    parser.add_argument("src", type=Path, help="a DICOM file or folder, or a NIfTI label map")
    parser.add_argument("out", type=Path, help="output folder (DICOM) or output file (NIfTI label map)")
    parser.add_argument("--no-suv", action="store_true", help="keep PET in Bq/ml instead of body-weight SUV")
    parser.add_argument(
        "--label-map",
        help="vocabulary of the labels: a label-map name (total, total_mr) or YAML path; for DICOM SEG also "
        "'names' (segment labels equal to organ names). Without it SEG keeps its segment numbers.",
    )
    parser.add_argument("--organ-set", default="umd13", help="target organ set (default umd13)")
    return parser


def print_results(results: Sequence[ConvertResult], console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=160)
    table = Table(title="DICOM conversion")
    for col in ("modality", "files", "status", "output", "shape", "spacing (mm)", "note"):
        table.add_column(col, overflow="fold")
    for r in results:
        style = {"ok": "green", "failed": "red", "skipped": "yellow"}[r.status]
        table.add_row(
            r.modality,
            str(r.n_files),
            f"[{style}]{r.status}[/{style}]",
            "" if r.output is None else str(r.output),
            "" if r.shape is None else "x".join(map(str, r.shape)),
            "" if r.spacing is None else "x".join(f"{s:g}" for s in r.spacing),
            escape(r.message) + (f" (factor {r.suv_factor:.6g})" if r.suv_factor is not None else ""),
        )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conversion; return the exit status."""
    from rich.console import Console
    from rich.markup import escape  # messages hold brackets ('umd_lightning[dicom]') that are not markup

    args = build_parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    if _is_nifti(args.src):
        if not args.label_map or args.label_map == "names":
            err.print(f"[red]error:[/red] {args.src} is a NIfTI file: give its vocabulary with --label-map NAME")
            return 2
        from umd_lightning.data.layouts import map_label_file
        from umd_lightning.data.manifest import ManifestError

        out = args.out if _looks_like_file(args.out) else args.out / args.src.name
        try:
            written = map_label_file(args.src, out, args.label_map, args.organ_set)
        except (ManifestError, FileNotFoundError, ValueError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}")
            return 2
        Console().print(f"{args.src} -> {written} ({args.label_map} -> {args.organ_set})")
        return 0
    try:
        results = convert_dicom(
            args.src, args.out, suv=not args.no_suv, label_map=args.label_map, organ_set=args.organ_set
        )
    except (DicomError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    print_results(results)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        err.print(f"[red]failed:[/red] {escape(r.message)}")
    if failed and not any(r.status == "ok" for r in results):
        return 2  # nothing usable came out of SRC
    return 1 if failed else 0


def _looks_like_file(path: Path) -> bool:
    return path.name.endswith(".nii") or path.name.endswith(".nii.gz")


if __name__ == "__main__":
    sys.exit(main())
