"""What a synthetic cohort is made of: :class:`CohortConfig`, every field part of the cache key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Bump when the generated images change for the same config, so cached cohorts are regenerated.
GENERATOR_VERSION = 3


@dataclass(frozen=True)
class CohortConfig:
    """What to generate. Every field is part of the cache key of :func:`ensure_cohort`.

    Args:
        n_subjects: number of subjects (``syn000`` ...).
        seed: cohort seed; subject ``i`` draws from ``SeedSequence(seed, spawn_key=(i,))``.
        scale: multiplies every voxel size (2 gives 1/8 of the voxels); anatomy is unchanged.
        ct_spacing: CT voxel size (mm), (x, y, z) = (LR, AP, SI).
        pet_spacing: PET voxel size (mm) of both sessions; its own grid and affine.
        mri_spacing: MRI voxel size (mm).
        pet_fwhm_mm: FWHM of the PET point-spread function (mm).
        lesions_per_subject: inclusive range of hot lesions per subject.
        ct_fov_mm: CT field of view (mm); the MRI uses ``mri_fov_mm``, the PETs ``pet_fov_mm``.
        mri_fov_mm: MRI field of view (mm).
        pet_fov_mm: PET field of view (mm).
        fat_gap_mm: fat band left between touching organs.
        deformation_mm: inclusive range of the per-session smooth deformation amplitude.
        compress_level: gzip level of the ``.nii.gz`` files (1 is fast).
    """

    n_subjects: int = 12
    seed: int = 0
    scale: float = 1.0
    ct_spacing: tuple[float, float, float] = (3.0, 3.0, 4.0)
    pet_spacing: tuple[float, float, float] = (6.0, 6.0, 6.0)
    mri_spacing: tuple[float, float, float] = (3.5, 3.5, 5.0)
    pet_fwhm_mm: float = 6.0
    lesions_per_subject: tuple[int, int] = (1, 4)
    ct_fov_mm: tuple[float, float, float] = (400.0, 270.0, 900.0)
    mri_fov_mm: tuple[float, float, float] = (400.0, 270.0, 900.0)
    pet_fov_mm: tuple[float, float, float] = (440.0, 300.0, 920.0)
    fat_gap_mm: float = 4.0
    deformation_mm: tuple[float, float] = (2.0, 5.0)
    compress_level: int = 1

    def __post_init__(self) -> None:
        # Normalise types (lists from YAML, ints for floats) so equal configs hash equally.
        for name, kind in (("n_subjects", int), ("seed", int), ("scale", float), ("pet_fwhm_mm", float),
                           ("fat_gap_mm", float), ("compress_level", int)):  # fmt: skip
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name in ("ct_spacing", "pet_spacing", "mri_spacing", "ct_fov_mm", "mri_fov_mm", "pet_fov_mm",
                     "deformation_mm"):  # fmt: skip
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "lesions_per_subject", tuple(int(v) for v in self.lesions_per_subject))
        if self.n_subjects < 1:
            raise ValueError(f"CohortConfig: n_subjects must be >= 1, got {self.n_subjects}")
        if not self.scale > 0:
            raise ValueError(f"CohortConfig: scale must be > 0, got {self.scale}")
        for name in ("ct_spacing", "pet_spacing", "mri_spacing", "ct_fov_mm", "mri_fov_mm", "pet_fov_mm"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or min(value) <= 0:
                raise ValueError(f"CohortConfig: {name} must be three positive numbers, got {value}")
        lo, hi = self.lesions_per_subject
        if not 0 <= lo <= hi:
            raise ValueError(f"CohortConfig: lesions_per_subject must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if self.pet_fwhm_mm < 0 or self.fat_gap_mm < 0:
            raise ValueError("CohortConfig: pet_fwhm_mm and fat_gap_mm must be >= 0")

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
