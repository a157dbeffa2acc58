"""The nnU-Net raw / Medical Segmentation Decathlon layout: ``dataset.json``, ``imagesTr``, ``labelsTr``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, Mapping

from umd_lightning.data.layouts.labels import LabelMapOption
from umd_lightning.data.layouts.records import DEFAULT_SESSION_NAMES, _finish, _session_view, _token
from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord
from umd_lightning.organs import VIEW_SESSION, OrganSet
from umd_lightning.paths import path_problem

#: Role of an nnU-Net channel: a view, the generic ``PET`` / ``anatomical`` resolved per case, or ``skip``.
ChannelRole = Literal["CT", "MRI", "PET", "PET_CT", "PET_MRI", "anatomical", "skip"]

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
    problem = path_problem(root, "folder", "nnU-Net dataset folder")
    if problem:
        raise ManifestError(f"{root}: {problem}")
    problem = path_problem(dj_path, noun="dataset.json")
    if problem:
        raise ManifestError(f"{dj_path}: {problem} (is {root} an nnU-Net raw dataset folder?)")
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
