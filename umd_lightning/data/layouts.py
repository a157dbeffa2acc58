"""Dataset folder layouts -> :class:`~umd_lightning.data.manifest.Manifest`.

Each reader is ``read_<layout>(root, **options) -> Manifest`` and is registered in :data:`LAYOUTS`;
:func:`load_layout` is the one entry point (the datamodule calls it with ``conf/data/<layout>.yaml``'s options).

Layouts:

- ``nnunet``: nnU-Net raw / Medical Segmentation Decathlon: ``dataset.json`` names the channels,
  ``imagesTr/<case>_0000.nii.gz`` (one file per channel) and ``labelsTr/<case>.nii.gz``.
- ``autopet``: AutoPET FDG-PET-CT: ``<patient>/<study>/{CT,CTres,PET,SUV,SEG}.nii.gz`` (PET/CT only).
- ``pattern``: file patterns with ``{subject}``, ``{session}`` and ``{view}`` fields, so a new dataset's layout
  is one config file.
- ``manifest``: a CSV/JSON manifest file (see :func:`~umd_lightning.data.manifest.read_manifest`).

Every record is one scan; a PET view's ``label`` is the label map of the anatomical scan of the same session
(the PET keeps its own grid; evaluation resamples PET onto the label grid). Only the views a dataset has are
produced.

Every reader takes the same label options: ``label_map`` (a label-map name such as ``total``, a YAML path,
``dataset`` for nnU-Net's own label names, or a mapping from anatomical view or session to one of those) maps
reference labels of another vocabulary onto the organ set **once**, into
``<cache_dir>/labels/<organ set>-<map>-<hash>/<subject>_<session>-<hash>.nii.gz`` written with the source's
affine; the manifest then points at the converted files. A cached file is reused until its source changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import nibabel as nib
import numpy as np

from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord, read_manifest
from umd_lightning.organs import (
    SESSION_VIEWS,
    VIEW_SESSION,
    VIEWS,
    LabelMap,
    OrganSet,
    get_organ_set,
    load_label_map,
)

#: ``label_map`` option: a map for every case, or one per anatomical view / session (``default`` for the rest).
LabelMapOption = str | Mapping[str, str | None] | None

#: Role of an nnU-Net channel: a view, the generic ``PET`` / ``anatomical`` resolved per case, or ``skip``.
ChannelRole = Literal["CT", "MRI", "PET", "PET_CT", "PET_MRI", "anatomical", "skip"]

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


# --------------------------------------------------------------------------- label conversion


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
    if not src.is_file():
        raise ManifestError(f"{src}: label file not found")
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


def save_nifti_atomic(img: nib.Nifti1Image, dst: Path) -> None:
    """Write ``img`` to ``dst`` through a temporary file beside it (``.nii.gz``, so nibabel compresses it)
    and a rename: a reader never sees half a volume."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".nii.gz", dir=dst.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


# --------------------------------------------------------------------------- nnU-Net / MSD

_CHANNEL_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|[^a-z])(pet|pt|suv|fdg)([^a-z]|$)", "PET"),
    (r"(^|[^a-z])ct", "CT"),
    (r"(^|[^a-z])(mr|mri|t1|t2|t1w|t2w|t1c|flair|dixon|vibe|adc|dwi)([^a-z]|$)", "MRI"),
    (r"^(anatomical|image|structural)$", "anatomical"),
)


def channel_role(name: str) -> str | None:
    """The role of an nnU-Net channel name: ``CT``, ``MRI``, ``PET``, ``anatomical`` or None if unknown.

    Example:
        >>> [channel_role(n) for n in ("CT", "CTres", "SUV", "T1", "noNorm", "PET")]
        ['CT', 'CT', 'PET', 'MRI', None, 'PET']
    """
    low = str(name).strip().lower()
    for pattern, role in _CHANNEL_RULES:
        if re.search(pattern, low):
            return role
    return None


def read_nnunet(
    root: str | Path,
    *,
    dataset_json: str = "dataset.json",
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    case_pattern: str | None = None,
    session_names: Mapping[str, str] | None = None,
    channel_views: Mapping[str | int, str] | None = None,
    include_test: bool = False,
    label_map: LabelMapOption = None,
    cache_dir: str | Path | None = None,
    organ_set: str | OrganSet = "umd13",
) -> Manifest:
    """Read an nnU-Net raw (v1/v2) or Medical Segmentation Decathlon folder.

    ``dataset.json`` names the channels (``channel_names``, or MSD's ``modality``): ``CT``/``CTres`` -> CT,
    ``MR``/``MRI``/``T1``/... -> MRI, ``PET``/``SUV`` -> the session's PET view, ``anatomical`` -> the session's
    structural view (the session then comes from ``case_pattern``). The session of a case is the one its
    anatomical channel implies, or the ``session`` group of ``case_pattern``.

    Args:
        root: the dataset folder (holding ``dataset.json``).
        dataset_json: its file name.
        images_dir: image folder (``<case>_<channel:04d><file_ending>``).
        labels_dir: label folder (``<case><file_ending>``).
        case_pattern: regex matched against the case id, with a ``subject`` group and optionally a ``session``
            group (e.g. ``(?P<subject>.+)_(?P<session>petct|petmri)``); default: the case id is the subject.
        session_names: extra session tokens, e.g. ``{"A": "petct"}``.
        channel_views: override roles by channel index, e.g. ``{0: CT, 1: PET, 2: skip}``.
        include_test: also read ``imagesTs``/``labelsTs`` (split ``test``).
        label_map: see module doc; ``dataset`` maps ``dataset.json`` label names equal to organ names.
        cache_dir: where converted labels go (default :func:`default_cache_dir`, never the data folder).
        organ_set: target organ set for ``label_map``.

    Returns:
        The manifest.

    Raises:
        ManifestError: missing ``dataset.json`` or folder, an unknown channel name, a case lacking a channel
            file, a case whose session cannot be told, or two files for one subject and view.
    """
    root = Path(root)
    dj_path = root / dataset_json
    if not dj_path.is_file():
        raise ManifestError(f"{dj_path}: dataset.json not found (is {root} an nnU-Net raw dataset folder?)")
    try:
        dj = json.loads(dj_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{dj_path}: unreadable dataset.json ({exc})") from exc
    channels = dj.get("channel_names") or dj.get("modality")
    if not channels:
        raise ManifestError(f"{dj_path}: no channel_names (nnU-Net v2) or modality (MSD) entry")
    ending = dj.get("file_ending", ".nii.gz")
    overrides = {int(k): str(v) for k, v in (channel_views or {}).items()}
    roles: dict[int, str] = {}
    for key, name in channels.items():
        idx = int(key)
        role = overrides.get(idx) or channel_role(name)
        if role is None:
            raise ManifestError(
                f"{dj_path}: channel {idx} {name!r} is not a known modality (CT, MR/MRI/T1/T2, PET/SUV); "
                "name its view with the option channel_views"
            )
        if role not in ("CT", "MRI", "PET", "PET_CT", "PET_MRI", "anatomical", "skip"):
            raise ManifestError(f"{dj_path}: channel_views[{idx}] = {role!r} is not a view, PET, anatomical or skip")
        roles[idx] = role
    dataset_labels = _dataset_labels(dj.get("labels"))
    sessions = {**DEFAULT_SESSION_NAMES, **{_token(k): v for k, v in (session_names or {}).items()}}
    pattern = re.compile(case_pattern or r"(?P<subject>.+)")
    if "subject" not in pattern.groupindex:
        raise ManifestError(f"case_pattern {pattern.pattern!r} has no (?P<subject>...) group")

    records: list[ScanRecord] = []
    parts = [(images_dir, labels_dir, None)]
    if include_test:
        parts.append(("imagesTs", "labelsTs", "test"))
    for img_dir, lab_dir, split in parts:
        folder = root / img_dir
        if not folder.is_dir():
            if split is None:
                raise ManifestError(f"{folder}: image folder not found")
            continue
        cases = _nnunet_cases(folder, ending, roles, dj, root)
        for case, files in sorted(cases.items()):
            where = f"{folder}/{case}"
            m = pattern.fullmatch(case)
            if m is None:
                raise ManifestError(f"{where}: case id {case!r} does not match case_pattern {pattern.pattern!r}")
            subject = m.group("subject")
            session = None
            if "session" in pattern.groupindex and m.group("session") is not None:
                session = sessions.get(_token(m.group("session")))
                if session is None:
                    raise ManifestError(
                        f"{where}: session {m.group('session')!r} is not one of {sorted(sessions)}; add it to session_names"
                    )
            implied = {VIEW_SESSION[r] for r in roles.values() if r in VIEW_SESSION}
            if session is None:
                if len(implied) != 1:
                    raise ManifestError(
                        f"{dj_path}: cannot tell the session of case {case!r} from the channels "
                        f"{dict(channels)}; give case_pattern a (?P<session>...) group"
                    )
                session = implied.pop()
            elif implied and implied != {session}:
                raise ManifestError(f"{where}: channels {dict(channels)} do not fit session {session}")
            label = root / lab_dir / f"{case}{ending}"
            if split == "test" and not (root / lab_dir).is_dir():
                label = None
            for idx, role in sorted(roles.items()):
                if role == "skip":
                    continue
                view = _session_view(session, role, where)
                records.append(ScanRecord(subject, session, view, files[idx], label, split))
    return _finish(records, str(root), root, label_map, cache_dir, organ_set, dataset_labels)


def _dataset_labels(labels: Mapping | None) -> dict[int, str] | None:
    if not labels:
        return None
    out: dict[int, str] = {}
    for k, v in labels.items():
        if str(k).lstrip("-").isdigit():  # MSD / v1: {"1": "liver"}
            out[int(k)] = str(v)
        elif isinstance(v, int) or str(v).isdigit():  # v2: {"liver": 1}
            out[int(v)] = str(k)
        # v2 region-based labels ({"tumor": [1, 2]}) have no single id and are skipped
    return out


def _nnunet_cases(folder: Path, ending: str, roles: Mapping[int, str], dj: Mapping, root: Path) -> dict[str, dict[int, Path]]:
    rx = re.compile(rf"(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}")
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = rx.fullmatch(p.name)
        if m:
            cases.setdefault(m.group("case"), {})[int(m.group("ch"))] = p
    if not cases and len(roles) == 1:
        # MSD as published: one 3D file per case without a channel suffix.
        only = next(iter(roles))
        for p in sorted(folder.iterdir()):
            if p.name.endswith(ending) and not p.name.startswith("."):
                cases[p.name[: -len(ending)]] = {only: p}
    for case, files in cases.items():
        missing = [i for i in roles if roles[i] != "skip" and i not in files]
        if missing:
            raise ManifestError(
                f"{folder / (case + '_%04d' % missing[0] + ending)}: channel file missing for case {case!r}"
            )
    return cases


# --------------------------------------------------------------------------- AutoPET


def read_autopet(
    root: str | Path,
    *,
    ct: Literal["CT", "CTres"] = "CT",
    pet: Literal["SUV", "PET"] = "SUV",
    label_file: str | None = None,
    study: Literal["first", "last"] = "first",
    label_map: LabelMapOption = None,
    cache_dir: str | Path | None = None,
    organ_set: str | OrganSet = "umd13",
) -> Manifest:
    """Read the AutoPET FDG-PET-CT NIfTI layout ``<patient>/<study>/{CT,CTres,PET,SUV,SEG}.nii.gz``.

    Only the PET/CT session exists: views ``CT`` and ``PET_CT``. AutoPET's ``SEG.nii.gz`` marks lesions, not
    organs, so it is not used as the organ reference; point ``label_file`` at an organ label map per study
    (e.g. a TotalSegmentator output, with ``label_map: total``), or leave it unset for unlabelled records.

    Args:
        root: the folder holding the patient folders.
        ct: the CT file stem: ``CT`` (CT grid; labels of the CT go with it) or ``CTres`` (CT resampled to PET).
        pet: the PET file stem: ``SUV`` (already SUVbw) or ``PET`` (as exported).
        label_file: organ label path per study, formatted with ``{patient}`` and ``{study}``; relative paths
            resolve against the study folder (``TOTAL.nii.gz``) .
        study: which study of a patient with several to use (subjects must be persons, never studies, so
            that no person is split across train and test).
        label_map, cache_dir, organ_set: see module doc.

    Raises:
        ManifestError: ``root`` missing or holding no study with the CT and PET files.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: AutoPET folder not found")
    if label_file is not None and Path(label_file).name.split(".")[0] == "SEG":
        warnings.warn(
            f"AutoPET label_file {label_file!r} is the lesion mask, not an organ label map", stacklevel=2
        )
    records: list[ScanRecord] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        studies = sorted(
            s for s in [patient_dir, *patient_dir.iterdir()] if s.is_dir() and (s / f"{ct}.nii.gz").is_file()
        )
        if not studies:
            continue
        chosen = studies[0] if study == "first" else studies[-1]
        patient, study_name = patient_dir.name, "" if chosen == patient_dir else chosen.name
        label = None
        if label_file is not None:
            rel = Path(label_file.format(patient=patient, study=study_name))
            label = rel if rel.is_absolute() else chosen / rel
        records.append(ScanRecord(patient, "petct", "CT", chosen / f"{ct}.nii.gz", label))
        if (chosen / f"{pet}.nii.gz").is_file():
            records.append(ScanRecord(patient, "petct", "PET_CT", chosen / f"{pet}.nii.gz", label))
    if not records:
        raise ManifestError(f"{root}: no <patient>/<study>/{ct}.nii.gz found (AutoPET layout)")
    return _finish(records, str(root), root, label_map, cache_dir, organ_set)


# --------------------------------------------------------------------------- pattern

_FIELD = re.compile(r"\{(\w+)\}")


def _token_regex(tokens: Sequence[str]) -> str:
    """Alternation of normalised tokens, case-insensitive, any single separator allowed between characters."""
    alts = sorted({t for t in tokens if t}, key=len, reverse=True)
    return "(?i:" + "|".join("[_ .-]?".join(re.escape(c) for c in t) for t in alts) + ")"


def _pattern_regex(pattern: str, choices: Mapping[str, Sequence[str]] | None = None) -> re.Pattern:
    """Compile a file pattern.

    ``{name}`` matches text within one path component (shortest first), or one of ``choices[name]`` (tokens as
    normalised by :func:`_token`, so ``PET_CT``, ``pet-ct`` and ``petct`` all match ``petct``); ``**/`` matches
    any folders and ``*`` any text within a component.
    """
    choices = choices or {}
    out, pos, seen = [], 0, set()
    for m in re.finditer(r"\{(\w+)\}|\*\*/|\*", pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        if m.group(1):
            name = m.group(1)
            body = _token_regex(choices[name]) if name in choices else "[^/]+?"
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{body})")
            seen.add(name)
        elif m.group(0) == "**/":
            out.append("(?:.*/)?")
        else:
            out.append("[^/]*")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


def read_pattern(
    root: str | Path,
    *,
    images: str | Mapping[str, str],
    labels: str | Mapping[str, str] | None = None,
    session_names: Mapping[str, str] | None = None,
    view_names: Mapping[str, str] | None = None,
    label_map: LabelMapOption = None,
    cache_dir: str | Path | None = None,
    organ_set: str | OrganSet = "umd13",
) -> Manifest:
    """Read any folder whose file paths follow patterns.

    Patterns are relative to ``root`` and use ``{subject}``, ``{session}``, ``{view}`` (and any other
    ``{name}``, matched within one folder or file name), ``*`` and ``**/``. For example::

        images: "{subject}/{session}/{view}.nii.gz"          # petct/ct.nii.gz, petmri/pet.nii.gz, ...
        labels: "{subject}/{session}/labels.nii.gz"
        # or, one pattern per view / per anatomical view or session:
        images: {CT: "ct/{subject}.nii.gz", PET_CT: "pet/{subject}_suv.nii.gz"}
        labels: {CT: "seg/{subject}.nii.gz"}

    ``{session}`` and ``{view}`` values are read case-insensitively through ``session_names`` /
    ``view_names`` (defaults: ``ct``/``petct`` -> petct, ``mr``/``mri``/``petmri`` -> petmri; view ``ct``, ``mr``,
    ``pet``...). A generic ``PET`` view becomes the PET view of the record's session. Label patterns are
    formatted with the fields matched in the anatomical image of the same session (``{subject}``, ``{session}``
    as written in the path, ...); a PET takes its session's label.

    Raises:
        ManifestError: a pattern lacks ``{subject}``; a matched value names no session or view; two files for
            one subject and view; nothing matched.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: folder not found")
    sessions = {**DEFAULT_SESSION_NAMES, **{_token(k): v for k, v in (session_names or {}).items()}}
    views_by_token = {**DEFAULT_VIEW_NAMES, **{_token(v): v for v in VIEWS}}
    views_by_token.update({_token(k): v for k, v in (view_names or {}).items()})
    image_patterns: list[tuple[str | None, str]] = (
        [(None, images)] if isinstance(images, str) else [(str(k), str(v)) for k, v in images.items()]
    )
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    records: list[tuple[ScanRecord, dict[str, str]]] = []
    for fixed_view, pattern in image_patterns:
        if fixed_view is not None and fixed_view not in (*VIEWS, "PET"):
            raise ManifestError(f"images: key {fixed_view!r} is not a view ({', '.join(VIEWS)})")
        rx = _pattern_regex(pattern, {"session": list(sessions), "view": list(views_by_token)})
        if "subject" not in rx.groupindex:
            raise ManifestError(f"images pattern {pattern!r} has no {{subject}} field")
        for rel in files:
            m = rx.fullmatch(rel)
            if m is None:
                continue
            where = str(root / rel)
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            session = None
            if "session" in groups:
                session = sessions.get(_token(groups["session"]))
                if session is None:
                    raise ManifestError(f"{where}: session {groups['session']!r} is unknown; add it to session_names")
            view = fixed_view
            if view is None and "view" in groups:
                view = views_by_token.get(_token(groups["view"]))
                if view is None:
                    raise ManifestError(f"{where}: view {groups['view']!r} is unknown; add it to view_names")
            if view is None:
                if session is None:
                    raise ManifestError(f"images pattern {pattern!r} needs a {{view}} or {{session}} field")
                view = SESSION_VIEWS[session][0]
            if view == "PET" and session is None:
                raise ManifestError(f"{where}: a PET view needs its session ({{session}} field or a PET_CT/PET_MRI key)")
            if session is None:
                session = VIEW_SESSION[view]
            view = _session_view(session, view, where)
            records.append((ScanRecord(groups["subject"], session, view, root / rel), groups))

    result = []
    anatomical_groups = {
        (r.subject_id, r.session): g for r, g in records if r.view == SESSION_VIEWS[r.session][0]
    }
    for rec, groups in records:
        label = None
        if labels is not None:
            pattern = _label_pattern(labels, rec.session)
            if pattern is not None:
                fields = {**groups, **anatomical_groups.get((rec.subject_id, rec.session), {})}
                fields.setdefault("session", rec.session)
                try:
                    label = root / pattern.format(**fields)
                except KeyError as exc:
                    raise ManifestError(f"labels pattern {pattern!r}: field {exc} is not in the image pattern") from exc
        result.append(ScanRecord(rec.subject_id, rec.session, rec.view, rec.image, label))
    return _finish(result, str(root), root, label_map, cache_dir, organ_set)


def _label_pattern(labels: str | Mapping[str, str], session: str) -> str | None:
    if isinstance(labels, str):
        return labels
    anatomical = SESSION_VIEWS[session][0]
    for key in (anatomical, session, "default"):
        if key in labels:
            return labels[key]
    return None


# --------------------------------------------------------------------------- manifest file


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


# --------------------------------------------------------------------------- registry

LAYOUTS: dict[str, Callable[..., Manifest]] = {
    "nnunet": read_nnunet,
    "msd": read_nnunet,
    "autopet": read_autopet,
    "pattern": read_pattern,
    "manifest": read_manifest_layout,
}


def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def load_layout(name: str, root: str | Path, **options: Any) -> Manifest:
    """Read the dataset at ``root`` with the layout ``name`` (a key of :data:`LAYOUTS`).

    Args:
        name: layout name.
        root: dataset folder (or manifest file).
        **options: the reader's keyword options (plain values or OmegaConf containers).

    Raises:
        ValueError: unknown layout name, or an option the reader does not take.
        ManifestError: the dataset cannot be read.
    """
    if name not in LAYOUTS:
        raise ValueError(f"unknown data layout {name!r}; known: {', '.join(sorted(LAYOUTS))}")
    if root is None or str(root) in ("", "???"):
        raise ManifestError(f"layout {name}: no root folder given (set data.root=DIR)")
    reader = LAYOUTS[name]
    opts = {k: _plain(v) for k, v in _plain(options).items()}
    try:
        return reader(Path(str(root)).expanduser(), **opts)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"layout {name}: {exc}") from exc
        missing = re.findall(r"'(\w+)'", str(exc)) if "missing" in str(exc) and "required" in str(exc) else []
        if missing:
            given = " ".join(f"--option {m}=..." for m in missing)
            raise ValueError(
                f"layout {name}: option {', '.join(missing)} is required ({given} for check, "
                + " ".join(f"data.source.options.{m}=..." for m in missing) + " for a run)"
            ) from None
        raise


def layout_datamodule(root: str | Path | None = None, source: Mapping[str, Any] | None = None, **kwargs: Any):
    """Hydra target of ``conf/data/<layout>.yaml``: a :class:`~umd_lightning.data.datamodule.UMDDataModule`
    over a dataset folder.

    The layout configs inherit the datamodule settings from ``synthetic.yaml``, so ``source`` may still carry
    the synthetic cohort's keys; only ``layout``, ``root`` and ``options`` are kept. ``root`` is the
    user-facing ``data.root`` that ``source.root`` interpolates; it is checked here so that a missing folder
    fails before anything else runs.

    Raises:
        ManifestError: ``root`` is unset or not an existing file or folder.
    """
    from umd_lightning.data.datamodule import UMDDataModule

    src = dict(_plain(source) or {})
    layout = src.get("layout")
    if layout is None or layout == "synthetic":
        raise ManifestError("layout_datamodule: source.layout must name a dataset layout, not the synthetic cohort")
    folder = src.get("root", root) if layout != "manifest" else src.get("path", root)
    if folder is None or str(folder) in ("", "???") or not Path(str(folder)).expanduser().exists():
        raise ManifestError(f"data.root: {folder} does not exist (set data.root=DIR for layout {layout})")
    keep = {"layout": layout, "root": str(folder), "options": _plain(src.get("options") or {})}
    if layout == "manifest":
        keep["path"] = str(folder)
    return UMDDataModule(source=keep, **kwargs)


__all__: Sequence[str] = (
    "LAYOUTS",
    "layout_datamodule",
    "LabelConverter",
    "channel_role",
    "load_layout",
    "map_label_file",
    "read_autopet",
    "read_manifest_layout",
    "read_nnunet",
    "read_pattern",
)
