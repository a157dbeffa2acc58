"""Sampling the anatomy on a voxel grid through a session's pose: labels and tissue ids per voxel."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np

from umd_lightning.data.synthetic.anatomy import _TRUNK_TOP, Pose, Session, Subject, _structures
from umd_lightning.data.synthetic.shapes import _BIG, _F32, Structure, eval_restricted
from umd_lightning.data.synthetic.tissues import T

Orientation = Literal["RAS", "LPS"]

#: Voxels of a body block sampled at a time (:meth:`BodyBlock.slabs`): about 0.3 GB of per-voxel fields.
SLAB_VOXELS = 8_000_000


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
    """Body-frame coordinates of the voxels of a grid under a pose, and body-box -> voxel-box.

    The deformation moves each world axis by a function of the two other axes (a sum of products
    of cosines), so each body coordinate is a sum of three 2-D planes: the planes are kept and any
    box's coordinates are summed on demand (:meth:`coords`), never the whole grid's.
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
        self._planes = []  # per body axis: its (y, z), (x, z) and (x, y) planes
        for i in range(3):
            yz = rt[i, 1] * a[1][:, None] + rt[i, 2] * a[2][None, :] + rt[i, 0] * u[0]
            xz = rt[i, 1] * u[1]
            xy = rt[i, 0] * a[0][:, None] + rt[i, 2] * u[2]
            self._planes.append((yz.astype(np.float32), xz.astype(np.float32), xy.astype(np.float32)))
        self.pad = pad_mm + pose.max_displacement + float(np.linalg.norm(grid.step))

    def coords(self, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame x, y, z (float32) of the voxels ``box`` (absolute slices of the grid)."""
        b0, b1, b2 = box
        out = []
        for yz, xz, xy in self._planes:
            c = yz[None, b1, b2] + xz[b0, None, b2]  # the same sums in the same order for any box
            c += xy[b0, b1, None]
            out.append(c)
        return tuple(out)  # type: ignore[return-value]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        return _voxel_box(self.grid, self.pose, lo, hi, self.pad)


class Region:
    """A block of a sampler's grid (absolute voxel slices) in which shapes are evaluated."""

    def __init__(self, smp: _Sampler, box: tuple[slice, ...]):
        self.smp, self.box = smp, box

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.smp.coords(self.box)

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


class BodyBlock:
    """The block of a grid that can hold the body, sampled a slab at a time.

    Every voxel's label and tissue depend on its own coordinates only, so slabs give the same
    values as the whole block at once, at a bounded cost: the per-voxel fields (coordinates,
    distances, the two nearest structures) take about 40 bytes a voxel while they are worked on.

    Attributes:
        box: the block's voxels in the grid (slices).
        sampler: body-frame coordinates of the block's voxels (block-relative boxes).
    """

    def __init__(self, subject: Subject, session: Session, grid: Grid, box: tuple[slice, ...], gap_mm: float):
        self.subject, self.session, self.box, self.gap_mm = subject, session, box, gap_mm
        self.sampler = _Sampler(grid.block(box), session.pose, pad_mm=gap_mm + 2.0)

    def slabs(self, max_voxels: int | None = None) -> Iterator[tuple[tuple[slice, ...], np.ndarray, np.ndarray]]:
        """``(slab, label, tissue)`` for consecutive slabs of the block along its last axis, each of at
        most ``max_voxels`` (default :data:`SLAB_VOXELS`) or one plane; ``slab`` is its block-relative box."""
        n0, n1, n2 = self.sampler.shape
        step = max(1, (max_voxels or SLAB_VOXELS) // max(1, n0 * n1))
        structures = _structures(self.subject, self.session)
        for start in range(0, n2, step):
            slab = (slice(0, n0), slice(0, n1), slice(start, min(start + step, n2)))
            label, tissue = _sample_slab(structures, self.subject, Region(self.sampler, slab), self.gap_mm)
            yield slab, label, tissue


def body_block(subject: Subject, session: Session, grid: Grid, gap_mm: float) -> BodyBlock | None:
    """The block of ``grid`` that can hold the body under the session's pose; None if the body misses it."""
    p = subject.profile
    lo = np.minimum([-p[:, 1].max(), (p[:, 3] - p[:, 2]).min(), p[:, 0].min()], subject.head.lo)
    hi = np.maximum([p[:, 1].max(), (p[:, 3] + p[:, 2]).max(), p[:, 0].max()], subject.head.hi)
    pad = session.pose.max_displacement + float(np.linalg.norm(grid.step)) + 1.0
    box = _voxel_box(grid, session.pose, lo, hi, pad)
    return None if box is None else BodyBlock(subject, session, grid, box, gap_mm)


def sample_anatomy(subject: Subject, session: Session, grid: Grid, gap_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Label (UMD13 ids, uint8) and tissue ids (uint8) at every voxel centre of ``grid``.

    Only the block of the grid that can hold the body is sampled, a slab at a time; the rest is air.
    """
    label = np.zeros(grid.shape, np.uint8)
    tissue = np.full(grid.shape, T["air"], np.uint8)
    block = body_block(subject, session, grid, gap_mm)
    if block is not None:
        label_block, tissue_block = label[block.box], tissue[block.box]
        for slab, lab, tis in block.slabs():
            label_block[slab], tissue_block[slab] = lab, tis
    return label, tissue


def _sample_slab(structures: list[Structure], subject: Subject, whole: Region, gap_mm: float
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Label and tissue of a region, each structure evaluated in its bounding box only.

    A voxel belongs to the structure with the smallest distance when it is inside it and the
    runner-up is at least ``gap_mm`` farther (when either is an organ); otherwise it keeps the
    body's background tissue (fat inside the trunk).
    """
    bx, by, bz = whole.coords()
    shape = bx.shape
    d_body, d_int, tissue = _body_fields(subject, bx, by, bz, whole)
    best = np.full(shape, _BIG, np.float32)
    second = np.full(shape, _BIG, np.float32)
    sid = np.full(shape, -1, np.int16)
    sid2 = np.full(shape, -1, np.int16)
    cache: list = []
    for k, st in enumerate(structures):
        box = whole.rel(st.shape.lo, st.shape.hi)
        if box is None:
            cache.append(None)
            continue
        region = whole.child(box)
        x, y, z = bx[box], by[box], bz[box]
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
    return label, tissue
