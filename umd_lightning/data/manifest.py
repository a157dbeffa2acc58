"""The manifest: one validated row per scan, the only thing the rest of the pipeline reads.

A manifest comes from the synthetic cohort, a dataset layout (``layouts/``), or a CSV/JSON file with the
columns ``subject_id, session, view, image, label[, split]``. Relative paths resolve against the manifest
file's folder. :func:`validate_manifest` checks every file before any model runs; each problem names the
file and what is wrong with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from umd_lightning.organs import SESSION_VIEWS, VIEW_SESSION, VIEWS, OrganSet, is_pet
from umd_lightning.paths import path_problem

REQUIRED_COLUMNS = ("subject_id", "session", "view", "image", "label")
OPTIONAL_COLUMNS = ("split",)

#: World-coordinate tolerance (mm) when checking that an image and its label share a grid.
GRID_TOLERANCE_MM = 1e-2


class ManifestError(ValueError):
    """A manifest or one of its files cannot be used. The message names the file and the problem."""


class PetUnitsError(ManifestError):
    """A PET whose values look like activity concentration (Bq/ml), not SUV: every PET of the dataset
    is then likely in those units, so the run stops instead of scoring them (Dice about 0)."""


#: A PET whose 99.9th percentile exceeds this is probably not in SUV (FDG organs stay below ~50 SUV).
SUV_PLAUSIBLE_MAX = 200.0


def pet_units_problem(data: np.ndarray) -> str | None:
    """Why a PET's values do not look like SUV (None when they do).

    Example:
        >>> pet_units_problem(np.full((2, 2, 2), 5000.0))
        'PET 99.9th percentile is 5000: values look like Bq/ml, not SUV'
    """
    high = float(np.percentile(data, 99.9)) if data.size else 0.0
    return f"PET 99.9th percentile is {high:.4g}: values look like Bq/ml, not SUV" if high > SUV_PLAUSIBLE_MAX else None


@dataclass(frozen=True)
class ScanRecord:
    """One scan of one session, with the label map it is evaluated against."""

    subject_id: str
    session: str
    view: str
    image: Path
    label: Path | None = None
    split: str | None = None

    @property
    def case_id(self) -> str:
        return f"{self.subject_id}_{self.view}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image"] = str(self.image)
        d["label"] = None if self.label is None else str(self.label)
        return d


@dataclass
class Manifest:
    """An ordered collection of :class:`ScanRecord` with subject-level helpers."""

    records: list[ScanRecord] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ScanRecord]:
        return iter(self.records)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject_id for r in self.records})

    def select(self, *, subjects: Iterable[str] | None = None, views: Iterable[str] | None = None) -> "Manifest":
        subj = None if subjects is None else set(subjects)
        vw = None if views is None else set(views)
        keep = [
            r for r in self.records if (subj is None or r.subject_id in subj) and (vw is None or r.view in vw)
        ]
        return Manifest(keep, self.source)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.to_dict() for r in self.records], columns=[*REQUIRED_COLUMNS, "split"])

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path, index=False)
        return path

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, root: str | Path = ".", source: str = "") -> "Manifest":
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ManifestError(f"{source or 'manifest'}: missing column(s) {', '.join(missing)}")
        root = Path(root)
        records: list[ScanRecord] = []
        for i, row in enumerate(frame.to_dict("records")):
            where = f"{source or 'manifest'} row {i + 1}"
            view, session = str(row["view"]), str(row["session"])
            if view not in VIEWS:
                raise ManifestError(f"{where}: unknown view {view!r}; expected one of {', '.join(VIEWS)}")
            if session not in SESSION_VIEWS or VIEW_SESSION[view] != session:
                raise ManifestError(
                    f"{where}: view {view} does not belong to session {session!r} "
                    f"(expected {VIEW_SESSION[view]})"
                )
            label = row.get("label")
            split = row.get("split")
            records.append(
                ScanRecord(
                    subject_id=str(row["subject_id"]),
                    session=session,
                    view=view,
                    image=_resolve(root, row["image"]),
                    label=None if _is_blank(label) else _resolve(root, label),
                    split=None if _is_blank(split) else str(split),
                )
            )
        keys = [(r.subject_id, r.view) for r in records]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ManifestError(f"{source or 'manifest'}: duplicate subject/view rows: {dupes[:5]}")
        return cls(records, source)


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def _resolve(root: Path, value) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (root / p)


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest from CSV or JSON (a list of row objects, or ``{"scans": [...]}``).

    Raises:
        ManifestError: the file is missing, unreadable or lacks required columns.
    """
    path = Path(path)
    problem = path_problem(path, noun="manifest file")
    if problem:
        raise ManifestError(f"{path}: {problem}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            frame = pd.DataFrame(data["scans"] if isinstance(data, dict) else data)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from exc
    return Manifest.from_frame(frame, root=path.parent, source=str(path))


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Problem:
    """One reason a case is unusable."""

    case_id: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    problem = path_problem(path)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ManifestError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc


def _data(img, path: Path) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip, bad header offsets, ...
        raise ManifestError(f"{path}: unreadable voxel data ({type(exc).__name__}: {exc})") from exc


@lru_cache(maxsize=8)
def _label_values(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The distinct values of a label file, read once while the file is unchanged: the anatomical
    view and the PET of a session share one label, and at clinical size each read costs seconds."""
    values = distinct_values(_data(nib.load(path), Path(path)))
    values.flags.writeable = False
    return values


def distinct_values(arr: np.ndarray) -> np.ndarray:
    """``np.unique(arr)``, for 8- and 16-bit integers by marking the values seen, in slabs of 4 M voxels:
    no sort and no copy of the whole map (a clinical label map: 0.3 s instead of 0.6 s).

    Example:
        >>> distinct_values(np.array([[3, 0], [3, 7]], dtype=np.uint8)).tolist()
        [0, 3, 7]
    """
    flat = np.asarray(arr).ravel(order="K")  # a view in the order the voxels are stored
    if flat.dtype.kind not in "ui" or flat.dtype.itemsize > 2 or flat.size == 0:
        return np.unique(flat)
    low = int(flat.min())
    seen = np.zeros(int(flat.max()) - low + 1, dtype=bool)
    for start in range(0, flat.size, 1 << 22):
        slab = flat[start : start + (1 << 22)]
        seen[slab if low == 0 else slab.astype(np.int32) - low] = True
    return (np.flatnonzero(seen) + low).astype(flat.dtype)


def spatial_shape(img, path: Path) -> tuple[int, ...]:
    """The image's 3D shape; trailing singleton axes are dropped, real 4D is an error."""
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ManifestError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)} ({len(shape)}D)")
    return shape


def _world_box(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = nib.affines.apply_affine(affine, corners)
    return world.min(0), world.max(0)


def ras_grid(affine: np.ndarray, shape: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid ``(shape, affine)`` re-oriented to RAS (nibabel's closest canonical), without the voxels.

    Example:
        >>> lps = np.diag([-2.0, -2.0, 3.0, 1.0])
        >>> shape, affine = ras_grid(lps, (4, 5, 6))
        >>> shape, affine[:3, 3].tolist()
        ((4, 5, 6), [-6.0, -8.0, 0.0])
    """
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    affine = np.asarray(affine, dtype=np.float64)
    xform = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    new_shape = [0, 0, 0]
    for axis, (target, _) in enumerate(xform):
        new_shape[int(target)] = int(shape[axis])
    return tuple(new_shape), affine @ inv_ornt_aff(xform, tuple(int(s) for s in shape[:3]))


def check_record(record: ScanRecord, organ_set: OrganSet, *, pet_units: bool = False) -> None:
    """Validate one scan and its label; return quietly or raise :class:`ManifestError`.

    Checks: files exist and read; 3D; no NaN in the image; label ids within the organ set; the label on the
    image's grid (anatomical views) or overlapping it in world coordinates (PET, which keeps its own grid);
    with ``pet_units``, a PET's values look like SUV (else :class:`PetUnitsError`).
    """
    img = _load(record.image)
    img_shape = spatial_shape(img, record.image)
    data = _data(img, record.image)
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.isnan(data).sum())
        if n_nan:
            raise ManifestError(f"{record.image}: image contains {n_nan} NaN voxel(s)")
    if pet_units and is_pet(record.view):
        problem = pet_units_problem(data)
        if problem:
            raise PetUnitsError(
                f"{record.image}: {problem}; convert it to SUV (activity x body weight / decay-corrected injected "
                "dose; `python -m umd_lightning.convert` does it from DICOM), or pass data.pet_units=ignore"
            )
    del data
    if record.label is None:
        return
    lab = _load(record.label)
    lab_shape = spatial_shape(lab, record.label)
    stat = record.label.stat()
    values = _label_values(str(record.label), stat.st_mtime_ns, stat.st_size)
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        raise ManifestError(f"{record.label}: label map holds non-integer values")
    allowed = {0, *organ_set.labels}
    extra = sorted(int(v) for v in values if int(v) not in allowed)
    if extra:
        raise ManifestError(
            f"{record.label}: label ids {extra[:10]} are outside organ set {organ_set.name} "
            f"(allowed 0..{max(organ_set.labels)}); map them with a label map first"
        )
    if is_pet(record.view):
        lo_i, hi_i = _world_box(img.affine, img_shape)
        lo_l, hi_l = _world_box(lab.affine, lab_shape)
        if np.any(hi_i < lo_l) or np.any(hi_l < lo_i):
            raise ManifestError(
                f"{record.image}: PET field of view does not overlap its label {record.label} in world coordinates"
            )
        return
    # Compared as world grids: an image and its label stored in different axis orders or directions
    # (a DICOM series converted L,P,S and its segmentation stored L,A,S) are one grid when their
    # voxels coincide once both are re-oriented to RAS, as the evaluation loads them.
    img_shape, img_affine = ras_grid(img.affine, img_shape)
    lab_shape, lab_affine = ras_grid(lab.affine, lab_shape)
    if img_shape != lab_shape:
        raise ManifestError(
            f"{record.label}: label grid {lab_shape} does not match image {record.image} grid {img_shape}"
            " (both re-oriented to RAS)"
        )
    corners = np.array([[0, 0, 0], [s - 1 for s in img_shape]])
    gap = np.abs(nib.affines.apply_affine(img_affine, corners) - nib.affines.apply_affine(lab_affine, corners)).max()
    if gap > GRID_TOLERANCE_MM:
        raise ManifestError(
            f"{record.label}: label affine differs from image {record.image} by {gap:.3g} mm in world coordinates"
        )


def validate_manifest(
    manifest: Manifest, organ_set: OrganSet, *, raise_on_error: bool = True, pet_units: bool = False
) -> list[Problem]:
    """Check every record; collect all problems before failing.

    Args:
        manifest: the scans to check.
        organ_set: label ids allowed in the label maps.
        raise_on_error: raise one :class:`ManifestError` listing every problem (default), or return them.
        pet_units: a PET whose values look like Bq/ml raises :class:`PetUnitsError` at once (a run
            stops); off, it is not checked here (``check`` warns about it).

    Returns:
        The problems found (empty when every case is usable).

    Raises:
        PetUnitsError: with ``pet_units``, the first PET that does not look like SUV.
    """
    problems = []
    for record in manifest:
        try:
            check_record(record, organ_set, pet_units=pet_units)
        except PetUnitsError:
            raise
        except ManifestError as exc:
            bad = str(exc).split(": ", 1)
            problems.append(Problem(record.case_id, bad[0], bad[1] if len(bad) > 1 else str(exc)))
    if problems and raise_on_error:
        listing = "\n".join(f"  {p.case_id}: {p}" for p in problems)
        raise ManifestError(f"{len(problems)} unusable case(s) in {manifest.source or 'manifest'}:\n{listing}")
    return problems
