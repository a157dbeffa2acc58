"""A CSV/JSON manifest file read as a layout."""

from __future__ import annotations

from pathlib import Path

from umd_lightning.data.layouts.labels import LabelMapOption
from umd_lightning.data.layouts.records import _finish
from umd_lightning.data.manifest import Manifest, ManifestError, read_manifest
from umd_lightning.organs import OrganSet


def read_manifest_layout(
    root: str | Path,
    *,
    file: str | None = None,
    label_map: LabelMapOption = None,
    cache_dir: str | Path | None = None,
    organ_set: str | OrganSet = "umd13",
) -> Manifest:
    """A manifest file as a layout: ``root`` is the file, or a folder holding ``file`` (default
    ``manifest.csv`` or ``manifest.json``).

    Raises:
        ManifestError: no manifest file, or see :func:`~umd_lightning.data.manifest.read_manifest`.
    """
    root = Path(root)
    if root.is_dir():
        names = [file] if file else ["manifest.csv", "manifest.json"]
        found = [root / n for n in names if (root / n).is_file()]
        if not found:
            raise ManifestError(f"{root}: no manifest file ({' or '.join(names)})")
        path = found[0]
    else:
        path = root
    manifest = read_manifest(path)
    return _finish(list(manifest), manifest.source, path.parent, label_map, cache_dir, organ_set)
