"""Image series to a :class:`Volume` in RAS world coordinates: geometry from the tags, never file order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from umd_lightning.data.dicom.discovery import DicomSeries, _read_header
from umd_lightning.data.dicom.errors import DicomError, _highdicom, _number, _require_numbers

#: LPS (DICOM patient coordinates) -> RAS (NIfTI world coordinates).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Relative tolerance on slice spacing before a series is declared to have gaps or several stacks.
SLICE_SPACING_RTOL = 0.01
#: Tolerance on direction cosines when checking that all slices share one orientation.
ORIENTATION_ATOL = 1e-4


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
    iop = np.array(_require_numbers(first, "ImageOrientationPatient", f0, "orientation"), dtype=float)
    spacing = _require_numbers(first, "PixelSpacing", f0, "voxel spacing")
    shape = (_require_numbers(first, "Rows", f0, kind=int)[0], _require_numbers(first, "Columns", f0, kind=int)[0])
    if iop.size != 6 or len(spacing) != 2:
        raise DicomError(f"{f0}: malformed ImageOrientationPatient {_fmt(iop)} or PixelSpacing {spacing}")
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    positions = []
    for ds, path in zip(datasets, files):
        other = np.array(_require_numbers(ds, "ImageOrientationPatient", path, "orientation"))
        if other.size != 6 or np.abs(other - iop).max() > ORIENTATION_ATOL:
            raise DicomError(
                f"{path}: ImageOrientationPatient {_fmt(other)} differs from {f0} "
                f"{_fmt(iop)}; the series mixes orientations (e.g. a localizer) and is not one volume"
            )
        size = (_require_numbers(ds, "Rows", path, kind=int)[0], _require_numbers(ds, "Columns", path, kind=int)[0])
        if size != shape:
            raise DicomError(f"{path}: {size[0]}x{size[1]} pixels differs from {f0} {shape[0]}x{shape[1]}")
        other_sp = _require_numbers(ds, "PixelSpacing", path, "voxel spacing")
        if not np.allclose(other_sp, spacing, rtol=1e-4):
            raise DicomError(f"{path}: PixelSpacing {other_sp} differs from {f0} {spacing}")
        positions.append(np.array(_require_numbers(ds, "ImagePositionPatient", path, "slice position")))
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
        thickness = (_number(first, "SpacingBetweenSlices", f0, purpose="the slice step")
                     or _number(first, "SliceThickness", f0, purpose="the slice step") or 1.0)
        step = normal * thickness
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
        if _number(ds, "NumberOfFrames", path, 1, kind=int) > 1:
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
        slope = _number(ds, "RescaleSlope", path, 1.0, "rescaling the pixel values") or 1.0
        intercept = _number(ds, "RescaleIntercept", path, 0.0, "rescaling the pixel values")
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
