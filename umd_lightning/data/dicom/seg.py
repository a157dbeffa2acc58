"""DICOM SEG to a label volume (through highdicom), segments mapped onto organ ids."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from umd_lightning.data.dicom.errors import DicomError, _highdicom
from umd_lightning.data.dicom.volume import Volume
from umd_lightning.organs import LabelMap, OrganSet


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
