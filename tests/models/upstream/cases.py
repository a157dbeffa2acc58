"""Synthetic files the fidelity tests run an upstream predictor and our adapter on."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def synthetic_case(root: Path, kind: str, tmp: Path) -> tuple[Path, Path, str]:
    """(image file, label file, view) of subject syn000 of a built-in cohort at ``root``.

    ``kind`` CT: the PET/CT session's CT as stored (RAS). Otherwise the PET/MRI session's PET written on
    its label grid (into ``tmp``), stored LPS like that session's files, so the axes are really mapped.
    """
    if kind == "CT":
        return root / "syn000" / "petct" / "ct.nii.gz", root / "syn000" / "petct" / "label.nii.gz", "CT"
    from monai.transforms import LoadImaged

    from umd_lightning.data.transforms import ResampleToLabeld

    label = root / "syn000" / "petmri" / "label.nii.gz"
    d = LoadImaged(keys=["image", "label"], reader="NibabelReader", ensure_channel_first=True, image_only=True)(
        {"image": str(root / "syn000" / "petmri" / "pet.nii.gz"), "label": str(label)}
    )
    pet = ResampleToLabeld(keys=["image"])(d)["image"][0].numpy().astype(np.float32)
    path = tmp / "pet.nii.gz"
    nib.save(nib.Nifti1Image(pet, nib.load(str(label)).affine), str(path))
    return path, label, "PET_MRI"
