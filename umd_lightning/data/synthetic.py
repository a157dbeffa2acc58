"""The built-in cohort: synthetic subjects, each scanned twice (a PET/CT and a PET/MRI session).

Anatomy lives in a body frame (mm, RAS: +x towards the subject's right, +y anterior, +z superior)
as analytic shapes (ellipsoids and tubes, combined by CSG) that can be sampled at any world point.
A scan samples it through its session's pose: a rigid transform plus a small smooth deformation.
Each structure is evaluated only inside its bounding box. Where two structures meet, a thin fat
band is left between them when either is an organ, so boundaries are visible on CT.

Physics follows ``PHYSICS.md``: CT in HU (unenhanced), T1-like MRI with a bias field and Rician
noise, FDG PET in SUV simulated on a grid twice as fine as the PET grid, blurred by a Gaussian PSF,
averaged down, with signal-dependent noise. Everything drawn is deterministic from
``(seed, subject index)``: a subject's files do not depend on how many subjects are generated.

Layout written by :func:`generate_cohort`::

    out/manifest.csv  (subject_id, session, view, image, label; paths relative to out/)
    out/cohort.json   (config, organ set, tissues)
    out/syn000/petct/{ct,pet,label}.nii.gz     RAS, CT int16 HU, PET float32 SUV, label uint8
    out/syn000/petmri/{mri,pet,label}.nii.gz   LPS, MRI float32 (a.u.)
    out/syn000/subject.json                    drawn parameters (poses, lesions, tissue values)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from umd_lightning.organs import SESSION_VIEWS, UMD13

#: Bump when the generated images change for the same config, so cached cohorts are regenerated.
GENERATOR_VERSION = 3
#: Written last into a cohort folder by :func:`ensure_cohort`; its absence means "incomplete".
COMPLETE_MARKER = "COMPLETE"
_STALE_TMP_S = 6 * 3600

_BIG = np.float32(1e4)
_F32 = np.float32

Orientation = Literal["RAS", "LPS"]


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


# --------------------------------------------------------------------------- tissues and values

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


# --------------------------------------------------------------------------- shapes (body frame, mm)

def rotation_matrix(deg_xyz: Sequence[float]) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles in degrees about x, y, z."""
    ax, ay, az = np.deg2rad(np.asarray(deg_xyz, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class Shape:
    """An analytic solid: approximately signed distance (mm, negative inside) and a bounding box."""

    lo: np.ndarray
    hi: np.ndarray

    def eval(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, region: Region | None = None) -> tuple[np.ndarray, dict]:
        """Distance at body-frame points (any broadcastable arrays) and auxiliary fields.

        ``region``, when the points are a block of a grid, lets shapes made of parts evaluate each
        part only where it can matter.
        """
        raise NotImplementedError


def eval_restricted(shape: Shape, x: np.ndarray, y: np.ndarray, z: np.ndarray, region: Region | None,
                    pad: float = 0.0) -> np.ndarray:  # fmt: skip
    """Distance of ``shape`` over a region, evaluated only inside the shape's padded box (far elsewhere)."""
    if region is None:
        return shape.eval(x, y, z)[0]
    rel = region.rel(shape.lo - pad, shape.hi + pad)
    if rel is None:
        return np.full(x.shape, _BIG, np.float32)
    if all(sl.start == 0 and sl.stop == n for sl, n in zip(rel, x.shape)):
        return shape.eval(x, y, z, region)[0]
    d = np.full(x.shape, _BIG, np.float32)
    d[rel] = shape.eval(x[rel], y[rel], z[rel], region.child(rel))[0]
    return d


class Ellipsoid(Shape):
    """Ellipsoid with centre, radii and an optional rotation (local -> body)."""

    def __init__(self, center: Sequence[float], radii: Sequence[float], rotation: np.ndarray | None = None):
        self.c = np.asarray(center, dtype=np.float64)
        self.r = np.asarray(radii, dtype=np.float64)
        self.rot = None if rotation is None else np.asarray(rotation, dtype=np.float64)
        ext = self.r if self.rot is None else np.sqrt(((self.rot * self.r[None, :]) ** 2).sum(1))
        self.lo, self.hi = self.c - ext, self.c + ext

    def eval(self, x, y, z, region=None):
        dx, dy, dz = x - _F32(self.c[0]), y - _F32(self.c[1]), z - _F32(self.c[2])
        if self.rot is not None:
            m = self.rot.astype(np.float32)
            dx, dy, dz = (m[0, 0] * dx + m[1, 0] * dy + m[2, 0] * dz, m[0, 1] * dx + m[1, 1] * dy + m[2, 1] * dz,
                          m[0, 2] * dx + m[1, 2] * dy + m[2, 2] * dz)  # fmt: skip
        r = self.r.astype(np.float32)
        qx, qy, qz = dx / r[0], dy / r[1], dz / r[2]
        k0 = np.sqrt(qx * qx + qy * qy + qz * qz)
        k1 = np.sqrt((qx / r[0]) ** 2 + (qy / r[1]) ** 2 + (qz / r[2]) ** 2)
        # Quilez's approximation: exact on the surface, a good distance estimate near it.
        return k0 * (k0 - 1) / np.maximum(k1, _F32(1e-6)), {}


class Tube(Shape):
    """A polyline with a radius at each point (linearly interpolated): vessels, bowel, spine."""

    def __init__(self, points: Sequence[Sequence[float]], radii: Sequence[float]):
        self.p = np.asarray(points, dtype=np.float64)
        self.r = np.asarray(radii, dtype=np.float64)
        if self.p.ndim != 2 or self.p.shape[1] != 3 or len(self.p) < 2 or len(self.r) != len(self.p):
            raise ValueError("Tube needs >= 2 points (N, 3) and N radii")
        rmax = self.r.max()
        self.lo, self.hi = self.p.min(0) - rmax, self.p.max(0) + rmax

    def eval(self, x, y, z, region=None):
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        d = np.full(shape, _BIG, dtype=np.float32)
        axis = np.full(shape, _BIG, dtype=np.float32)
        seg = np.full(shape, -1, dtype=np.int16)
        x, y, z = (np.broadcast_to(v, shape) for v in (x, y, z))
        for k in range(len(self.p) - 1):
            a, b, ra, rb = self.p[k], self.p[k + 1], self.r[k], self.r[k + 1]
            sl = ...
            if region is not None:
                rm = max(ra, rb)
                sl = region.rel(np.minimum(a, b) - rm, np.maximum(a, b) + rm)
                if sl is None:
                    continue
            xs, ys, zs = x[sl] - _F32(a[0]), y[sl] - _F32(a[1]), z[sl] - _F32(a[2])
            ab = (b - a).astype(np.float32)
            t = (xs * ab[0] + ys * ab[1] + zs * ab[2]) / _F32(max(float(ab @ ab), 1e-9))
            np.clip(t, 0, 1, out=t)
            px, py, pz = xs - t * ab[0], ys - t * ab[1], zs - t * ab[2]
            dist = np.sqrt(px * px + py * py + pz * pz)
            dk = dist - (_F32(ra) + t * _F32(rb - ra))
            m = dk < d[sl]
            np.copyto(d[sl], dk, where=m)
            np.copyto(axis[sl], dist, where=m)
            np.copyto(seg[sl], np.int16(k), where=m)
        return d, {"axis": axis, "seg": seg}


class Union(Shape):
    """Union of shapes (minimum distance); auxiliary fields are dropped."""

    def __init__(self, *parts: Shape):
        self.parts = parts
        self.lo = np.min([p.lo for p in parts], axis=0)
        self.hi = np.max([p.hi for p in parts], axis=0)

    def eval(self, x, y, z, region=None):
        d = None
        for part in self.parts:
            dp = eval_restricted(part, x, y, z, region)
            d = dp if d is None else np.minimum(d, dp)
        return d, {}


TissueFn = Callable[[np.ndarray, dict, np.ndarray, np.ndarray, np.ndarray], "np.ndarray | int"]


@dataclass
class Structure:
    """A named solid with a label id (0 for non-organs) and a tissue map inside it.

    ``subtract``: (shape, margin) pairs carved out with a margin (e.g. the diaphragm between lung
    and liver). ``clamp``: keep inside the trunk interior (within the muscle wall) by this margin;
    None keeps it inside the body outline only.
    """

    name: str
    label: int
    shape: Shape
    tissue: TissueFn | int
    subtract: tuple[tuple[Shape, float], ...] = ()
    clamp: float | None = 2.0

    def point_distance(self, p: np.ndarray) -> np.ndarray:
        """Distance at body-frame points ``(N, 3)``, with subtractions (no clamp)."""
        x, y, z = (np.asarray(p[:, i], dtype=np.float32) for i in range(3))
        d, _ = self.shape.eval(x, y, z)
        for other, margin in self.subtract:
            d = np.maximum(d, _F32(margin) - other.eval(x, y, z)[0])
        return d


# --------------------------------------------------------------------------- the subject


@dataclass
class Lesion:
    center: np.ndarray  # body frame, mm
    diameter_mm: float
    suv: float
    host: str


@dataclass
class Subject:
    """Everything drawn once per subject (body-frame anatomy and tissue values)."""

    index: int
    body_scale: np.ndarray
    fat_mm: float
    muscle_mm: float
    profile: np.ndarray  # (K, 4): z, half-width x, half-width y, centre y
    head: Ellipsoid
    head_layers: tuple[float, float]  # scalp, skull (mm)
    shapes: dict[str, Shape]
    extra: dict[str, object]
    ct_hu: np.ndarray
    mri_t1: np.ndarray
    pet_suv: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def profile_table(self) -> tuple[float, np.ndarray]:
        """The body outline at 1 mm steps in z: ``(z0, (N, 5) float32)``.

        Columns: 1 / half-width x, 1 / half-width y, centre y, fat depth, fat + muscle depth.
        """
        p = self.profile[::-1]
        z = np.arange(np.floor(p[0, 0]), np.ceil(p[-1, 0]) + 1) + 0.5
        a, b, yc = (np.interp(z, p[:, 0], p[:, i]) for i in (1, 2, 3))
        # Thinner fat and muscle around the neck.
        f = np.clip(np.minimum(a, b) / 110, 0.4, 1.0)
        table = np.stack([1 / a, 1 / b, yc, self.fat_mm * f, (self.fat_mm + self.muscle_mm) * f], axis=1)
        return float(z[0] - 0.5), table.astype(np.float32)


@dataclass
class Pose:
    """World = R @ body + t, after a smooth displacement ``u(world)`` (world mm -> mm)."""

    rotation: np.ndarray
    shift: np.ndarray
    modes: list[tuple[int, float, np.ndarray, np.ndarray]]  # (component, amplitude, k (3,), phase (3,))

    @property
    def max_displacement(self) -> float:
        per_comp = np.zeros(3)
        for comp, amp, _, _ in self.modes:
            per_comp[comp] += abs(amp)
        return float(np.linalg.norm(per_comp))

    def to_world(self, p: np.ndarray) -> np.ndarray:
        """Body -> world for points ``(N, 3)``, ignoring the (few-mm) deformation."""
        return p @ self.rotation.T + self.shift


@dataclass
class Session:
    name: str
    pose: Pose
    bladder_fill: float
    stomach_gas_mm: float
    colon_content: np.ndarray  # tissue id per colon segment (lumen)
    colon_wall: np.ndarray  # tissue id per colon segment (wall)
    pet_suv: np.ndarray
    pet_noise: float
    mri_bias: float
    mri_noise: float
    ct_noise_hu: float


#: Body outline in the reference body frame: z, half-width x, half-width y, centre y (mm).
_PROFILE = np.array([
    [240, 56, 58, -6], [200, 60, 62, -8], [180, 150, 100, -5], [160, 168, 110, 0], [60, 165, 115, 0],
    [-40, 158, 115, 0], [-130, 152, 112, 3], [-240, 168, 112, 0], [-330, 172, 108, -5], [-480, 160, 100, -5],
], dtype=np.float64)  # fmt: skip
_TRUNK_TOP = 235.0
_HEAD = ((0.0, 0.0, 325.0), (76.0, 92.0, 100.0))
_HEAD_TOP = 425.0

#: Shapes that draw a size/position jitter each (order fixed: it is the draw order).
_JITTERED = (
    "heart", "lung_right", "lung_left", "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach",
    "esophagus", "aorta", "colon", "urinary_bladder", "spine", "airway", "small_bowel",
)  # fmt: skip


def draw_subject(index: int, rng: np.random.Generator, lesion_range: tuple[int, int]) -> Subject:
    """Draw one subject's anatomy and tissue values from its own generator.

    Args:
        index: subject index (kept in the result; the draws depend only on ``rng``).
        rng: the subject's generator.
        lesion_range: inclusive range of the number of hot lesions.

    Returns:
        The subject: body-frame shapes (reference anatomy scaled by body size, each organ jittered
        in size by about +-11 % and in position by up to 7 mm), tissue values per modality, lesions.
    """
    sx = rng.uniform(0.92, 1.08)
    bs = np.array([sx, sx * rng.uniform(0.95, 1.05), rng.uniform(0.96, 1.04)])
    fat_mm, muscle_mm = rng.uniform(10, 26), rng.uniform(8, 14)
    head_scale = rng.uniform(0.95, 1.05)
    jit: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in _JITTERED:
        size = (1 + rng.uniform(-0.11, 0.11)) * (1 + rng.uniform(-0.04, 0.04, 3))
        jit[name] = (size, rng.uniform(-7, 7, 3))
    point_jitter = rng.uniform(-3, 3, (64, 3))

    def ell(name: str, c, r, rot=None, key: str | None = None) -> Ellipsoid:
        size, shift = jit[key or name]
        return Ellipsoid(np.asarray(c) * bs + shift, np.asarray(r) * bs * size,
                         None if rot is None else rotation_matrix(rot))  # fmt: skip

    def tube(name: str, pts, radii, key: str | None = None, wobble: bool = True) -> Tube:
        size, shift = jit[key or name]
        pts = np.asarray(pts, dtype=np.float64) * bs + shift
        if wobble:
            pts = pts + point_jitter[: len(pts)]
        return Tube(pts, np.asarray(radii, dtype=np.float64) * size.mean())

    def mirror(points, sign):
        return [(sign * x, y, z) for x, y, z in points]

    s: dict[str, Shape] = {}
    hc = np.asarray(_HEAD[0]) * bs
    hr = np.asarray(_HEAD[1]) * head_scale
    head = Ellipsoid(hc, hr)
    scalp, skull = rng.uniform(4, 7), rng.uniform(6, 8)
    s["brain"] = Ellipsoid(hc, hr - scalp - skull - 3.0)
    s["ventricles"] = Union(
        Ellipsoid(hc + np.array([9, -4, 8]) * head_scale, np.array([6, 24, 12]) * head_scale),
        Ellipsoid(hc + np.array([-9, -4, 8]) * head_scale, np.array([6, 24, 12]) * head_scale),
    )
    # Deep grey matter (basal ganglia, thalami) beside the ventricles.
    s["deep_grey"] = Union(
        Ellipsoid(hc + np.array([24, 0, -2]) * head_scale, np.array([11, 22, 13]) * head_scale),
        Ellipsoid(hc + np.array([-24, 0, -2]) * head_scale, np.array([11, 22, 13]) * head_scale),
    )
    s["heart"] = ell("heart", (-15, 35, 58), (55, 45, 51), rot=(0, 20, -30))
    s["lung_right"] = ell("lung_right", (78, -5, 68), (64, 88, 115))
    s["lung_left"] = ell("lung_left", (-80, -5, 72), (60, 88, 112))
    s["liver"] = Union(
        ell("liver", (60, 8, -42), (85, 82, 62)),
        ell("liver", (-15, 45, -28), (55, 32, 35), rot=(0, 0, 10)),
    )
    s["spleen"] = ell("spleen", (-88, -28, -22), (28, 45, 50), rot=(0, 0, 25))
    kr = ell("kidney_right", (75, -45, -120), (28, 24, 55), rot=(0, -10, 0))
    kl = ell("kidney_left", (-75, -45, -105), (28, 24, 55), rot=(0, 10, 0))
    s["kidney_right"], s["kidney_left"] = kr, kl
    s["pelvis_right"] = Ellipsoid(kr.c + np.array([-12, 6, 0]), np.array([9, 9, 24]) * kr.r[2] / 55)
    s["pelvis_left"] = Ellipsoid(kl.c + np.array([12, 6, 0]), np.array([9, 9, 24]) * kl.r[2] / 55)
    s["pancreas"] = tube("pancreas", [(30, 5, -122), (5, 14, -112), (-35, 6, -102), (-68, -8, -90)], [15, 11, 10, 9])
    s["stomach"] = Union(
        ell("stomach", (-55, 22, -35), (44, 38, 50), rot=(0, 15, 20)),
        tube("stomach", [(-40, 42, -75), (-12, 50, -88), (10, 42, -92)], [17, 15, 13], wobble=False),
    )
    s["esophagus"] = tube(
        "esophagus",
        [(3, -4, 212), (3, -8, 160), (6, -22, 110), (8, -24, 60), (6, -20, 20), (-8, -10, -10), (-30, 4, -25)],
        [9, 9, 9, 9, 9, 10, 11],
    )
    s["aorta"] = tube(
        "aorta",
        [(3, 36, 95), (5, 42, 135), (-5, 46, 158), (-26, 28, 166), (-34, 0, 158), (-28, -26, 140),
         (-24, -34, 100), (-22, -32, 40), (-20, -20, -40), (-15, -12, -150), (-10, -8, -190)],
        [14, 14, 13, 12, 12, 11, 11, 11, 10, 9, 9],
    )  # fmt: skip
    s["colon"] = tube(
        "colon",
        [(92, 15, -250), (92, 10, -165), (82, 40, -152), (35, 62, -172), (-20, 64, -172), (-72, 45, -138),
         (-96, 12, -122), (-96, 10, -205), (-80, 12, -262), (-35, 20, -272), (-12, -30, -305), (0, -58, -342),
         (0, -62, -400)],
        [25, 22, 21, 21, 21, 21, 21, 20, 20, 19, 19, 20, 20],
    )  # fmt: skip
    # Small bowel: unlabelled fluid-filled loops inside the colon frame.
    s["small_bowel"] = tube(
        "small_bowel",
        [(-45, 25, -192), (45, 30, -195), (45, 8, -212), (-45, 12, -216), (-45, 40, -232), (45, 45, -236),
         (40, 15, -252), (10, 18, -255)],
        [12] * 8,
    )  # fmt: skip
    s["urinary_bladder"] = ell("urinary_bladder", (0, 40, -330), (45, 38, 35))
    spine_pts = [(0, -26, 255), (0, -30, 205), (0, -40, 175), (0, -52, 140), (0, -56, 60), (0, -50, -30),
                 (0, -42, -130), (0, -46, -200), (0, -62, -250), (0, -80, -295)]  # fmt: skip
    spine_r = [12, 13, 15, 16, 17, 20, 22, 23, 24, 22]
    s["spine"] = tube("spine", spine_pts, spine_r, wobble=False)
    post = [(x, y - r - 13, z) for (x, y, z), r in zip(spine_pts[:-1], spine_r[:-1])]
    s["posterior"] = tube("spine", post, [10, 10, 11, 12, 12, 13, 13, 13, 13], wobble=False)
    s["trachea"] = tube("airway", [(0, 18, 215), (0, 16, 170), (0, 14, 125)], [9, 9, 9], wobble=False)
    s["bronchus_right"] = tube("airway", [(0, 14, 125), (25, 8, 108)], [6, 6], wobble=False)
    s["bronchus_left"] = tube("airway", [(0, 14, 125), (-28, 6, 102)], [6, 6], wobble=False)
    for side, sign in (("right", 1), ("left", -1)):
        s[f"paraspinal_{side}"] = Tube(
            np.array(mirror([(38, -84, 190), (38, -88, 100), (40, -86, 0), (42, -82, -120), (45, -88, -220)], sign)) * bs,
            [20, 24, 26, 28, 24],
        )
        s[f"psoas_{side}"] = Tube(
            np.array(mirror([(30, -40, -80), (40, -32, -160), (52, -24, -235), (70, -14, -310), (84, -5, -360)], sign)) * bs,
            [6, 14, 19, 17, 14],
        )
        s[f"iliac_{side}"] = Ellipsoid(np.array([sign * 112, -58, -258]) * bs, np.array([16, 45, 55]) * bs)
        s[f"femur_{side}"] = Union(
            Ellipsoid(np.array([sign * 88, 2, -372]) * bs, np.full(3, 24.0) * bs.mean()),
            Tube(np.array([(sign * 88, 2, -372), (sign * 118, 8, -420), (sign * 122, 8, -500)]) * bs, [18, 16, 15]),
        )
        s[f"pubis_{side}"] = Tube(np.array([(sign * 78, 25, -382), (sign * 8, 60, -390)]) * bs, [11, 10])
    s["sternum"] = Tube(np.array([(0, 98, 160), (0, 104, 40)]) * bs, [11, 10])

    ct_hu = _draw_values(rng, CT_HU)
    mri_t1 = _draw_values(rng, MRI_T1)
    pet_suv = _draw_values(rng, PET_SUV, log=_PET_LOG_UNIFORM)
    extra = {"myocardium_mm": float(rng.uniform(8, 12)), "grey_mm": float(rng.uniform(5, 7))}
    profile = _PROFILE.copy()
    profile[:, 0] *= bs[2]
    profile[:, 1] *= bs[0]
    profile[:, 2:] *= bs[1]
    subject = Subject(
        index=index, body_scale=bs, fat_mm=float(fat_mm), muscle_mm=float(muscle_mm), profile=profile,
        head=head, head_layers=(float(scalp), float(skull)), shapes=s, extra=extra, ct_hu=ct_hu,
        mri_t1=mri_t1, pet_suv=pet_suv,
    )  # fmt: skip
    subject.lesions = _draw_lesions(rng, subject, lesion_range)
    return subject


def _draw_lesions(rng: np.random.Generator, subject: Subject, lesion_range: tuple[int, int]) -> list[Lesion]:
    """Hot spheres in liver, lungs, spleen, bone or lymph nodes beside the aorta."""
    hosts = ("liver", "lung_right", "lung_left", "spine", "spleen", "node")
    structures = {st.name: st for st in _structures(subject, None)}
    lesions = []
    for _ in range(int(rng.integers(lesion_range[0], lesion_range[1] + 1))):
        host = str(rng.choice(hosts))
        diameter = float(rng.uniform(5, 30))
        suv = float(rng.uniform(4, 20))
        if host == "node":
            aorta = subject.shapes["aorta"]
            k = int(rng.integers(6, len(aorta.p) - 1))
            center = aorta.p[k] + np.array([rng.choice([-1, 1]) * (aorta.r[k] + 6 + diameter / 2), 0, 0])
        else:
            st = structures[host]
            lo, hi = st.shape.lo, st.shape.hi
            pts = rng.uniform(lo, hi, (256, 3))
            d = st.point_distance(pts)
            ok = np.flatnonzero(d < -diameter / 2 - 2)
            center = pts[ok[0]] if ok.size else pts[int(np.argmin(d))]
        lesions.append(Lesion(center=np.asarray(center, dtype=np.float64), diameter_mm=diameter, suv=suv, host=host))
    return lesions


def draw_session(name: str, rng: np.random.Generator, subject: Subject, deformation_mm: tuple[float, float]) -> Session:
    """Pose, deformation and the session-specific contents (bladder, bowel, uptake).

    Args:
        name: ``petct`` (pose near the scanner axes) or ``petmri`` (rotated 2-5 degrees, shifted 12-30 mm).
        rng: the session's generator.
        subject: the subject scanned.
        deformation_mm: range of the smooth deformation's amplitude.
    """
    if name == "petct":
        rot = rotation_matrix(rng.uniform(-2, 2, 3))
        shift = rng.uniform(-10, 10, 3)
    else:
        axis = rng.normal(size=3) * np.array([0.5, 0.5, 1.0])
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(2, 5))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
        direction = rng.normal(size=3)
        shift = direction / np.linalg.norm(direction) * rng.uniform(12, 30)
    amplitude = rng.uniform(*deformation_mm)
    modes = []
    for comp in range(3):
        for _ in range(2):
            modes.append((comp, float(amplitude / 2 * rng.uniform(0.5, 1.0)),
                          2 * np.pi / rng.uniform(250, 600, 3), rng.uniform(0, 2 * np.pi, 3)))  # fmt: skip
    n_colon = len(subject.shapes["colon"].p) - 1  # type: ignore[attr-defined]
    content = rng.choice([T["gas"], T["feces"], T["bowel_fluid"]], size=n_colon, p=[0.5, 0.3, 0.2])
    wall = np.where(rng.uniform(size=n_colon) < 0.3, T["colon_wall_hot"], T["colon_wall"])
    pet = subject.pet_suv * rng.uniform(0.9, 1.1, len(TISSUES))
    redraw = _draw_values(rng, PET_SUV, log=_PET_LOG_UNIFORM)
    for tissue in _PET_PER_SESSION:
        pet[T[tissue]] = redraw[T[tissue]]
    return Session(
        name=name, pose=Pose(rot, shift, modes), bladder_fill=float(rng.uniform(0.6, 1.5)),
        stomach_gas_mm=float(rng.uniform(0, 35)), colon_content=content.astype(np.uint8),
        colon_wall=wall.astype(np.uint8), pet_suv=pet, pet_noise=float(rng.uniform(0.02, 0.06)),
        mri_bias=float(rng.uniform(0.2, 0.4)), mri_noise=float(rng.uniform(0.02, 0.04)),
        ct_noise_hu=float(rng.uniform(10, 25)),
    )  # fmt: skip


def _structures(subject: Subject, session: Session | None) -> list[Structure]:
    """The solids of one session (bladder filling and bowel contents vary by session)."""
    s = subject.shapes
    ids = UMD13.ids
    fill = 1.0 if session is None else session.bladder_fill
    b0 = s["urinary_bladder"]
    assert isinstance(b0, Ellipsoid)
    rfac = fill ** (1 / 3)
    # The bladder fills upwards from its base.
    bladder = Ellipsoid(b0.c + np.array([0, 0, b0.r[2] * (rfac - 1)]), b0.r * rfac)
    grey_mm, myo_mm = subject.extra["grey_mm"], subject.extra["myocardium_mm"]
    ventricles, deep_grey = s["ventricles"], s["deep_grey"]

    def brain(d, aux, x, y, z):
        t = np.where(d > -grey_mm, T["brain_grey"], T["brain_white"]).astype(np.uint8)
        t[deep_grey.eval(x, y, z)[0] < 0] = T["brain_grey"]
        t[ventricles.eval(x, y, z)[0] < 0] = T["csf"]
        return t

    def heart(d, aux, x, y, z):
        return np.where(d > -myo_mm, T["myocardium"], T["blood"])

    def kidney(pelvis: Shape) -> TissueFn:
        return lambda d, aux, x, y, z: np.where(pelvis.eval(x, y, z)[0] < 0, T["kidney_pelvis"], T["kidney_cortex"])

    st_body = s["stomach"].parts[0]  # type: ignore[attr-defined]
    gas_y = st_body.c[1] + (20.0 if session is None else session.stomach_gas_mm)

    def stomach(d, aux, x, y, z):
        lumen = np.where(y > _F32(gas_y), T["gas"], T["bowel_fluid"])
        return np.where(d > -5, T["stomach_wall"], lumen)

    def esophagus(d, aux, x, y, z):
        return np.where(aux["axis"] < 2.5, T["gas"], T["esophagus_wall"])

    content = np.full(64, T["gas"], np.uint8) if session is None else session.colon_content
    wall = np.full(64, T["colon_wall"], np.uint8) if session is None else session.colon_wall

    def colon(d, aux, x, y, z):
        seg = np.maximum(aux["seg"], 0)
        return np.where(d > -4, wall[seg], content[seg])

    def small_bowel(d, aux, x, y, z):
        return np.where(d > -3, T["bowel_wall"], T["bowel_fluid"])

    def vertebra(d, aux, x, y, z):
        disc = (np.mod(z, _F32(27.0)) < 6) & (d < -1)
        return np.where(disc, T["disc"], np.where(d > -2, T["bone_cortical"], T["bone_cancellous"]))

    def posterior(d, aux, x, y, z):
        bone = np.where(d > -2, T["bone_cortical"], T["bone_cancellous"])
        return np.where(aux["axis"] < 6, T["csf"], bone)

    def bone(d, aux, x, y, z):
        return np.where(d > -3, T["bone_cortical"], T["bone_cancellous"])

    def airway(d, aux, x, y, z):
        return np.where(d > -2, T["soft_tissue"], T["gas"])

    lungs_minus = ((s["heart"], 6.0), (s["aorta"], 4.0), (s["esophagus"], 4.0), (s["spine"], 4.0),
                   (s["liver"], 8.0), (s["spleen"], 8.0), (s["stomach"], 8.0), (s["trachea"], 3.0))  # fmt: skip
    out = [
        Structure("brain", ids["brain"], s["brain"], brain, clamp=None),
        Structure("heart", ids["heart"], s["heart"], heart, clamp=2.0),
        Structure("lung_right", ids["lung"], s["lung_right"], T["lung"], lungs_minus + ((s["bronchus_right"], 3.0),), 0.0),
        Structure("lung_left", ids["lung"], s["lung_left"], T["lung"], lungs_minus + ((s["bronchus_left"], 3.0),), 0.0),
        Structure("liver", ids["liver"], s["liver"], T["liver"],
                  ((s["heart"], 8.0), (s["kidney_right"], 5.0), (s["esophagus"], 4.0)), 1.0),
        Structure("spleen", ids["spleen"], s["spleen"], T["spleen"], ((s["kidney_left"], 5.0),), 2.0),
        Structure("kidney_left", ids["kidney_left"], s["kidney_left"], kidney(s["pelvis_left"])),
        Structure("kidney_right", ids["kidney_right"], s["kidney_right"], kidney(s["pelvis_right"])),
        Structure("pancreas", ids["pancreas"], s["pancreas"], T["pancreas"]),
        Structure("stomach", ids["stomach"], s["stomach"], stomach,
                  ((s["liver"], 5.0), (s["spleen"], 5.0), (s["pancreas"], 5.0), (s["heart"], 8.0),
                   (s["kidney_left"], 5.0)), 2.0),
        Structure("esophagus", ids["esophagus"], s["esophagus"], esophagus, clamp=None),
        Structure("aorta", ids["aorta"], s["aorta"], T["blood"], clamp=None),
        Structure("colon", ids["colon"], s["colon"], colon, ((bladder, 4.0),), 1.0),
        Structure("urinary_bladder", ids["urinary_bladder"], bladder, T["urine"], clamp=2.0),
        Structure("spine", 0, s["spine"], vertebra, clamp=None),
        Structure("posterior", 0, s["posterior"], posterior, clamp=None),
        Structure("trachea", 0, s["trachea"], airway, clamp=None),
        Structure("bronchus_right", 0, s["bronchus_right"], airway, clamp=None),
        Structure("bronchus_left", 0, s["bronchus_left"], airway, clamp=None),
        Structure("sternum", 0, s["sternum"], bone, clamp=None),
        Structure("small_bowel", 0, s["small_bowel"], small_bowel, clamp=1.0),
    ]  # fmt: skip
    for side in ("right", "left"):
        out += [
            Structure(f"paraspinal_{side}", 0, s[f"paraspinal_{side}"], T["muscle"], clamp=None),
            Structure(f"psoas_{side}", 0, s[f"psoas_{side}"], T["muscle"], clamp=None),
            Structure(f"iliac_{side}", 0, s[f"iliac_{side}"], bone, clamp=None),
            Structure(f"femur_{side}", 0, s[f"femur_{side}"], bone, clamp=None),
            Structure(f"pubis_{side}", 0, s[f"pubis_{side}"], bone, clamp=None),
        ]
    return out


# --------------------------------------------------------------------------- sampling on a grid


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: ``affine`` is diagonal up to axis signs (RAS or LPS storage)."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    @staticmethod
    def centered(center: np.ndarray, fov_mm: Sequence[float], spacing: Sequence[float], orientation: Orientation) -> Grid:
        """A grid of ``round(fov / spacing)`` voxels centred on the world point ``center``."""
        spacing = np.asarray(spacing, dtype=np.float64)
        shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov_mm, spacing))
        signs = np.array([-1.0, -1.0, 1.0]) if orientation == "LPS" else np.ones(3)
        step = spacing * signs
        origin = np.asarray(center, dtype=np.float64) - step * (np.asarray(shape) - 1) / 2
        affine = np.eye(4)
        affine[:3, :3] = np.diag(step)
        affine[:3, 3] = origin
        return Grid(affine, shape)  # type: ignore[arg-type]

    def refined(self, factor: int) -> Grid:
        """The grid with ``factor`` sub-voxels per voxel and axis, covering the same box."""
        sub = np.eye(4)
        sub[:3, :3] /= factor
        sub[:3, 3] = -(factor - 1) / (2 * factor)
        return Grid(self.affine @ sub, tuple(n * factor for n in self.shape))  # type: ignore[arg-type]

    def block(self, box: Sequence[slice]) -> Grid:
        """The sub-grid of the voxels ``box`` (slices with steps of 1)."""
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.array([sl.start for sl in box], dtype=np.float64) + self.affine[:3, 3]
        return Grid(affine, tuple(sl.stop - sl.start for sl in box))  # type: ignore[arg-type]

    @property
    def step(self) -> np.ndarray:
        return np.diag(self.affine)[:3].copy()

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3].copy()


def _voxel_box(grid: Grid, pose: Pose, lo: np.ndarray, hi: np.ndarray, pad: float) -> tuple[slice, ...] | None:
    """Voxel slices of ``grid`` that can hold body points in ``[lo - pad, hi + pad]``; None if none."""
    lo, hi = np.asarray(lo) - pad, np.asarray(hi) + pad
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    idx = (pose.to_world(corners) - grid.origin) / grid.step
    i0 = np.maximum(np.floor(idx.min(0)).astype(int), 0)
    i1 = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, grid.shape)
    if np.any(i1 <= i0):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))


class _Sampler:
    """Body-frame coordinates of every voxel of a grid under a pose, and body-box -> voxel-box.

    The deformation moves each world axis by a function of the two other axes (a sum of products
    of cosines), so it is smooth, volume-preserving, and costs only two full-array passes per axis.
    """

    def __init__(self, grid: Grid, pose: Pose, pad_mm: float):
        self.grid, self.pose = grid, pose
        self.shape = grid.shape
        axes = [grid.origin[i] + grid.step[i] * np.arange(n) for i, n in enumerate(grid.shape)]
        others = {0: (1, 2), 1: (0, 2), 2: (0, 1)}
        u = {j: np.zeros((len(axes[others[j][0]]), len(axes[others[j][1]]))) for j in range(3)}
        for comp, amp, k, ph in pose.modes:
            o1, o2 = others[comp]
            u[comp] += amp * np.cos(k[o1] * axes[o1] + ph[o1])[:, None] * np.cos(k[o2] * axes[o2] + ph[o2])[None, :]
        a = [axes[i] - pose.shift[i] for i in range(3)]
        rt = pose.rotation.T
        self.b = []
        for i in range(3):
            yz = rt[i, 1] * a[1][:, None] + rt[i, 2] * a[2][None, :] + rt[i, 0] * u[0]
            xz = rt[i, 1] * u[1]
            xy = rt[i, 0] * a[0][:, None] + rt[i, 2] * u[2]
            bi = yz.astype(np.float32)[None, :, :] + xz.astype(np.float32)[:, None, :]
            bi += xy.astype(np.float32)[:, :, None]
            self.b.append(bi)
        self.pad = pad_mm + pose.max_displacement + float(np.linalg.norm(grid.step))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        return _voxel_box(self.grid, self.pose, lo, hi, self.pad)


class Region:
    """A block of a sampler's grid (absolute voxel slices) in which shapes are evaluated."""

    def __init__(self, smp: _Sampler, box: tuple[slice, ...]):
        self.smp, self.box = smp, box

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(c[self.box] for c in self.smp.b)  # type: ignore[return-value]

    def rel(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        """Slices of this block (relative) that can hold body points in ``[lo, hi]``; None if none."""
        child = self.smp.box(lo, hi)
        if child is None:
            return None
        out = []
        for c, p in zip(child, self.box):
            a, b = max(c.start, p.start) - p.start, min(c.stop, p.stop) - p.start
            if b <= a:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def child(self, rel: tuple[slice, ...]) -> Region:
        return Region(self.smp, tuple(slice(p.start + r.start, p.start + r.stop) for r, p in zip(rel, self.box)))


def _body_fields(subject: Subject, x: np.ndarray, y: np.ndarray, z: np.ndarray, region: Region | None = None):
    """Body outline: trunk distance, head distance, trunk-interior distance and the layer tissues."""
    z0, table = subject.profile_table
    i = np.clip((z - _F32(z0)).astype(np.int32), 0, len(table) - 1)
    inv_a, inv_b = table[i, 0], table[i, 1]
    qx = x * inv_a
    qy = y - table[i, 2]
    qy *= inv_b
    k0 = np.hypot(qx, qy)
    qx *= inv_a
    qy *= inv_b
    k1 = np.hypot(qx, qy)
    np.maximum(k1, _F32(1e-6), out=k1)
    d_trunk = k0 - 1
    d_trunk *= k0
    d_trunk /= k1
    np.maximum(d_trunk, z - _F32(_TRUNK_TOP * subject.body_scale[2]), out=d_trunk)
    fat = table[i, 3]
    d_int = d_trunk + table[i, 4]
    tissue = np.where(d_trunk > 0, np.uint8(T["air"]), np.uint8(T["fat"]))
    tissue[(d_trunk <= -fat) & (d_int > 0)] = T["muscle"]
    d_body = d_trunk
    sl = ... if region is None else region.rel(subject.head.lo, subject.head.hi)
    if sl is not None:
        d_head = subject.head.eval(x[sl], y[sl], z[sl])[0]
        scalp, skull = subject.head_layers
        t = tissue[sl]
        t[d_head <= 0] = T["soft_tissue"]
        t[d_head <= -scalp] = T["bone_cortical"]
        t[d_head <= -(scalp + skull)] = T["csf"]
        np.minimum(d_body[sl], d_head, out=d_body[sl])
    return d_body, d_int, tissue


def sample_anatomy(subject: Subject, session: Session, grid: Grid, gap_mm: float
                   ) -> tuple[np.ndarray, np.ndarray, _Sampler | None, tuple[slice, ...] | None]:  # fmt: skip
    """Label (UMD13 ids, uint8) and tissue ids (uint8) at every voxel centre of ``grid``.

    Only the block of the grid that can hold the body is sampled; the rest is air.

    Returns:
        ``(label, tissue, sampler, box)``: two arrays of ``grid.shape``, and the sampler of the body
        block (its body-frame coordinates) with the block's slices (None if the body misses the grid).
    """
    p = subject.profile
    lo = np.minimum([-p[:, 1].max(), (p[:, 3] - p[:, 2]).min(), p[:, 0].min()], subject.head.lo)
    hi = np.maximum([p[:, 1].max(), (p[:, 3] + p[:, 2]).max(), p[:, 0].max()], subject.head.hi)
    pad = session.pose.max_displacement + float(np.linalg.norm(grid.step)) + 1.0
    box = _voxel_box(grid, session.pose, lo, hi, pad)
    label = np.zeros(grid.shape, np.uint8)
    tissue = np.full(grid.shape, T["air"], np.uint8)
    if box is None:
        return label, tissue, None, None
    label[box], tissue[box], smp = _sample_block(subject, session, grid.block(box), gap_mm)
    return label, tissue, smp, box


def _sample_block(subject: Subject, session: Session, grid: Grid, gap_mm: float) -> tuple[np.ndarray, np.ndarray, _Sampler]:
    """Label and tissue on a grid, each structure evaluated in its bounding box only.

    A voxel belongs to the structure with the smallest distance when it is inside it and the
    runner-up is at least ``gap_mm`` farther (when either is an organ); otherwise it keeps the
    body's background tissue (fat inside the trunk).
    """
    structures = _structures(subject, session)
    smp = _Sampler(grid, session.pose, pad_mm=gap_mm + 2.0)
    bx, by, bz = smp.b
    whole = Region(smp, tuple(slice(0, n) for n in grid.shape))
    d_body, d_int, tissue = _body_fields(subject, bx, by, bz, whole)
    best = np.full(grid.shape, _BIG, np.float32)
    second = np.full(grid.shape, _BIG, np.float32)
    sid = np.full(grid.shape, -1, np.int16)
    sid2 = np.full(grid.shape, -1, np.int16)
    cache: list = []
    for k, st in enumerate(structures):
        box = smp.box(st.shape.lo, st.shape.hi)
        if box is None:
            cache.append(None)
            continue
        region = Region(smp, box)
        x, y, z = region.coords()
        d, aux = st.shape.eval(x, y, z, region)
        for other, margin in st.subtract:
            d = np.maximum(d, _F32(margin) - eval_restricted(other, x, y, z, region, margin))
        d = np.maximum(d, d_body[box] + 1) if st.clamp is None else np.maximum(d, d_int[box] + _F32(st.clamp))
        b, s2, i1, i2 = best[box], second[box], sid[box], sid2[box]
        m = d < b
        m2 = ~m & (d < s2)
        np.copyto(s2, b, where=m)
        np.copyto(i2, i1, where=m)
        np.copyto(s2, d, where=m2)
        np.copyto(i2, np.int16(k), where=m2)
        np.copyto(b, d, where=m)
        np.copyto(i1, np.int16(k), where=m)
        cache.append((box, d, aux))
    n = len(structures)
    labels = np.array([st.label for st in structures] + [0], dtype=np.uint8)
    organ = labels > 0
    # A fat band between two structures when either is an organ; none between bone and muscle.
    gap = np.where(organ[:, None] | organ[None, :], _F32(gap_mm), _F32(0)).astype(np.float32)
    inside = best < 0
    own = inside & ((second - best) > gap[sid, sid2])
    fid = np.where(own, sid, np.int16(n))
    label = labels[fid]
    for k, st in enumerate(structures):
        if cache[k] is None:
            continue
        box, d, aux = cache[k]
        mine = fid[box] == k
        if not mine.any():
            continue
        t = st.tissue if isinstance(st.tissue, int) else st.tissue(d, aux, bx[box], by[box], bz[box])
        np.copyto(tissue[box], np.asarray(t, dtype=np.uint8), where=mine)
    return label, tissue, smp


# --------------------------------------------------------------------------- the scans


def _ct_image(tissue: np.ndarray, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    hu = subject.ct_hu.astype(np.float32)[tissue]
    hu = ndimage.gaussian_filter(hu, 0.5, mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * _F32(session.ct_noise_hu)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _mri_image(tissue: np.ndarray, grid: Grid, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    t1 = subject.mri_t1.astype(np.float32)[tissue]
    t1 = ndimage.gaussian_filter(t1, 0.5, mode="nearest")
    # Smooth bias: strong along the body (coil sensitivity between stations), weak in-plane.
    axes = [grid.origin[i] + grid.step[i] * np.arange(n) for i, n in enumerate(grid.shape)]
    fz = np.cos(2 * np.pi * axes[2] / rng.uniform(1400, 2200) + rng.uniform(0, 2 * np.pi))
    fz = (fz - fz.mean()) / max(np.abs(fz - fz.mean()).max(), 1e-6)
    fx = np.cos(2 * np.pi * axes[0] / rng.uniform(900, 1400) + rng.uniform(0, 2 * np.pi))
    fy = np.cos(2 * np.pi * axes[1] / rng.uniform(700, 1100) + rng.uniform(0, 2 * np.pi))
    inplane = rng.uniform(0.04, 0.08)
    bias = (1 + session.mri_bias * fz[None, None, :]) * (1 + inplane * fx[:, None, None] * fy[None, :, None])
    t1 *= bias.astype(np.float32)
    sigma = _F32(session.mri_noise)
    re = t1 + sigma * rng.standard_normal(t1.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(t1.shape, dtype=np.float32)
    gain = _F32(rng.uniform(800, 1200))
    return (np.sqrt(re * re + im * im) * gain).astype(np.float32)


def _pet_image(subject: Subject, session: Session, grid: Grid, fwhm_mm: float, gap_mm: float,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Activity on a 2x finer grid, Gaussian PSF, 2x2x2 average down, signal-dependent noise."""
    fine = grid.refined(2)
    _, tissue, smp, body = sample_anatomy(subject, session, fine, gap_mm)
    act = session.pet_suv.astype(np.float32)[tissue]
    if smp is not None:
        block = act[body]
        bx, by, bz = smp.b
        for lesion in subject.lesions:
            r = lesion.diameter_mm / 2
            box = smp.box(lesion.center - r, lesion.center + r)
            if box is None:
                continue
            c = lesion.center.astype(np.float32)
            dist2 = (bx[box] - c[0]) ** 2 + (by[box] - c[1]) ** 2 + (bz[box] - c[2]) ** 2
            np.copyto(block[box], _F32(lesion.suv), where=dist2 <= _F32(r * r))
    if fwhm_mm > 0:
        sigma = fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / np.abs(fine.step)
        act = ndimage.gaussian_filter(act, sigma, mode="constant", truncate=3.0)
    n0, n1, n2 = grid.shape
    act = act.reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    noise = rng.standard_normal(act.shape, dtype=np.float32)
    # Reconstructed PET noise is spatially correlated; keep unit variance after smoothing.
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise /= max(float(noise.std()), 1e-6)
    sd = np.sqrt(_F32(session.pet_noise) * np.maximum(act, _F32(0.05)))
    return np.maximum(act + sd * noise, 0).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray, compress_level: int) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same config gives byte-identical files.
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=int(compress_level), mtime=0))


def subject_id(index: int) -> str:
    return f"syn{index:03d}"


def _scan_center(pose: Pose, subject: Subject, fov_z: float, rng: np.random.Generator) -> np.ndarray:
    """FOV centre in world mm: in-plane near the body axis, top just above the head."""
    head_top = pose.to_world(np.array([[0.0, 0.0, _HEAD_TOP * subject.body_scale[2]]]))[0]
    axis = pose.to_world(np.zeros((1, 3)))[0]
    return np.array([axis[0] + rng.uniform(-10, 10), axis[1] + rng.uniform(-10, 10),
                     head_top[2] + rng.uniform(8, 25) - fov_z / 2])  # fmt: skip


def generate_subject(out_dir: str | Path, config: CohortConfig, index: int) -> list[dict[str, str]]:
    """Draw and write subject ``index``; return its four manifest rows.

    Args:
        out_dir: cohort folder; the subject goes to ``out_dir/syn{index:03d}``.
        config: cohort config (seed, grids, physics).
        index: subject index.

    Returns:
        Manifest rows (CT, PET_CT, MRI, PET_MRI) with paths relative to ``out_dir``.

    Raises:
        RuntimeError: if a label map misses an organ (the geometry or the FOV is wrong).
    """
    out_dir = Path(out_dir)
    sid = subject_id(index)
    seeds = np.random.SeedSequence(entropy=config.seed, spawn_key=(index,)).spawn(5)
    anat_rng = np.random.default_rng(seeds[0])
    subject = draw_subject(index, anat_rng, tuple(config.lesions_per_subject))  # type: ignore[arg-type]
    sessions = {name: draw_session(name, np.random.default_rng(seeds[1 + i]), subject, config.deformation_mm)
                for i, name in enumerate(SESSION_VIEWS)}  # fmt: skip
    scale = config.scale
    rows: list[dict[str, str]] = []
    record: dict = {"subject_id": sid, "index": index, "body_scale": subject.body_scale.tolist(),
                    "fat_mm": subject.fat_mm, "muscle_mm": subject.muscle_mm,
                    "lesions": [{"center_body_mm": les.center.tolist(), "diameter_mm": les.diameter_mm, "suv": les.suv,
                                 "host": les.host} for les in subject.lesions],
                    "ct_hu": dict(zip(TISSUES, subject.ct_hu.tolist())),
                    "mri_t1": dict(zip(TISSUES, subject.mri_t1.tolist())), "sessions": {}}  # fmt: skip
    for i, (name, session) in enumerate(sessions.items()):
        rng = np.random.default_rng(seeds[3]) if name == "petct" else np.random.default_rng(seeds[4])
        anat_view, pet_view = SESSION_VIEWS[name]
        orientation: Orientation = "RAS" if name == "petct" else "LPS"
        spacing = config.ct_spacing if name == "petct" else config.mri_spacing
        fov = config.ct_fov_mm if name == "petct" else config.mri_fov_mm
        grid = Grid.centered(_scan_center(session.pose, subject, fov[2], rng), fov,
                             np.asarray(spacing) * scale, orientation)  # fmt: skip
        pet_grid = Grid.centered(_scan_center(session.pose, subject, config.pet_fov_mm[2], rng),
                                 config.pet_fov_mm, np.asarray(config.pet_spacing) * scale, orientation)  # fmt: skip
        label, tissue, _, _ = sample_anatomy(subject, session, grid, config.fat_gap_mm)
        missing = sorted(set(UMD13.labels) - set(np.unique(label).tolist()))
        if missing:
            names = ", ".join(UMD13.labels[m] for m in missing)
            raise RuntimeError(f"synthetic {sid}/{name}: label map misses {names} (config {config})")
        if name == "petct":
            image = _ct_image(tissue, subject, session, rng)
            image_name = "ct"
        else:
            image = _mri_image(tissue, grid, subject, session, rng)
            image_name = "mri"
        del tissue
        pet = _pet_image(subject, session, pet_grid, config.pet_fwhm_mm, config.fat_gap_mm, rng)
        folder = out_dir / sid / name
        _save(folder / f"{image_name}.nii.gz", image, grid.affine, config.compress_level)
        _save(folder / "label.nii.gz", label, grid.affine, config.compress_level)
        _save(folder / "pet.nii.gz", pet, pet_grid.affine, config.compress_level)
        rel = f"{sid}/{name}"
        rows.append({"subject_id": sid, "session": name, "view": anat_view, "image": f"{rel}/{image_name}.nii.gz",
                     "label": f"{rel}/label.nii.gz"})  # fmt: skip
        rows.append({"subject_id": sid, "session": name, "view": pet_view, "image": f"{rel}/pet.nii.gz",
                     "label": f"{rel}/label.nii.gz"})  # fmt: skip
        record["sessions"][name] = {
            "rotation": session.pose.rotation.tolist(), "shift_mm": session.pose.shift.tolist(),
            "deformation_max_mm": session.pose.max_displacement, "bladder_fill": session.bladder_fill,
            "pet_suv": dict(zip(TISSUES, session.pet_suv.tolist())), "ct_noise_hu": session.ct_noise_hu,
            "pet_noise": session.pet_noise, "mri_bias": session.mri_bias,
        }  # fmt: skip
    (out_dir / sid / "subject.json").write_text(json.dumps(record, indent=1))
    return rows


# --------------------------------------------------------------------------- cohort


def generate_cohort(out_dir: str | Path, config: CohortConfig = CohortConfig(), *, workers: int = 1) -> Path:
    """Write the cohort into ``out_dir``; return the manifest CSV path.

    Args:
        out_dir: destination folder (created; existing files of the same names are overwritten).
        config: what to generate.
        workers: processes, one subject at a time each (1 = in this process).

    Returns:
        ``out_dir/manifest.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(config.n_subjects)
    if workers > 1 and config.n_subjects > 1:
        # spawn: safe when the caller already holds threads (torch, Lightning).
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, config.n_subjects), mp_context=ctx) as pool:
            per_subject = list(pool.map(generate_subject, [out_dir] * len(indices), [config] * len(indices), indices))
    else:
        per_subject = [generate_subject(out_dir, config, i) for i in indices]
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "session", "view", "image", "label"])
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    meta = {
        "generator": "umd_lightning.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "organ_set": {"name": UMD13.name, "labels": {str(k): v for k, v in sorted(UMD13.labels.items())}},
        "orientation": {"petct": "RAS", "petmri": "LPS"},
        "units": {"CT": "HU", "PET_CT": "SUVbw", "MRI": "a.u.", "PET_MRI": "SUVbw"},
        "tissues": list(TISSUES),
    }
    (out_dir / "cohort.json").write_text(json.dumps(meta, indent=1))
    return manifest


def config_hash(config: CohortConfig) -> str:
    """Stable short hash of the config and the generator version (the cache folder name)."""
    payload = json.dumps({"version": GENERATOR_VERSION, "config": config.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensure_cohort(cache_root: str | Path, config: CohortConfig = CohortConfig(), *, workers: int = 1) -> Path:
    """Generate the cohort once into ``cache_root/<config_hash>/`` and reuse it when complete.

    Published atomically: the cohort is built in a temporary folder beside the target, its marker
    file written last, and the folder renamed into place. A rename never replaces a folder that holds
    files, so a concurrent run that finishes second keeps the first one's cohort and discards its own,
    and a complete cohort is never deleted, whoever is reading it. A target left incomplete (by a
    version that wrote in place) is moved aside before the new cohort takes its name. The cohort has
    the permissions of any folder the user creates (the umask's), not a temporary folder's 0700.

    Args:
        cache_root: folder holding one sub-folder per config.
        config: what to generate.
        workers: processes used when generating.

    Returns:
        The manifest path.
    """
    root = Path(cache_root)
    target = root / config_hash(config)
    manifest = target / "manifest.csv"
    if _complete(target):
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    # Temporary folders of killed runs (a live run finishes in minutes); never a published cohort.
    for stale in root.glob(f".{target.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        generate_cohort(tmp, config, workers=workers)
        (tmp / COMPLETE_MARKER).write_text(config_hash(config) + "\n")
        _publish(tmp, target)
    finally:
        if tmp.exists():  # gone after a successful rename; a losing run's copy is discarded
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "manifest.csv").is_file()


def _umask() -> int:
    """The process's umask, read without changing it where the platform says it (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path) -> None:
    """Rename the complete cohort ``tmp`` to ``target`` unless a complete one is there already."""
    for _ in range(3):
        if _complete(target):
            return
        try:
            os.rename(tmp, target)  # fails while target holds any file: a published cohort is never replaced
            return
        except OSError:
            if _complete(target):
                return  # a concurrent run published first
        # An incomplete target (written in place by an older version, or killed): move it aside.
        aside = target.with_name(f".{target.name}.tmp-incomplete-{os.getpid()}")
        try:
            os.rename(target, aside)
        except OSError:
            continue  # gone or replaced meanwhile: look again
        if _complete(aside):  # published between our check and the move: put it back, keep it
            try:
                os.rename(aside, target)
            except OSError:
                pass  # the target's name is taken by another complete cohort; this copy stays aside
            return
        shutil.rmtree(aside, ignore_errors=True)
    if not _complete(target):
        raise OSError(f"{target}: cannot publish the synthetic cohort (the folder keeps changing)")


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m umd_lightning.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-subjects", type=int, default=CohortConfig.n_subjects)
    parser.add_argument("--seed", type=int, default=CohortConfig.seed)
    parser.add_argument("--scale", type=float, default=CohortConfig.scale)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    config = CohortConfig(n_subjects=args.n_subjects, seed=args.seed, scale=args.scale)
    start = time.perf_counter()
    manifest = generate_cohort(args.out_dir, config, workers=args.workers)
    print(manifest)
    print(f"{config.n_subjects} subjects in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return manifest


if __name__ == "__main__":
    main()
