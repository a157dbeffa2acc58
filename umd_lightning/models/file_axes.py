"""The axis order nnU-Net-family tools see: a NIfTI file as SimpleITK reads it.

nnU-Net and nnInteractive are run on the array SimpleITK gives for a file: the file's storage order with
its axes reversed. Our volumes are RAS-oriented; :class:`SessionAxes` maps them (and prompts and masks) to
that array and back, from the storage orientation of the file the grid came from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SessionAxes"]


@dataclasses.dataclass(frozen=True)
class SessionAxes:
    """How the RAS volume maps onto the array an nnU-Net-family model is given: the file as SimpleITK reads it.

    ``file = flip(transpose(ras, perm), flips)``; the session array is ``file`` with its axes reversed.

    Attributes:
        perm: file axis j holds RAS axis ``perm[j]``.
        flips: file axis j runs against its RAS axis.
        shape: the RAS volume's shape.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    shape: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], shape: Sequence[int]) -> SessionAxes:
        """The storage orientation of the file the volume's grid comes from (the label's, else the image's)
        relative to the volume's own (RAS; ``meta["affine"]`` when given); identity when no file is readable.
        Orientation only: a volume resampled to another spacing keeps its file's axis order and directions.
        """
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        shape = tuple(int(s) for s in shape)
        files = (meta.get("label_path"), meta.get("image_path"))
        path = next((str(p) for p in files if p and Path(str(p)).is_file()), None)
        if path is None:
            return cls(shape=shape)  # type: ignore[arg-type]
        affine = meta.get("affine")
        own = axcodes2ornt("RAS") if affine is None else io_orientation(np.asarray(affine, dtype=np.float64))
        # row i: the volume's axis i becomes file axis t[i, 0], reversed when t[i, 1] < 0
        t = ornt_transform(own, io_orientation(nib.load(path).affine))  # reads the header only
        perm = [0, 0, 0]
        flips = [False, False, False]
        for i, (j, sign) in enumerate(t):
            perm[int(j)], flips[int(j)] = i, bool(sign < 0)
        return cls(perm=tuple(perm), flips=tuple(flips), shape=shape)  # type: ignore[arg-type]

    def to_session(self, volume: np.ndarray) -> np.ndarray:
        """(X, Y, Z) RAS -> the file's storage order, axes reversed, contiguous."""
        arr = np.transpose(volume, self.perm)
        arr = np.flip(arr, [j for j in range(3) if self.flips[j]]) if any(self.flips) else arr
        return np.ascontiguousarray(arr.transpose(2, 1, 0))

    def from_session(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_session`."""
        arr = array.transpose(2, 1, 0)
        arr = np.flip(arr, [j for j in range(3) if self.flips[j]]) if any(self.flips) else arr
        return np.ascontiguousarray(np.transpose(arr, np.argsort(self.perm)))

    def point(self, coords: Sequence[int]) -> tuple[int, int, int]:
        """A RAS voxel index -> the session array's index."""
        file = [
            (self.shape[self.perm[j]] - 1 - int(coords[self.perm[j]])) if self.flips[j] else int(coords[self.perm[j]])
            for j in range(3)
        ]
        return tuple(file[::-1])  # type: ignore[return-value]

    def box(self, lo: Sequence[int], hi: Sequence[int]) -> list[list[int]]:
        """Inclusive RAS corners -> nnInteractive's half-open ``[[lb, ub]] * 3`` on the session array."""
        a, b = self.point(lo), self.point(hi)
        return [[min(i, j), max(i, j) + 1] for i, j in zip(a, b)]
