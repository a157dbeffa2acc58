"""The AutoPET FDG-PET-CT layout: ``<patient>/<study>/{CT,CTres,PET,SUV,SEG}.nii.gz``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from umd_lightning.data.layouts.labels import LabelMapOption
from umd_lightning.data.layouts.records import _finish
from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord
from umd_lightning.organs import OrganSet
from umd_lightning.paths import path_problem


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
    problem = path_problem(root, "folder", "AutoPET folder")
    if problem:
        raise ManifestError(f"{root}: {problem}")
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
