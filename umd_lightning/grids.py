"""Resampling a volume from one world grid onto another in bounded memory: the one implementation the
data pipeline (a PET onto its label's grid) and the models (a volume onto a model's spacing, labels
back) share.

:func:`resample` gives what MONAI's ``SpatialResample(mode, padding_mode)`` gives (trilinear or
nearest, ``align_corners=False``, zeros or the border value outside the source) without its
whole-volume coordinate grid: MONAI builds (3 x output voxels) float32 coordinates and converts the
source to float32 first, about 5 GB for the labels of one clinical CT. Here:

- Axis-aligned grids (the source index along each axis depends on one output axis only: every
  re-oriented scan, any spacing, origin or flip) are resampled separably, one axis at a time, in
  slabs of the output. Trilinear interpolation is the product of three 1D linear interpolations,
  each dropping the neighbours outside the source (zeros) or clamping to it (border), so the values
  equal MONAI's up to float32 rounding; nearest neighbour rounds each axis' coordinate half to even,
  as ``grid_sample`` does. The source is read at its own dtype (int16 CT, uint8 labels); nearest
  keeps it.
- Other grids (oblique) go through MONAI itself, one output slab at a time.

Coordinates are computed in float64, MONAI's in float32: a voxel whose nearest-neighbour coordinate is
within float32 rounding of a half can land on the other neighbour, the only difference.

Like :mod:`umd_lightning.organs` this module depends on nothing else in the package.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

Mode = Literal["linear", "nearest"]
Padding = Literal["zeros", "border"]

#: Output voxels of one slab's largest temporary (about 32 MB of float32).
_SLAB_VOXELS = 8_000_000
#: An off-axis term that moves a coordinate by less than this (voxels) over the whole grid is rounding.
_AXIS_TOL = 1e-3


def _as_affine(affine) -> np.ndarray:
    a = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"resample: affines must be 4x4, got shape {a.shape}")
    return a


def index_transform(src_affine, dst_affine) -> np.ndarray:
    """The 4x4 map from output voxel indices to source voxel indices (``inv(src) @ dst``)."""
    return np.linalg.solve(_as_affine(src_affine), _as_affine(dst_affine))


def _axis_map(xform: np.ndarray, dst_shape: Sequence[int]) -> list[int] | None:
    """For each output axis the one source axis it drives, or None when the grids are oblique."""
    a = xform[:3, :3]
    src_of = []
    for j in range(3):
        i = int(np.argmax(np.abs(a[:, j])))
        src_of.append(i)
    if sorted(src_of) != [0, 1, 2]:
        return None
    for j in range(3):
        for i in range(3):
            if i != src_of[j] and abs(a[i, j]) * max(int(dst_shape[j]) - 1, 1) > _AXIS_TOL:
                return None
    return src_of


def _linear_taps(coord: np.ndarray, n: int, padding: Padding) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of the two neighbours of each coordinate: with ``zeros`` a neighbour outside
    weighs 0; with ``border`` the coordinate is clamped to the source first (grid_sample's rules)."""
    if padding == "border":
        coord = np.clip(coord, 0, n - 1)
    lo = np.floor(coord)
    w = coord - lo
    lo = lo.astype(np.int64)
    hi = lo + 1
    w_lo = np.where((lo >= 0) & (lo < n), 1.0 - w, 0.0).astype(np.float32)
    w_hi = np.where((hi >= 0) & (hi < n), w, 0.0).astype(np.float32)
    return np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1), w_lo, w_hi  # weights are zero where clipped


def _linear_axis(x: np.ndarray, axis: int, taps) -> np.ndarray:
    lo, hi, w_lo, w_hi = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    out = np.take(x, lo, axis=axis).astype(np.float32, copy=False)
    out *= w_lo.reshape(shape)
    high = np.take(x, hi, axis=axis).astype(np.float32, copy=False)
    high *= w_hi.reshape(shape)
    out += high
    return out


def _nearest_taps(coord: np.ndarray, n: int, padding: Padding) -> tuple[np.ndarray, np.ndarray]:
    index = np.rint(coord).astype(np.int64)  # half to even, as grid_sample's nearbyint
    outside = (index < 0) | (index >= n) if padding == "zeros" else np.zeros(len(index), dtype=bool)
    return np.clip(index, 0, n - 1), outside


def _nearest_axis(x: np.ndarray, axis: int, taps) -> np.ndarray:
    index, outside = taps
    out = np.take(x, index, axis=axis)
    if outside.any():
        shape = [1] * x.ndim
        shape[axis] = -1
        out *= ~outside.reshape(shape)  # zeros outside the source
    return out


def resample(
    image: torch.Tensor,
    src_affine,
    dst_affine,
    dst_shape: Sequence[int],
    mode: Mode = "linear",
    padding: Padding = "zeros",
) -> torch.Tensor:
    """Resample a channel-first volume from its grid onto another.

    Args:
        image: (C, D, H, W) tensor on ``src_affine``'s grid, any real dtype (read, never copied whole).
        src_affine: 4x4 voxel-to-world affine of ``image``.
        dst_affine: 4x4 voxel-to-world affine of the output grid.
        dst_shape: spatial size (D', H', W') of the output.
        mode: ``linear`` (trilinear) or ``nearest``.
        padding: outside the source, ``zeros`` or the ``border`` value (``grid_sample``'s padding modes).

    Returns:
        (C, D', H', W'): float32 for ``linear``, the input's dtype for ``nearest``.

    Raises:
        ValueError: an affine is not 4x4 or not invertible, the image not 4D, or an unknown mode.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"resample: mode must be 'linear' or 'nearest', got {mode!r}")
    if padding not in ("zeros", "border"):
        raise ValueError(f"resample: padding must be 'zeros' or 'border', got {padding!r}")
    if image.ndim != 4:
        raise ValueError(f"resample: image must be (C, D, H, W), got shape {tuple(image.shape)}")
    dst_shape = tuple(int(s) for s in dst_shape)
    try:
        xform = index_transform(src_affine, dst_affine)
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"resample: the source affine is not invertible: {exc}") from exc
    axes = _axis_map(xform, dst_shape)
    if axes is None:
        return _resample_oblique(image, xform, dst_shape, mode, padding)
    # np.take gathers along any axis several times faster than torch's index_select along the last.
    src = image.detach().cpu().numpy()
    # Source axes in output order: the index along output axis j drives source axis axes[j].
    src = src.transpose(0, *(a + 1 for a in axes))
    n_src = src.shape[1:]
    coords = [xform[axes[j], j] * np.arange(dst_shape[j], dtype=np.float64) + xform[axes[j], 3] for j in range(3)]
    if mode == "linear":
        taps = [_linear_taps(c, n, padding) for c, n in zip(coords, n_src)]
        step, dtype = _linear_axis, np.float32
    else:
        taps = [_nearest_taps(c, n, padding) for c, n in zip(coords, n_src)]
        step, dtype = _nearest_axis, src.dtype
    out = np.empty((src.shape[0], *dst_shape), dtype=dtype)
    # The other two axes in slabs of output rows, the axis that shrinks the slab most first.
    rest = sorted((1, 2), key=lambda j: dst_shape[j] / max(n_src[j], 1))
    per_row = src.shape[0] * max(n_src[1], dst_shape[1]) * max(n_src[2], dst_shape[2])
    rows = max(1, _SLAB_VOXELS // max(per_row, 1))
    for z0 in range(0, dst_shape[0], rows):
        z1 = min(z0 + rows, dst_shape[0])
        slab = step(src, 1, tuple(t[z0:z1] for t in taps[0]))
        for j in rest:
            slab = step(slab, j + 1, taps[j])
        out[:, z0:z1] = slab
    return torch.from_numpy(out)


def _resample_oblique(
    image: torch.Tensor, xform: np.ndarray, dst_shape: tuple[int, ...], mode: Mode, padding: Padding
) -> torch.Tensor:
    """MONAI's resampling, one output slab at a time (its coordinate grid is the slab's, not the volume's)."""
    from monai.transforms import SpatialResample

    op = SpatialResample(mode="bilinear" if mode == "linear" else "nearest", padding_mode=padding, dtype=torch.float32)
    src = image.to(torch.float32)
    dtype = torch.float32 if mode == "linear" else image.dtype
    out = torch.empty((image.shape[0], *dst_shape), dtype=dtype)
    rows = max(1, _SLAB_VOXELS // max(image.shape[0] * dst_shape[1] * dst_shape[2], 1))
    for z0 in range(0, dst_shape[0], rows):
        z1 = min(z0 + rows, dst_shape[0])
        shift = np.eye(4)
        shift[0, 3] = z0
        # In index space: a plain tensor's grid is the identity, the slab's starts at output row z0.
        slab = op(src, dst_affine=torch.as_tensor(xform @ shift), spatial_size=(z1 - z0, *dst_shape[1:]))
        slab = slab.as_subclass(torch.Tensor) if isinstance(slab, torch.Tensor) else torch.as_tensor(slab)
        out[:, z0:z1].copy_(slab.round() if mode == "nearest" and not dtype.is_floating_point else slab)
    return out


def spacing_grid(affine, shape: Sequence[int], spacing: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The grid MONAI's ``Spacing(pixdim=spacing)`` puts a volume on: its affine and spatial size.

    Args:
        affine: 4x4 affine of the volume.
        shape: its spatial size (D, H, W).
        spacing: the target voxel size (mm) per array axis.

    Returns:
        ``(affine, (D', H', W'))``, computed by MONAI's own transform in lazy mode (no voxel is touched).
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    ghost = MetaTensor(torch.empty(()).expand(1, *(int(s) for s in shape)), affine=torch.as_tensor(_as_affine(affine)))
    pending = Spacing(pixdim=tuple(float(s) for s in spacing), lazy=True)(ghost)
    return np.asarray(pending.peek_pending_affine(), dtype=np.float64), tuple(int(s) for s in pending.peek_pending_shape())


__all__ = ["index_transform", "resample", "spacing_grid"]
