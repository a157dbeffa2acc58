"""Body-weight SUV of a PET series from its tags (QIBA vendor-neutral pseudo-code)."""

from __future__ import annotations

import datetime as dt
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from umd_lightning.data.dicom.errors import DicomError, _require, _require_numbers


def _parse_dt(date: str | None, time: str | None, path: str | Path, keywords: tuple[str, str]) -> dt.datetime | None:
    """A DICOM date (DA) and time (TM); ``keywords`` name the tags they came from in the error."""
    from pydicom.valuerep import DA, TM

    if not time:
        return None
    try:
        t = TM(str(time).strip())
        d = DA(str(date).strip()) if date else dt.date(1900, 1, 1)
        return dt.datetime.combine(d, dt.time(t.hour, t.minute, t.second, t.microsecond))
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomError(
            f"{path}: DICOM tags {keywords[0]} {date!r} and {keywords[1]} {time!r} are not a date and a time ({exc}), "
            "needed for SUV decay correction"
        ) from exc


def _parse_datetime(value: str, path: str | Path) -> dt.datetime:
    from pydicom.valuerep import DT

    try:
        v = DT(str(value).strip())
        return dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomError(
            f"{path}: DICOM tag RadiopharmaceuticalStartDateTime (0018,1078) holds {value!r}, not a date-time ({exc}), "
            "needed for SUV decay correction"
        ) from exc


def _private_float(ds, group: int, element: int, path: str | Path) -> float | None:
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
    try:
        return float(value)
    except (ValueError, TypeError) as exc:
        raise DicomError(f"{path}: private DICOM tag ({group:04X},{element:04X}) holds {value!r}, not a number") from exc


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
        scale = _private_float(ds, 0x7053, 0x1000, path)
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
    weight = _require_numbers(ds, "PatientWeight", path, "body-weight SUV")[0]
    if not weight > 0:
        raise DicomError(f"{path}: PatientWeight {weight} kg is not positive")
    info_seq = _require(ds, "RadiopharmaceuticalInformationSequence", path, "SUV")
    info = info_seq[0]
    dose = _require_numbers(info, "RadionuclideTotalDose", path, "SUV (in RadiopharmaceuticalInformationSequence)")[0]
    half_life = _require_numbers(info, "RadionuclideHalfLife", path, "SUV (in RadiopharmaceuticalInformationSequence)")[0]
    if not dose > 0 or not half_life > 0:
        raise DicomError(f"{path}: RadionuclideTotalDose {dose} Bq and RadionuclideHalfLife {half_life} s must be > 0")

    if decay == "ADMIN":
        factor = weight * 1000.0 / dose
        return SuvFactors(units, decay, weight, dose, half_life, None, None, 0.0, dose, factor)

    series_time = _parse_dt(ds.get("SeriesDate"), ds.get("SeriesTime"), path, ("SeriesDate", "SeriesTime"))
    when = ("AcquisitionDate", "AcquisitionTime")
    acq_times = [t for t in (_parse_dt(d.get(when[0]), d.get(when[1]), path, when) for d in datasets) if t]
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
        injection = _parse_datetime(info.RadiopharmaceuticalStartDateTime, path)
        time_only = False
    else:
        start = _require(
            info,
            "RadiopharmaceuticalStartTime",
            path,
            "SUV decay correction (or RadiopharmaceuticalStartDateTime), in RadiopharmaceuticalInformationSequence",
        )
        date = ds.get("SeriesDate") or ds.get("AcquisitionDate") or ds.get("StudyDate")
        injection = _parse_dt(date, start, path, ("SeriesDate", "RadiopharmaceuticalStartTime"))
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
