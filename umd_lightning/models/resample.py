"""Moving a volume onto the spacing a model expects, and its labels back onto the evaluation grid."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing, SpatialResample


def voxel_spacing(affine) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the array axes of a 4x4 affine."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(s) for s in np.linalg.norm(a[:3, :3], axis=0))


def needs_resampling(affine, target: Sequence[float] | None, rtol: float = 1e-3) -> bool:
    return target is not None and not np.allclose(voxel_spacing(affine), target, rtol=rtol)


def to_spacing(image: MetaTensor, target: Sequence[float]) -> MetaTensor:
    """image: (C, D, H, W) MetaTensor -> resampled to ``target`` mm (bilinear), same world extent."""
    return Spacing(pixdim=tuple(float(t) for t in target), mode="bilinear")(image)


def labels_to_grid(
    labels: torch.Tensor, src_affine, dst_affine, dst_shape: Sequence[int]
) -> torch.Tensor:
    """labels: (D, H, W) on ``src_affine``'s grid -> (``dst_shape``) on ``dst_affine``'s, nearest neighbour."""
    dtype = labels.dtype
    src = MetaTensor(labels[None].float(), affine=torch.as_tensor(np.asarray(src_affine), dtype=torch.float64))
    out = SpatialResample(mode="nearest", padding_mode="zeros")(
        src, dst_affine=torch.as_tensor(np.asarray(dst_affine), dtype=torch.float64), spatial_size=tuple(dst_shape)
    )
    return torch.as_tensor(out[0]).round().to(dtype)
