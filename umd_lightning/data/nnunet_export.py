"""A run's k-shot training subjects as an nnU-Net v2 raw dataset, so nnU-Net trains on exactly our subjects.

:func:`export_nnunet` writes, for the training views of a split (the ``splits.json`` a run folder holds,
with its ``train_subjects_per_view``), one nnU-Net raw dataset per training view, or (``multichannel``)
one dataset per session whose anatomical scan and PET are two channels of one case, as AutoPET models
take them::

    <out>/Dataset901_UMD_CT_k10/
        dataset.json          channel_names {"0": "CT"} (or {"0": "CT", "1": "PET"}), labels = organ set ids
        imagesTr/<subject>_<session>_0000.nii.gz   (_0001: the PET of a multi-channel case)
        labelsTr/<subject>_<session>.nii.gz
        splits_final.json     one fold: train = the k-shot subjects; val = see below

Every image is written on its label's grid, in the label file's voxel order (nnU-Net needs image and label
on one grid): an anatomical scan already on it is copied as it is; a PET is resampled onto it as the
evaluation pipeline does (:class:`~umd_lightning.data.transforms.ResampleToLabeld`: trilinear, zero
outside), in SUV. Labels are copied: they are on the organ set's ids already (the layouts convert them).

nnU-Net needs a validation set: by default (``val="auto"``) the run's own val subjects of that view when
the split has any (their cases are written too, so nnU-Net's planning sees them), otherwise the training
cases themselves, as nnU-Net's own ``fold all`` does (the validation then only feeds its progress log);
nothing is held out of training either way.

Case ids carry the session (``syn000_petct``): read the dataset back with the nnunet layout option
``case_pattern: (?P<subject>.+)_(?P<session>petct|petmri)`` (:data:`CASE_PATTERN`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import nibabel as nib
import numpy as np

from umd_lightning.data.layouts import save_nifti_atomic
from umd_lightning.data.manifest import Manifest, ScanRecord
from umd_lightning.organs import SESSION_VIEWS, VIEW_SESSION, VIEWS, OrganSet, get_organ_set

#: ``case_pattern`` of the nnunet layout that reads an export back (case ids are ``<subject>_<session>``).
CASE_PATTERN = r"(?P<subject>.+)_(?P<session>petct|petmri)"
#: nnU-Net channel names: ``CT`` selects nnU-Net's CT normalisation, the others its z-score.
CHANNEL_NAMES = {"CT": "CT", "MRI": "MRI", "PET_CT": "PET", "PET_MRI": "PET"}
FILE_ENDING = ".nii.gz"

ValPolicy = Literal["auto", "run", "train"]


class NnUNetExportError(ValueError):
    """The export is impossible (no training subjects, missing files, an output that exists); one line."""


@dataclass
class ExportedDataset:
    """One nnU-Net raw dataset written by :func:`export_nnunet`."""

    folder: Path
    views: tuple[str, ...]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    val_source: str = ""

    @property
    def dataset_id(self) -> int:
        return int(self.folder.name[len("Dataset") : len("Dataset") + 3])


def _same_grid(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol: float = 1e-3) -> bool:
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol)


def _copy_nifti(src: Path, dst: Path) -> Path:
    """``src`` as ``dst`` (``.nii.gz``): the bytes when already gzipped NIfTI, else re-saved as is."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(FILE_ENDING):
        shutil.copyfile(src, dst)
    else:
        img = nib.load(str(src))
        save_nifti_atomic(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), dst)
    return dst


def image_on_label_grid(image: str | Path, label: str | Path) -> nib.Nifti1Image:
    """``image`` resampled onto ``label``'s grid as the evaluation pipeline does, float32 with the label's affine.

    The same :class:`~umd_lightning.data.transforms.ResampleToLabeld` (``grids.resample``, trilinear in world
    coordinates, zeros outside) that evaluation applies, so the written file is what a test run feeds a model,
    and evaluation's resampling of it is a no-op.
    """
    from monai.transforms import LoadImaged

    from umd_lightning.data.transforms import ResampleToLabeld

    load = LoadImaged(keys=["image", "label"], reader="NibabelReader", ensure_channel_first=True, image_only=True)
    d = ResampleToLabeld(keys="image", key_dst="label")(load({"image": str(image), "label": str(label)}))
    ref = nib.load(str(label))
    data = np.asarray(d["image"][0].detach().cpu().numpy(), dtype=np.float32)
    header = ref.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(data, ref.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def write_on_label_grid(image: Path, label: Path, dst: Path) -> Path:
    """Write ``image`` as ``dst`` on ``label``'s grid: copied when it is already, resampled otherwise."""
    if _same_grid(nib.load(str(image)), nib.load(str(label))):
        return _copy_nifti(image, dst)
    save_nifti_atomic(image_on_label_grid(image, label), dst)
    return dst


def nnunet_labels(organ_set: OrganSet) -> dict[str, int]:
    """dataset.json ``labels``: background and the organ set's names with their ids (consecutive, as nnU-Net needs)."""
    ids = sorted(organ_set.labels)
    if ids != list(range(1, len(ids) + 1)):
        raise NnUNetExportError(f"organ set {organ_set.name!r}: nnU-Net needs consecutive label ids 1..N, got {ids}")
    return {"background": 0, **{organ_set.labels[i]: i for i in ids}}


def _groups(views: Sequence[str], multichannel: bool) -> list[tuple[str, ...]]:
    """The views of each dataset: one per view, or a session's anatomical scan and PET together."""
    views = [v for v in VIEWS if v in set(views)]
    if not multichannel:
        return [(v,) for v in views]
    out = []
    for session, pair in SESSION_VIEWS.items():
        have = tuple(v for v in pair if v in views)
        if have:
            out.append(have)
    return out


def _dataset_name(group: Sequence[str], k: int | None) -> str:
    tag = "_".join(group) if len(group) == 1 else f"{VIEW_SESSION[group[0]].upper()}"
    return f"UMD_{tag}" + (f"_k{k}" if k else "")


def export_nnunet(
    manifest: Manifest,
    splits: Mapping[str, Sequence[str]],
    train_subjects_per_view: Mapping[str, Sequence[str]],
    out: str | Path,
    *,
    dataset_id: int = 901,
    multichannel: bool = False,
    organ_set: str | OrganSet = "umd13",
    val: ValPolicy = "auto",
    views: Sequence[str] | None = None,
    overwrite: bool = False,
    source: str = "",
) -> list[ExportedDataset]:
    """Write the training subjects of a split as nnU-Net raw datasets under ``out`` (an ``nnUNet_raw`` folder).

    Args:
        manifest: the run's scans (its data config's manifest).
        splits: ``{"train", "val", "test": subjects}`` of the run's split file.
        train_subjects_per_view: the k-shot training subjects of each training view (split file).
        out: the ``nnUNet_raw`` folder the datasets go into.
        dataset_id: id of the first dataset; further datasets take the next ids.
        multichannel: one dataset per session with the anatomical scan and its PET as two channels
            (subjects that have both views in the k-shot draws), instead of one dataset per view.
        organ_set: the labels' organ set (dataset.json ``labels``).
        val: ``run`` the split's val subjects, ``train`` the training cases (nnU-Net's ``fold all``),
            ``auto`` the first when the split has val subjects with the view(s), else the second.
        views: the training views to export (default: every view of ``train_subjects_per_view``).
        overwrite: replace dataset folders that exist.
        source: where the split came from (stated in dataset.json).

    Returns:
        The datasets written.

    Raises:
        NnUNetExportError: no training subjects, a view without scans, a missing file, an existing
            folder (without ``overwrite``), a dataset id outside 1..999.
    """
    organs = get_organ_set(organ_set)
    labels = nnunet_labels(organs)
    out = Path(out)
    per_view = {str(v): sorted(s) for v, s in train_subjects_per_view.items()}
    chosen = list(views) if views is not None else list(per_view)
    unknown = [v for v in chosen if v not in VIEWS]
    if unknown:
        raise NnUNetExportError(f"unknown view(s) {unknown}; views are {', '.join(VIEWS)}")
    missing_views = [v for v in chosen if not per_view.get(v)]
    if missing_views:
        raise NnUNetExportError(
            f"{source or 'split'}: no training subjects for view(s) {missing_views} "
            f"(training views of the split: {sorted(per_view) or 'none'})"
        )
    by_key: dict[tuple[str, str], ScanRecord] = {(r.subject_id, r.view): r for r in manifest}
    groups = _groups(chosen, multichannel)
    if not 1 <= dataset_id or dataset_id + len(groups) - 1 > 999:
        raise NnUNetExportError(f"dataset id {dataset_id}: nnU-Net dataset ids are 1..999")
    written: list[ExportedDataset] = []
    for offset, group in enumerate(groups):
        session = VIEW_SESSION[group[0]]
        train = sorted(set.intersection(*(set(per_view[v]) for v in group)))
        if not train:
            raise NnUNetExportError(f"no subject is in the k-shot draws of every view of {list(group)}")
        run_val = sorted(s for s in splits.get("val", []) if all((s, v) in by_key for v in group))
        if val == "run" and not run_val:
            raise NnUNetExportError(f"{source or 'split'}: no val subjects with view(s) {list(group)} (use val=train)")
        use_run_val = val == "run" or (val == "auto" and bool(run_val))
        val_subjects = run_val if use_run_val else train
        k = len(train) if all(len(per_view[v]) == len(train) for v in group) else None
        name = f"Dataset{dataset_id + offset:03d}_{_dataset_name(group, k)}"
        folder = out / name
        if folder.exists():
            if not overwrite:
                raise NnUNetExportError(f"{folder} exists (pass overwrite to replace it)")
            shutil.rmtree(folder)
        # other dataset folders with this id confuse nnU-Net's id -> name lookup
        clash = [p.name for p in out.glob(f"Dataset{dataset_id + offset:03d}_*") if p.name != name] if out.is_dir() else []
        if clash:
            raise NnUNetExportError(f"{out}: dataset id {dataset_id + offset:03d} is taken by {clash[0]}; pick another id")
        cases: list[str] = []
        for subject in sorted(set(train) | set(val_subjects)):
            recs = [by_key.get((subject, v)) for v in group]
            if any(r is None for r in recs):
                lacking = [v for v, r in zip(group, recs) if r is None]
                raise NnUNetExportError(f"{manifest.source or 'manifest'}: subject {subject} has no {lacking[0]} scan")
            label = recs[0].label
            if label is None or not Path(label).is_file():
                raise NnUNetExportError(f"{recs[0].image}: no label file for subject {subject} ({label})")
            case = _case_id(subject, session)
            for ch, rec in enumerate(recs):
                if not Path(rec.image).is_file():
                    raise NnUNetExportError(f"{rec.image}: image file not found (subject {subject}, view {rec.view})")
                write_on_label_grid(Path(rec.image), Path(label), folder / "imagesTr" / f"{case}_{ch:04d}{FILE_ENDING}")
            _copy_nifti(Path(label), folder / "labelsTr" / f"{case}{FILE_ENDING}")
            cases.append(case)
        train_cases = [_case_id(s, session) for s in train]
        val_cases = [_case_id(s, session) for s in val_subjects]
        val_source = "run val subjects" if use_run_val else "training cases (nnU-Net's fold 'all' convention)"
        dataset_json = {
            "channel_names": {str(i): CHANNEL_NAMES[v] for i, v in enumerate(group)},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": FILE_ENDING,
            "name": name,
            "description": (
                f"umd_lightning export: k-shot training subjects of view(s) {', '.join(group)}"
                + (f" from {source}" if source else "")
            ),
            "umd_lightning": {
                "views": list(group),
                "session": session,
                "organ_set": organs.name,
                "train_subjects": train,
                "val_subjects": val_subjects,
                "val": val_source,
                "case_pattern": CASE_PATTERN,
                "source": source,
                "images": "on the label grid; PET resampled as evaluation does (trilinear), in SUV",
            },
        }
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        (folder / "splits_final.json").write_text(json.dumps([{"train": train_cases, "val": val_cases}], indent=2))
        written.append(ExportedDataset(folder, tuple(group), train, val_subjects, val_source))
    return written


def _case_id(subject: str, session: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", subject):
        raise NnUNetExportError(f"subject id {subject!r}: nnU-Net case ids need letters, digits, '.', '_' or '-'")
    return f"{subject}_{session}"


__all__ = [
    "CASE_PATTERN",
    "ExportedDataset",
    "NnUNetExportError",
    "export_nnunet",
    "image_on_label_grid",
    "nnunet_labels",
    "write_on_label_grid",
]
