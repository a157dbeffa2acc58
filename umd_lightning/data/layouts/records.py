"""What every reader shares: session and view tokens, and records made into a checked manifest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from umd_lightning.data.layouts.labels import LabelConverter, LabelMapOption, default_cache_dir
from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord
from umd_lightning.organs import SESSION_VIEWS, VIEWS, OrganSet

# Session tokens (lower case, punctuation removed) accepted in file names and case ids.
DEFAULT_SESSION_NAMES: dict[str, str] = {
    "petct": "petct",
    "ct": "petct",
    "petmri": "petmri",
    "petmr": "petmri",
    "mri": "petmri",
    "mr": "petmri",
}
# View tokens; the generic ``PET`` becomes the PET view of the record's session.
DEFAULT_VIEW_NAMES: dict[str, str] = {
    "ct": "CT",
    "mr": "MRI",
    "mri": "MRI",
    "pet": "PET",
    "pt": "PET",
    "suv": "PET",
    "petct": "PET_CT",
    "petmri": "PET_MRI",
    "petmr": "PET_MRI",
}


def _token(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(value).lower())


def _finish(
    records: list[ScanRecord],
    source: str,
    root: Path,
    label_map: LabelMapOption,
    cache_dir: str | Path | None,
    organ_set: str | OrganSet,
    dataset_labels: Mapping[int, str] | None = None,
) -> Manifest:
    if not records:
        raise ManifestError(f"{source}: no scans found")
    keys: dict[tuple[str, str], Path] = {}
    for r in records:
        key = (r.subject_id, r.view)
        if key in keys:
            raise ManifestError(f"{source}: subject {r.subject_id} view {r.view} found twice: {keys[key]} and {r.image}")
        keys[key] = r.image
    order = {v: i for i, v in enumerate(VIEWS)}
    records = sorted(records, key=lambda r: (r.subject_id, order[r.view]))
    manifest = Manifest(records, source)
    if label_map is None or (isinstance(label_map, Mapping) and not label_map):
        return manifest
    # never beside the user's data: the user's cache folder (paths.cache_dir's default) unless told
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return LabelConverter(label_map, cache, organ_set, dataset_labels).apply(manifest)


def _session_view(session: str, role: str, where: str) -> str:
    """The view of ``session`` that a role (a view, or generic PET / anatomical) stands for."""
    anatomical, pet = SESSION_VIEWS[session]
    if role in ("PET", pet):
        return pet
    if role in ("anatomical", anatomical):
        return anatomical
    raise ManifestError(f"{where}: view {role} does not belong to session {session}")
