"""Finding the DICOM files under a path and grouping them by series (headers only)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from umd_lightning.data.dicom.errors import DicomError, _number
from umd_lightning.paths import path_problem

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


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
    problem = path_problem(src, "any")
    if problem:
        raise DicomError(f"{src}: {problem}")
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
            try:
                number = _number(ds, "SeriesNumber", path, kind=int)
            except DicomError:
                number = None  # it only names the output file: a malformed one must not stop every series
            series[uid] = DicomSeries(
                series_uid=uid,
                modality=str(ds.get("Modality", "")).upper(),
                sop_class_uid=sop_class,
                patient_id=str(ds.get("PatientID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_number=number,
                description=str(ds.get("SeriesDescription", "")),
            )
        series[uid].files.append(path)
    if not series:
        raise DicomError(f"{src}: no DICOM file found")
    return sorted(series.values(), key=lambda s: (s.patient_id, s.study_uid, s.series_number or 0, s.series_uid))
