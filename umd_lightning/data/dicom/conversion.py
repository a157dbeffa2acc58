"""Converting every series under a path to NIfTI files, with ``series.csv`` reporting each outcome."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import nibabel as nib
import numpy as np

from umd_lightning.data.dicom.discovery import RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, DicomSeries, _read_header, find_series
from umd_lightning.data.dicom.errors import DicomError, _number
from umd_lightning.data.dicom.seg import read_seg, segment_lookup
from umd_lightning.data.dicom.suv import suv_factors
from umd_lightning.data.dicom.volume import Volume, read_enhanced, read_series
from umd_lightning.data.niigz import save_nifti_atomic
from umd_lightning.organs import LabelMap, OrganSet, get_organ_set, load_label_map
from umd_lightning.results import ensure_writable

#: Modalities converted as image series; SEG becomes a label map; others are skipped.
IMAGE_MODALITIES = ("CT", "MR", "PT")

Status = Literal["ok", "failed", "skipped"]


@dataclass
class ConvertResult:
    """One row of the conversion report."""

    series_uid: str
    modality: str
    description: str
    n_files: int
    source: str
    output: Path | None = None
    status: Status = "ok"
    message: str = ""
    suv_factor: float | None = None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None


def _image_dtype(vol: Volume, modality: str):
    if modality == "PT":
        return np.float32
    a = vol.array
    if np.all(np.isfinite(a)) and np.array_equal(a, np.round(a)) and a.min() >= -32768 and a.max() <= 32767:
        return np.int16
    return np.float32


def convert_image_series(
    series: DicomSeries, out_path: str | Path, *, suv: bool = True
) -> tuple[Volume, ConvertResult]:
    """Convert one CT, MR or PET series to NIfTI (PET as SUVbw unless ``suv=False``: then Bq/ml as stored).

    Raises:
        DicomError: see :func:`read_series` and :func:`suv_factors`.
    """
    out_path = Path(out_path)
    header = _read_header(series.files[0]) if len(series.files) == 1 else None
    if header is not None and _number(header, "NumberOfFrames", series.files[0], 1, kind=int) > 1:
        if series.modality == "PT":
            raise DicomError(f"{series.files[0]}: multi-frame (enhanced) PET is not supported; export single frames")
        vol = read_enhanced(series.files[0])
    else:
        vol = read_series(series)
    factor = None
    if series.modality == "PT" and suv:
        factors = suv_factors(vol.datasets, vol.files[0])
        factor = factors.factor
        vol.array = vol.array * factor
    save_nifti_atomic(vol.to_nifti(_image_dtype(vol, series.modality)), out_path)
    result = ConvertResult(
        series.series_uid,
        series.modality,
        series.description,
        len(series.files),
        str(series.files[0].parent),
        out_path,
        "ok",
        "SUVbw" if factor is not None else ("Bq/ml (no SUV)" if series.modality == "PT" else ""),
        factor,
        tuple(vol.array.shape),
        tuple(round(s, 4) for s in vol.spacing),
    )
    return vol, result


def convert_dicom(
    src: str | Path,
    out: str | Path,
    *,
    suv: bool = True,
    label_map: str | LabelMap | None = None,
    organ_set: str | OrganSet = "umd13",
) -> list[ConvertResult]:
    """Convert every series under ``src`` (a file or a folder) to NIfTI files in the folder ``out``.

    Image series become ``<patient>_S<number>_<modality>.nii.gz``; a DICOM SEG becomes a label map on the grid
    of its source series when that series is among the converted ones (else on the SEG's own grid), with a
    ``.segments.json`` beside it naming the segments. ``out/series.csv`` lists every series and its outcome.
    A failing series is reported and the others still convert.

    Args:
        src: a DICOM file or a folder searched recursively.
        out: output folder.
        suv: convert PET to body-weight SUV (default) or keep Bq/ml.
        label_map: for SEG only: None keeps segment numbers, ``"names"`` matches segment labels to organ names,
            or a label-map name/path (see :func:`umd_lightning.organs.load_label_map`).
        organ_set: organ set the label map targets.

    Returns:
        One :class:`ConvertResult` per series.
    """
    out = Path(out)
    organs = get_organ_set(organ_set)
    lmap: LabelMap | Literal["names"] | None
    lmap = label_map if label_map in (None, "names") or isinstance(label_map, LabelMap) else load_label_map(label_map)
    all_series = find_series(src)
    try:  # before any series is converted
        ensure_writable(out)
    except FileExistsError:
        raise DicomError(f"{out}: the output folder is a file; choose another output folder") from None
    except OSError as exc:
        raise DicomError(f"{out}: cannot write the converted files there ({exc.strerror}); choose another output folder") from None
    results: list[ConvertResult] = []
    volumes: dict[str, Volume] = {}
    used: set[str] = set()

    def unique(name: str, uid: str) -> str:
        if name in used:
            name = f"{name}_{uid.rsplit('.', 1)[-1]}"
        used.add(name)
        return name

    # Images first, so that SEGs can be placed on their source grids.
    for series in sorted(all_series, key=lambda s: s.modality in ("SEG", "RTSTRUCT")):
        row = ConvertResult(
            series.series_uid, series.modality, series.description, len(series.files), str(series.files[0].parent)
        )
        try:
            if series.modality in IMAGE_MODALITIES:
                vol, row = convert_image_series(series, out / f"{unique(series.name, series.series_uid)}.nii.gz", suv=suv)
                volumes[series.series_uid] = vol
            elif series.modality == "SEG" or series.sop_class_uid == SEG_SOP_CLASS:
                row = _convert_seg(series, out, volumes, all_series, lmap, organs, unique)
            elif series.modality == "RTSTRUCT" or series.sop_class_uid == RTSTRUCT_SOP_CLASS:
                raise DicomError(
                    f"{series.files[0]}: RTSTRUCT (contours) is not supported; rasterise it with a dedicated tool "
                    "(e.g. rt-utils or plastimatch) to NIfTI, then map it with --label-map"
                )
            else:
                row.status, row.message = "skipped", f"modality {series.modality or '?'} is not converted"
        except DicomError as exc:
            row.status, row.message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - one series pydicom cannot handle must not stop the others
            row.status, row.message = "failed", f"{series.files[0]}: cannot convert ({type(exc).__name__}: {exc})"
        results.append(row)
    _write_index(out, results)
    return results


def _convert_seg(series, out, volumes, all_series, lmap, organs, unique) -> ConvertResult:
    import pydicom

    path = series.files[0]
    ref_uid = None
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    for item in ds.get("ReferencedSeriesSequence", []):
        if str(item.get("SeriesInstanceUID", "")) in volumes:
            ref_uid = str(item.SeriesInstanceUID)
    reference = volumes.get(ref_uid) if ref_uid else None
    labels, affine, segments = read_seg(path, reference)
    lut = segment_lookup(segments, lmap, organs)
    if lut is not None:
        labels = lut[np.clip(labels.astype(np.int64), 0, lut.size - 1)]
    dtype = np.uint8 if int(labels.max(initial=0)) < 256 else np.uint16
    name = series.name
    if ref_uid:
        ref = next(s for s in all_series if s.series_uid == ref_uid)
        name = f"{ref.name}_seg"
    name = unique(name, series.series_uid)
    img = nib.Nifti1Image(labels.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    target = Path(out) / f"{name}.nii.gz"
    save_nifti_atomic(img, target)
    (Path(out) / f"{name}.segments.json").write_text(
        json.dumps(
            {
                "segments": {str(k): v for k, v in sorted(segments.items())},
                "label_values": "organ ids of " + organs.name if lut is not None else "segment numbers",
                "organ_ids": None
                if lut is None
                else {str(k): int(lut[k]) for k in sorted(segments) if k < lut.size},
            },
            indent=2,
        )
    )
    return ConvertResult(
        series.series_uid,
        series.modality,
        series.description,
        len(series.files),
        str(path.parent),
        target,
        "ok",
        f"{len(segments)} segment(s)" + (f" on the grid of series {ref_uid}" if ref_uid else " on the SEG's own grid"),
        None,
        tuple(labels.shape),
        tuple(round(float(s), 4) for s in np.linalg.norm(affine[:3, :3], axis=0)),
    )


def _write_index(out: Path, results: Sequence[ConvertResult]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "series.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["series_uid", "modality", "description", "n_files", "source", "output", "status",
                         "message", "suv_factor", "shape", "spacing"])
        for r in results:
            writer.writerow([r.series_uid, r.modality, r.description, r.n_files, r.source,
                             "" if r.output is None else str(r.output), r.status, r.message,
                             "" if r.suv_factor is None else repr(r.suv_factor),
                             "" if r.shape is None else "x".join(map(str, r.shape)),
                             "" if r.spacing is None else "x".join(map(str, r.spacing))])
    return path
