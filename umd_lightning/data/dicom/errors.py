"""DicomError, and the checks that raise it naming the file: a required tag, an optional package."""

from __future__ import annotations

from pathlib import Path


class DicomError(ValueError):
    """A DICOM file or series cannot be converted. The message names the file and the problem."""


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


def _highdicom(path):
    try:
        import highdicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DicomError(f"{path}: needs the optional package highdicom: install the extra: pip install 'umd_lightning[dicom]'") from exc
    return highdicom
