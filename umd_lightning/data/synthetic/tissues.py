"""Tissue classes and their values per modality (CT HU, T1 MRI, FDG SUV) and how they are drawn."""

from __future__ import annotations

from typing import Sequence

import numpy as np


TISSUES: tuple[str, ...] = (
    "air", "fat", "muscle", "soft_tissue", "bone_cancellous", "bone_cortical", "disc", "lung",
    "brain_grey", "brain_white", "csf", "blood", "myocardium", "liver", "spleen", "kidney_cortex",
    "kidney_pelvis", "pancreas", "stomach_wall", "esophagus_wall", "colon_wall", "colon_wall_hot",
    "bowel_wall", "gas", "bowel_fluid", "feces", "urine",
)  # fmt: skip
T = {name: i for i, name in enumerate(TISSUES)}

#: Unenhanced CT (HU), drawn per subject.
CT_HU: dict[str, tuple[float, float]] = {
    "air": (-1000, -1000), "fat": (-120, -80), "muscle": (40, 55), "soft_tissue": (30, 50),
    "bone_cancellous": (200, 400), "bone_cortical": (700, 1500), "disc": (70, 100), "lung": (-900, -700),
    "brain_grey": (35, 45), "brain_white": (20, 30), "csf": (0, 15), "blood": (35, 50),
    "myocardium": (40, 55), "liver": (50, 65), "spleen": (40, 50), "kidney_cortex": (25, 40),
    "kidney_pelvis": (0, 20), "pancreas": (35, 50), "stomach_wall": (30, 50), "esophagus_wall": (30, 50),
    "colon_wall": (30, 50), "colon_wall_hot": (30, 50), "bowel_wall": (30, 50), "gas": (-1000, -950), "bowel_fluid": (0, 20),
    "feces": (-60, 20), "urine": (0, 20),
}  # fmt: skip
#: T1-weighted relative intensity (fat ~ 1), drawn per subject.
MRI_T1: dict[str, tuple[float, float]] = {
    "air": (0, 0), "fat": (0.92, 1.0), "muscle": (0.28, 0.36), "soft_tissue": (0.32, 0.40),
    "bone_cancellous": (0.60, 0.80), "bone_cortical": (0.02, 0.05), "disc": (0.25, 0.33), "lung": (0.02, 0.06),
    "brain_grey": (0.38, 0.44), "brain_white": (0.50, 0.58), "csf": (0.06, 0.12), "blood": (0.12, 0.25),
    "myocardium": (0.30, 0.38), "liver": (0.58, 0.68), "spleen": (0.40, 0.48), "kidney_cortex": (0.45, 0.52),
    "kidney_pelvis": (0.06, 0.12), "pancreas": (0.52, 0.60), "stomach_wall": (0.36, 0.44),
    "esophagus_wall": (0.36, 0.44), "colon_wall": (0.36, 0.44), "colon_wall_hot": (0.36, 0.44), "bowel_wall": (0.34, 0.42),
    "gas": (0, 0.02), "bowel_fluid": (0.06, 0.12), "feces": (0.20, 0.40), "urine": (0.05, 0.10),
}  # fmt: skip
#: FDG SUVmean, drawn per subject then jittered per session; ``log`` ranges are drawn log-uniform.
PET_SUV: dict[str, tuple[float, float]] = {
    "air": (0, 0), "fat": (0.2, 0.5), "muscle": (0.6, 1.0), "soft_tissue": (0.6, 1.0),
    "bone_cancellous": (1.2, 2.0), "bone_cortical": (0.3, 0.6), "disc": (0.3, 0.6), "lung": (0.4, 0.8),
    "brain_grey": (6.0, 10.0), "brain_white": (2.5, 4.5), "csf": (0.1, 0.3), "blood": (1.5, 2.2),
    "myocardium": (1.5, 10.0), "liver": (1.8, 2.8), "spleen": (1.5, 2.2), "kidney_cortex": (2.0, 4.0),
    "kidney_pelvis": (4.0, 12.0), "pancreas": (1.2, 2.0), "stomach_wall": (1.2, 2.5),
    "esophagus_wall": (1.2, 2.5), "colon_wall": (1.0, 1.6), "colon_wall_hot": (2.0, 3.0), "bowel_wall": (1.0, 2.0),
    "gas": (0, 0), "bowel_fluid": (0.2, 0.5), "feces": (0.3, 0.8), "urine": (5.0, 50.0),
}  # fmt: skip
_PET_LOG_UNIFORM = ("myocardium", "urine")
#: Tissues whose PET value is redrawn per session (fasting state, bladder filling), not jittered.
_PET_PER_SESSION = ("myocardium", "urine", "kidney_pelvis")


def _draw_values(rng: np.random.Generator, ranges: dict[str, tuple[float, float]], log: Sequence[str] = ()) -> np.ndarray:
    """One value per tissue, as a lookup table indexed by tissue id."""
    out = np.zeros(len(TISSUES), dtype=np.float64)
    for name in TISSUES:
        lo, hi = ranges[name]
        if name in log:
            out[T[name]] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            out[T[name]] = float(rng.uniform(lo, hi))
    return out
