"""Reference labels of another vocabulary mapped onto the organ set once, into the cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord
from umd_lightning.data.niigz import save_nifti_atomic
from umd_lightning.organs import SESSION_VIEWS, LabelMap, OrganSet, get_organ_set, load_label_map
from umd_lightning.paths import path_problem

#: ``label_map`` option: a map for every case, or one per anatomical view / session (``default`` for the rest).
LabelMapOption = str | Mapping[str, str | None] | None


def _map_digest(label_map: LabelMap, organ_set: OrganSet) -> str:
    blob = json.dumps(
        [sorted((str(k), v) for k, v in label_map.mapping.items()), sorted(organ_set.labels.items())]
    ).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def map_label_file(
    src: str | Path, dst: str | Path, label_map: str | LabelMap, organ_set: str | OrganSet = "umd13"
) -> Path:
    """Write ``src`` (integer labels in another vocabulary) mapped onto ``organ_set`` ids to ``dst``.

    The output keeps the source affine and grid, as uint8 (uint16 for large organ sets); ids the label map does
    not name become background. The file is written to a temporary name and renamed, so concurrent writers
    (DDP ranks) never see a partial file.

    Raises:
        ManifestError: ``src`` is missing, unreadable, not 3D, or holds non-integer or negative values.
    """
    src, dst = Path(src), Path(dst)
    lmap = label_map if isinstance(label_map, LabelMap) else load_label_map(str(label_map))
    organs = get_organ_set(organ_set)
    problem = path_problem(src, noun="label file")
    if problem:
        raise ManifestError(f"{src}: {problem}")
    try:
        img = nib.load(str(src))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"{src}: unreadable label map ({type(exc).__name__}: {exc})") from exc
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.ndim != 3:
        raise ManifestError(f"{src}: expected a 3D label map, got shape {img.shape}")
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ManifestError(f"{src}: label map holds non-integer values")
        data = data.astype(np.int64)
    try:
        out = lmap.apply(data, organs)
    except ValueError as exc:
        raise ManifestError(f"{src}: {exc}") from exc
    header = img.header.copy()
    header.set_data_dtype(out.dtype)
    new = nib.Nifti1Image(out, img.affine, header=header)
    new.header.set_slope_inter(1.0, 0.0)
    save_nifti_atomic(new, dst)
    return dst


class LabelConverter:
    """Maps each record's label once into the cache and rewrites the manifest to point at the results.

    Args:
        label_map: see :data:`LabelMapOption`; ``dataset`` needs ``dataset_labels``.
        cache_dir: folder for converted labels (created when needed).
        organ_set: target organ set.
        dataset_labels: ``{id: name}`` of the dataset's own vocabulary (nnU-Net ``dataset.json``).
    """

    def __init__(
        self,
        label_map: LabelMapOption,
        cache_dir: str | Path,
        organ_set: str | OrganSet = "umd13",
        dataset_labels: Mapping[int, str] | None = None,
    ) -> None:
        self.option = label_map
        self.cache_dir = Path(cache_dir)
        self.organs = get_organ_set(organ_set)
        self.dataset_labels = dataset_labels
        self._maps: dict[str, LabelMap] = {}

    def _resolve(self, name: str | None) -> LabelMap | None:
        if name is None or str(name).lower() in ("none", "null", ""):
            return None
        name = str(name)
        if name not in self._maps:
            if name == "dataset":
                if self.dataset_labels is None:
                    raise ManifestError("label_map 'dataset' needs a layout whose files name the labels (nnunet)")
                organ_names = set(self.organs.organs)
                mapping = {i: n for i, n in self.dataset_labels.items() if n in organ_names and i != 0}
                self._maps[name] = LabelMap("dataset", "dataset.json labels", mapping)
            else:
                try:
                    self._maps[name] = load_label_map(name)
                except FileNotFoundError as exc:
                    raise ManifestError(str(exc)) from exc
        return self._maps[name]

    def map_for(self, session: str) -> LabelMap | None:
        opt = self.option
        if opt is None or isinstance(opt, str):
            return self._resolve(opt)
        anatomical = SESSION_VIEWS[session][0]
        for key in (anatomical, session, "default"):
            if key in opt:
                return self._resolve(opt[key])
        return None

    def convert(self, src: Path, subject: str, session: str) -> Path:
        lmap = self.map_for(session)
        if lmap is None:
            return src
        folder = self.cache_dir / "labels" / f"{self.organs.name}-{lmap.name}-{_map_digest(lmap, self.organs)}"
        tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{subject}_{session}")
        dst = folder / f"{safe}-{tag}.nii.gz"
        if dst.is_file() and src.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            return dst
        if not src.is_file():
            return src  # leave the missing file in the manifest: validation names it
        try:
            return map_label_file(src, dst, lmap, self.organs)
        except PermissionError as exc:
            raise ManifestError(
                f"{self.cache_dir}: cannot write converted labels ({exc}); set the layout option cache_dir "
                "to a writable folder"
            ) from exc

    def apply(self, manifest: Manifest) -> Manifest:
        done: dict[Path, Path] = {}
        records = []
        for r in manifest:
            label = r.label
            if label is not None:
                if label not in done:
                    done[label] = self.convert(label, r.subject_id, r.session)
                label = done[label]
            records.append(ScanRecord(r.subject_id, r.session, r.view, r.image, label, r.split))
        return Manifest(records, manifest.source)


def default_cache_dir() -> Path:
    """The user's cache folder, as ``paths.cache_dir`` defaults to it: ``$UMD_CACHE_DIR``, else
    ``~/.cache/umd_lightning``."""
    return Path(os.environ.get("UMD_CACHE_DIR") or Path.home() / ".cache" / "umd_lightning").expanduser()
