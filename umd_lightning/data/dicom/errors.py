"""DicomError, and the checks that raise it naming the file: a required tag, an optional package."""

from __future__ import annotations

import math
from pathlib import Path

from umd_lightning.extras import MissingExtraError, require_extra


class DicomError(ValueError):
    """A DICOM file or series cannot be converted. The message names the file and the problem."""


def _tag_text(keyword: str) -> str:
    """`` (gggg,eeee)`` of a keyword, or nothing for an unknown one."""
    import pydicom.datadict as dd

    tag = dd.tag_for_keyword(keyword)
    return f" ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""


def _get(ds, keyword: str, path: Path | str, purpose: str = ""):
    """``ds.get(keyword)``; a value pydicom cannot decode (a DS or IS holding text) is a DicomError naming the tag."""
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DicomError(
            f"{path}: DICOM tag {keyword}{_tag_text(keyword)} holds an unreadable value ({exc})"
            f"{', needed for ' + purpose if purpose else ''}"
        ) from exc


def _require(ds, keyword: str, path: Path | str, purpose: str = ""):
    value = _get(ds, keyword, path, purpose)
    if value is None or (isinstance(value, (str, bytes)) and not str(value).strip()) or (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0
    ):
        raise DicomError(f"{path}: missing DICOM tag {keyword}{_tag_text(keyword)}{', needed for ' + purpose if purpose else ''}")
    return value


def _numbers(value, keyword: str, path: Path | str, purpose: str = "", kind: type = float) -> list:
    """The numbers of a tag's value (one or several, as a DICOM multi-value or a backslash-separated text)."""
    items = value.split("\\") if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else [value]
    try:
        numbers = [kind(float(v)) if kind is int else kind(v) for v in items]
    except (ValueError, TypeError, OverflowError):
        numbers = None
    if not numbers or any(not math.isfinite(v) for v in numbers):
        shown = "\\".join(map(str, items))
        raise DicomError(
            f"{path}: DICOM tag {keyword}{_tag_text(keyword)} holds '{shown}', not "
            f"{'an integer' if kind is int else 'a number'}{', needed for ' + purpose if purpose else ''}"
        )
    return numbers


def _require_numbers(ds, keyword: str, path: Path | str, purpose: str = "", kind: type = float) -> list:
    """The numbers a required tag holds; missing or not numbers is a DicomError naming the file and the tag."""
    return _numbers(_require(ds, keyword, path, purpose), keyword, path, purpose, kind)


def _number(ds, keyword: str, path: Path | str, default=None, purpose: str = "", kind: type = float):
    """The single number an optional tag holds (``default`` when it is absent or empty); text is a DicomError."""
    value = _get(ds, keyword, path, purpose)
    if value is None or (isinstance(value, (str, bytes)) and not str(value).strip()):
        return default
    return _numbers(value, keyword, path, purpose, kind)[0]


def _highdicom(path):
    """highdicom, or a DicomError (its series fails, the others convert) naming the extra that installs it."""
    try:
        return require_extra("highdicom", "dicom", needed_by=f"{path}: reading DICOM SEG and multi-frame images")
    except MissingExtraError as exc:
        raise DicomError(str(exc)) from exc
