"""Moving a volume onto the spacing a model expects, and its labels back onto the evaluation grid.

Both are one pass of :func:`umd_lightning.grids.resample` (separable, in slabs: no whole-volume
coordinate grid and no float copy of the source), onto the grid MONAI's ``Spacing`` would choose.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from umd_lightning.grids import resample, spacing_grid


def voxel_spacing(affine) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the array axes of a 4x4 affine."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(s) for s in np.linalg.norm(a[:3, :3], axis=0))


def needs_resampling(affine, target: Sequence[float] | None, rtol: float = 1e-3) -> bool:
    return target is not None and not np.allclose(voxel_spacing(affine), target, rtol=rtol)


def to_spacing(image: MetaTensor, target: Sequence[float]) -> MetaTensor:
    """image: (C, D, H, W) MetaTensor at any dtype -> float32 resampled to ``target`` mm (trilinear, the
    border value past the edge) on the grid and with the values of ``monai.transforms.Spacing``."""
    affine = np.asarray(image.affine, dtype=np.float64)
    dst_affine, dst_shape = spacing_grid(affine, image.shape[1:], target)
    out = resample(image, affine, dst_affine, dst_shape, mode="linear", padding="border")
    return MetaTensor(out, affine=torch.as_tensor(dst_affine, dtype=torch.float64))


def labels_to_grid(
    labels: torch.Tensor, src_affine, dst_affine, dst_shape: Sequence[int]
) -> torch.Tensor:
    """labels: (D, H, W) on ``src_affine``'s grid -> (``dst_shape``) on ``dst_affine``'s, nearest neighbour,
    in the labels' own dtype."""
    labels = labels.as_subclass(torch.Tensor) if isinstance(labels, MetaTensor) else labels
    return resample(labels[None], src_affine, dst_affine, dst_shape, mode="nearest")[0]
