"""DICOM series (CT, MR, PET) and DICOM SEG to NIfTI, in RAS world coordinates, PET in body-weight SUV.

Geometry comes from the tags, never from file order: slices are sorted along the slice normal
(``ImageOrientationPatient`` row x column cosines) by their ``ImagePositionPatient``; in-plane spacing is
``PixelSpacing`` and the slice step is the measured distance between neighbouring positions (so a gantry tilt
stays in the affine). DICOM patient coordinates are LPS; the NIfTI affine is RAS (x and y negated). Voxel
``(i, j, k)`` of the written volume is column ``i``, row ``j`` of the ``k``-th slice along the normal.

PET is written as body-weight SUV (unit g/ml, tissue density taken as 1 g/ml)::

    SUVbw = activity concentration (Bq/ml) * patient weight (g) / decay-corrected injected dose (Bq)

following the QIBA vendor-neutral pseudo-code: ``Units`` BQML with ``DecayCorrection`` START (dose decayed
from injection to the series start) or ADMIN (images already corrected to the injection time, dose used as
is); ``Units`` CNTS only with the Philips private SUV scale factor (7053,1000); ``Units`` GML is already SUV.
Anything else, or a missing tag, is a :class:`DicomError` that names the tag and the file.

DICOM SEG becomes a label map through ``highdicom`` (optional dependency, imported lazily). RTSTRUCT (contours)
is not converted: rasterising polygons well needs a dedicated tool; the error says so.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import nibabel as nib
import numpy as np

from umd_lightning.organs import LabelMap, OrganSet, get_organ_set, load_label_map

#: LPS (DICOM patient coordinates) -> RAS (NIfTI world coordinates).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Modalities converted as image series; SEG becomes a label map; others are skipped.
IMAGE_MODALITIES = ("CT", "MR", "PT")

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Relative tolerance on slice spacing before a series is declared to have gaps or several stacks.
SLICE_SPACING_RTOL = 0.01
#: Tolerance on direction cosines when checking that all slices share one orientation.
ORIENTATION_ATOL = 1e-4

Status = Literal["ok", "failed", "skipped"]


class DicomError(ValueError):
    """A DICOM file or series cannot be converted. The message names the file and the problem."""


# --------------------------------------------------------------------------- discovery


@dataclass
class DicomSeries:
    """The files of one DICOM series (one ``SeriesInstanceUID``), headers read without pixels."""

    series_uid: str
    modality: str
    sop_class_uid: str
    patient_id: str
    study_uid: str
    series_number: int | None
    description: str
    files: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A file-system safe name: ``<patient>_S<series number>_<modality>``."""
        number = "" if self.series_number is None else f"S{self.series_number}"
        parts = [p for p in (self.patient_id or "anon", number, self.modality) if p]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))


#: Files with these endings are never DICOM; others without a preamble are still tried (old exports lack one).
_NOT_DICOM = (".nii", ".nii.gz", ".gz", ".txt", ".json", ".csv", ".png", ".jpg", ".jpeg", ".xml", ".md", ".zip")


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        if path.name.lower().endswith(_NOT_DICOM):
            return None
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not DICOM after all
            return None
        return ds if "SOPClassUID" in ds and "SeriesInstanceUID" in ds else None
    except Exception:  # noqa: BLE001 - a damaged file is skipped like a non-DICOM one
        return None


def find_series(src: str | Path) -> list[DicomSeries]:
    """Group the DICOM files under ``src`` (a file or a folder, searched recursively) by series.

    Non-DICOM files and DICOMDIR index files are ignored.

    Raises:
        DicomError: ``src`` does not exist or holds no DICOM file.
    """
    src = Path(src)
    if not src.exists():
        raise DicomError(f"{src}: no such file or folder")
    paths = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    series: dict[str, DicomSeries] = {}
    for path in paths:
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        sop_class = str(ds.get("SOPClassUID", getattr(ds.get("file_meta", {}), "MediaStorageSOPClassUID", "")))
        if sop_class == DICOMDIR_SOP_CLASS:
            continue
        uid = str(ds.SeriesInstanceUID)
        if uid not in series:
            number = ds.get("SeriesNumber")
            series[uid] = DicomSeries(
                series_uid=uid,
                modality=str(ds.get("Modality", "")).upper(),
                sop_class_uid=sop_class,
                patient_id=str(ds.get("PatientID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_number=None if number in (None, "") else int(number),
                description=str(ds.get("SeriesDescription", "")),
            )
        series[uid].files.append(path)
    if not series:
        raise DicomError(f"{src}: no DICOM file found")
    return sorted(series.values(), key=lambda s: (s.patient_id, s.study_uid, s.series_number or 0, s.series_uid))


# --------------------------------------------------------------------------- geometry


def _require(ds, keyword: str, path: Path | str, purpose: str = ""):
    value = ds.get(keyword)
    if value is None or (isinstance(value, (str, bytes)) and not str(value).strip()) or (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0
    ):
        import pydicom.datadict as dd

        tag = dd.tag_for_keyword(keyword)
        tag_txt = f" ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        raise DicomError(f"{path}: missing DICOM tag {keyword}{tag_txt}{', needed for ' + purpose if purpose else ''}")
    return value


@dataclass
class Volume:
    """A 3D volume in RAS world coordinates.

    Attributes:
        array: voxel values, shape (X, Y, Z) = (columns, rows, slices).
        affine: (4, 4) voxel index -> RAS mm.
        datasets: the slice headers in volume order (k = 0 first), pixels not kept.
        files: the slice files in volume order.
    """

    array: np.ndarray
    affine: np.ndarray
    datasets: list
    files: list[Path]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def to_nifti(self, dtype=None) -> nib.Nifti1Image:
        data = self.array if dtype is None else self.array.astype(dtype)
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        return img


def _fmt(values) -> list[float]:
    return [round(float(v), 5) for v in values]


def slice_geometry(datasets: Sequence, files: Sequence[Path]) -> tuple[np.ndarray, list[int]]:
    """The RAS affine of a stack of single-frame slices and the order that sorts them along the normal.

    Args:
        datasets: slice headers (any order).
        files: their files, for error messages.

    Returns:
        ``(affine, order)``: (4, 4) voxel -> RAS mm with voxel axes (column, row, slice), and the indices of
        ``datasets`` from the lowest to the highest position along the slice normal.

    Raises:
        DicomError: a geometry tag is missing, the slices disagree in orientation, size or pixel spacing,
            several slices share a position (several volumes in one series), or the spacing is not uniform
            (missing slices, several stacks).
    """
    first, f0 = datasets[0], files[0]
    iop = np.array([float(v) for v in _require(first, "ImageOrientationPatient", f0, "orientation")], dtype=float)
    spacing = [float(v) for v in _require(first, "PixelSpacing", f0, "voxel spacing")]
    shape = (int(_require(first, "Rows", f0)), int(_require(first, "Columns", f0)))
    if iop.size != 6 or len(spacing) != 2:
        raise DicomError(f"{f0}: malformed ImageOrientationPatient {_fmt(iop)} or PixelSpacing {spacing}")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    positions = []
    for ds, path in zip(datasets, files):
        other = np.array([float(v) for v in _require(ds, "ImageOrientationPatient", path, "orientation")])
        if other.size != 6 or np.abs(other - iop).max() > ORIENTATION_ATOL:
            raise DicomError(
                f"{path}: ImageOrientationPatient {_fmt(other)} differs from {f0} "
                f"{_fmt(iop)}; the series mixes orientations (e.g. a localizer) and is not one volume"
            )
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DicomError(f"{path}: {ds.Rows}x{ds.Columns} pixels differs from {f0} {shape[0]}x{shape[1]}")
        other_sp = [float(v) for v in _require(ds, "PixelSpacing", path, "voxel spacing")]
        if not np.allclose(other_sp, spacing, rtol=1e-4):
            raise DicomError(f"{path}: PixelSpacing {other_sp} differs from {f0} {spacing}")
        positions.append(np.array([float(v) for v in _require(ds, "ImagePositionPatient", path, "slice position")]))
    positions_arr = np.array(positions)
    along = positions_arr @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    positions_arr, along = positions_arr[order], along[order]
    n = len(order)
    if n > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-3 * max(1.0, float(np.abs(gaps).max()))):
            dupes = int(np.sum(gaps < 1e-3 * max(1.0, float(np.abs(gaps).max())))) + 1
            raise DicomError(
                f"{files[order[0]].parent}: {dupes} slices share a position along the normal; the series holds "
                "several volumes (echoes, phases or time points) - split it before converting"
            )
        step = (positions_arr[-1] - positions_arr[0]) / (n - 1)
        deviation = np.linalg.norm(positions_arr - (positions_arr[0] + np.outer(np.arange(n), step)), axis=1).max()
        if deviation > SLICE_SPACING_RTOL * np.linalg.norm(step):
            raise DicomError(
                f"{files[order[0]].parent}: non-uniform slice spacing (steps {np.round(gaps, 3).tolist()[:8]} mm "
                f"along the normal); the series has missing slices or several stacks"
            )
    else:
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        step = normal * float(thickness)
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns): column index i moves along the row cosine.
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions_arr[0]
    return LPS_TO_RAS @ lps, order


def read_series(series: DicomSeries | Sequence[str | Path]) -> Volume:
    """Read a single-frame image series into a :class:`Volume` of rescaled values (float64).

    ``RescaleSlope``/``RescaleIntercept`` are applied per slice (PET stores one slope per slice).

    Raises:
        DicomError: see :func:`slice_geometry`; also unreadable pixel data or a multi-frame file.
    """
    import pydicom

    files = [Path(f) for f in (series.files if isinstance(series, DicomSeries) else series)]
    if not files:
        raise DicomError("empty series: no file given")
    headers = []
    for path in files:
        ds = _read_header(path)
        if ds is None:
            raise DicomError(f"{path}: not a readable DICOM file")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(
                f"{path}: multi-frame (enhanced) image with {ds.NumberOfFrames} frames; "
                "use read_enhanced (needs highdicom) for it"
            )
        headers.append(ds)
    affine, order = slice_geometry(headers, files)
    slices = []
    for idx in order:
        path = files[idx]
        try:
            ds = pydicom.dcmread(str(path))
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - missing decoder, truncated file, ...
            raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
        if pixels.ndim != 2:
            raise DicomError(f"{path}: expected one grey-level frame, got pixel array of shape {pixels.shape}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels.astype(np.float64) * slope + intercept)
    array = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, k) -> (cols, rows, k)
    return Volume(array, affine, [headers[i] for i in order], [files[i] for i in order])


def read_enhanced(path: str | Path) -> Volume:
    """Read a multi-frame (enhanced) CT or MR image through highdicom.

    Raises:
        DicomError: highdicom is missing, or it cannot build a regular volume from the file.
    """
    hd = _highdicom(path)
    try:
        image = hd.imread(str(path))
        vol = image.get_volume()
        nii = vol.to_nibabel()
    except Exception as exc:  # noqa: BLE001
        raise DicomError(f"{path}: cannot read multi-frame image ({type(exc).__name__}: {exc})") from exc
    # highdicom orders axes (slice, row, column); bring them to (column, row, slice along the normal) like
    # read_series, so both routes give the same array for the same scan.
    array = np.asarray(nii.dataobj, dtype=np.float64).transpose(2, 1, 0)
    affine = nii.affine[:, [2, 1, 0, 3]]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if float(affine[:3, 2] @ normal) < 0:
        array = array[:, :, ::-1]
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 2] * (array.shape[2] - 1)
        affine[:3, 2] *= -1
    return Volume(np.ascontiguousarray(array), affine, [image], [Path(path)])


def _highdicom(path):
    try:
        import highdicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DicomError(f"{path}: needs the optional package highdicom: install the extra: pip install 'umd_lightning[dicom]'") from exc
    return highdicom


# --------------------------------------------------------------------------- SUV


def _parse_dt(date: str | None, time: str | None) -> dt.datetime | None:
    from pydicom.valuerep import DA, TM

    if not time:
        return None
    t = TM(str(time).strip())
    d = DA(str(date).strip()) if date else dt.date(1900, 1, 1)
    return dt.datetime.combine(d, dt.time(t.hour, t.minute, t.second, t.microsecond))


def _parse_datetime(value: str) -> dt.datetime:
    from pydicom.valuerep import DT

    v = DT(str(value).strip())
    return dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)


def _private_float(ds, group: int, element: int) -> float | None:
    tag = (group << 16) | element
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):  # implicit VR: the private tag arrives as raw bytes
        try:
            return float(value.decode("ascii").strip("\x00 "))
        except (UnicodeDecodeError, ValueError):
            return struct.unpack("<d", value[:8])[0] if len(value) >= 8 else None
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        value = list(value)[0]
    return float(value)


@dataclass(frozen=True)
class SuvFactors:
    """Everything that went into one PET series' body-weight SUV factor.

    ``suv = (stored * slope + intercept) * factor``.
    """

    units: str
    decay_correction: str | None
    weight_kg: float | None
    dose_bq: float | None
    half_life_s: float | None
    injection_time: dt.datetime | None
    scan_time: dt.datetime | None
    decay_s: float | None
    decayed_dose_bq: float | None
    factor: float


def suv_factors(datasets: Sequence, path: str | Path = "") -> SuvFactors:
    """Body-weight SUV factor of a PET series from its DICOM tags.

    Args:
        datasets: the slice headers of one series (acquisition times are taken over all of them).
        path: the file named in error messages.

    Returns:
        A :class:`SuvFactors`; multiply rescaled values by ``factor`` to get SUVbw.

    Raises:
        DicomError: a needed tag is missing or holds an unusable value, or the units or decay correction are
            not supported. The message names the tag and ``path``.
    """
    ds = datasets[0]
    path = path or "PET series"
    units = str(_require(ds, "Units", path, "SUV")).upper().strip()
    if units == "GML":
        return SuvFactors(units, None, None, None, None, None, None, None, None, 1.0)
    if units == "CNTS":
        scale = _private_float(ds, 0x7053, 0x1000)
        if scale is None:
            raise DicomError(
                f"{path}: Units CNTS needs the Philips private SUV scale factor (7053,1000), which is missing; "
                "this vendor's count-based PET cannot be converted to SUV"
            )
        return SuvFactors(units, None, None, None, None, None, None, None, None, float(scale))
    if units != "BQML":
        raise DicomError(f"{path}: Units {units!r} not supported for SUV (supported: BQML, CNTS with Philips scale, GML)")

    decay = str(_require(ds, "DecayCorrection", path, "SUV")).upper().strip()
    if decay not in ("START", "ADMIN"):
        raise DicomError(
            f"{path}: DecayCorrection {decay!r} not supported for SUV (supported: START, ADMIN); "
            "images not decay corrected need per-slice correction"
        )
    corrected = ds.get("CorrectedImage")
    if corrected is not None and "DECY" not in [str(c).upper() for c in corrected]:
        raise DicomError(f"{path}: CorrectedImage {list(corrected)} lacks DECY; the images are not decay corrected")
    weight = float(_require(ds, "PatientWeight", path, "body-weight SUV"))
    if not weight > 0:
        raise DicomError(f"{path}: PatientWeight {weight} kg is not positive")
    info_seq = _require(ds, "RadiopharmaceuticalInformationSequence", path, "SUV")
    info = info_seq[0]
    dose = float(_require(info, "RadionuclideTotalDose", path, "SUV (in RadiopharmaceuticalInformationSequence)"))
    half_life = float(_require(info, "RadionuclideHalfLife", path, "SUV (in RadiopharmaceuticalInformationSequence)"))
    if not dose > 0 or not half_life > 0:
        raise DicomError(f"{path}: RadionuclideTotalDose {dose} Bq and RadionuclideHalfLife {half_life} s must be > 0")

    if decay == "ADMIN":
        factor = weight * 1000.0 / dose
        return SuvFactors(units, decay, weight, dose, half_life, None, None, 0.0, dose, factor)

    series_time = _parse_dt(ds.get("SeriesDate"), ds.get("SeriesTime"))
    acq_times = [t for t in (_parse_dt(d.get("AcquisitionDate"), d.get("AcquisitionTime")) for d in datasets) if t]
    acq_start = min(acq_times) if acq_times else None
    # QIBA: the series time is the decay reference unless a post-processing step rewrote it later than the
    # first acquisition; then the earliest acquisition time stands in.
    if series_time is not None and (acq_start is None or series_time <= acq_start):
        scan = series_time
    elif acq_start is not None:
        scan = acq_start
    else:
        raise DicomError(
            f"{path}: missing DICOM tags SeriesTime (0008,0031) and AcquisitionTime (0008,0032), "
            "needed for SUV decay correction"
        )

    if info.get("RadiopharmaceuticalStartDateTime"):
        injection = _parse_datetime(info.RadiopharmaceuticalStartDateTime)
        time_only = False
    else:
        start = _require(
            info,
            "RadiopharmaceuticalStartTime",
            path,
            "SUV decay correction (or RadiopharmaceuticalStartDateTime), in RadiopharmaceuticalInformationSequence",
        )
        date = ds.get("SeriesDate") or ds.get("AcquisitionDate") or ds.get("StudyDate")
        injection = _parse_dt(date, start)
        time_only = True
    if time_only and injection > scan:
        # A time without a date, later than the scan: the injection was the evening before a scan after midnight.
        injection -= dt.timedelta(days=1)
    decay_s = (scan - injection).total_seconds()
    if decay_s < 0:
        raise DicomError(f"{path}: injection time {injection} is after the scan start {scan}")
    decayed = dose * math.pow(2.0, -decay_s / half_life)
    factor = weight * 1000.0 / decayed
    return SuvFactors(units, decay, weight, dose, half_life, injection, scan, decay_s, decayed, factor)


# --------------------------------------------------------------------------- SEG / RTSTRUCT


def _normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def segment_lookup(
    segments: Mapping[int, str], label_map: LabelMap | Literal["names"] | None, organ_set: OrganSet
) -> np.ndarray | None:
    """A lookup table ``lut[segment_number] = organ id`` for a SEG's segments, or None to keep the numbers.

    Args:
        segments: ``{segment number: segment label}``.
        label_map: None keeps segment numbers; ``"names"`` matches segment labels to organ names (case and
            punctuation ignored); a :class:`LabelMap` with text keys maps segment labels, one with integer keys
            maps segment numbers.
        organ_set: the target ids.
    """
    if label_map is None:
        return None
    ids = {_normalise_name(k): v for k, v in organ_set.ids.items()}
    lut = np.zeros(max(segments, default=0) + 1, dtype=np.int16)
    for number, label in segments.items():
        if label_map == "names":
            organ = _normalise_name(label)
        else:
            text = {_normalise_name(k): v for k, v in label_map.mapping.items() if isinstance(k, str)}
            organ = label_map.mapping.get(number) or text.get(_normalise_name(label))
            organ = None if organ is None else _normalise_name(organ)
        lut[number] = ids.get(organ, 0) if organ else 0
    return lut


def read_seg(
    path: str | Path, reference: Volume | None = None
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Read a DICOM SEG as one label volume of segment numbers.

    Args:
        path: the SEG file.
        reference: the converted source series; when given, the labels are put on its grid (frames the SEG
            omits are empty), so image and label share the grid exactly.

    Returns:
        ``(labels, affine, segments)``: labels (X, Y, Z) of segment numbers, the RAS affine, and
        ``{segment number: segment label}``.

    Raises:
        DicomError: highdicom is missing, or the SEG cannot be read (overlapping segments, no geometry).
    """
    hd = _highdicom(path)
    try:
        seg = hd.seg.segread(str(path))
        segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", s.SegmentNumber)) for s in seg.SegmentSequence}
        if reference is not None:
            uids = [str(d.SOPInstanceUID) for d in reference.datasets]
            frames = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                combine_segments=True,
                relabel=False,
                assert_missing_frames_are_empty=True,
            )
            labels = np.asarray(frames).transpose(2, 1, 0)  # (k, rows, cols) -> (cols, rows, k)
            affine = reference.affine
        else:
            nii = seg.get_volume(combine_segments=True, relabel=False).to_nibabel()
            labels, affine = np.asarray(nii.dataobj), nii.affine
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DicomError(f"{path}: cannot read DICOM SEG ({type(exc).__name__}: {exc})") from exc
    return labels, affine, segments


# --------------------------------------------------------------------------- conversion


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


def _save(img: nib.Nifti1Image, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(out)
    return out


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
    if len(series.files) == 1 and int(getattr(_read_header(series.files[0]), "NumberOfFrames", 1) or 1) > 1:
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
    _save(vol.to_nifti(_image_dtype(vol, series.modality)), out_path)
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
    target = _save(img, Path(out) / f"{name}.nii.gz")
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
