"""Analytic solids in the body frame (mm): approximately signed distances with bounding boxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from umd_lightning.data.synthetic.sampling import Region

_BIG = np.float32(1e4)
_F32 = np.float32


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
