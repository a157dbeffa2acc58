"""26-connected components of a 3D mask, by runs: ``scipy.ndimage.label`` with a full 3x3x3 structure.

scipy visits the 13 earlier neighbours of every voxel; a zero-shot prediction scattered over a
body-sized box made that 1.8 s of CPU per PET case at clinical size. Here the mask becomes runs along
its last axis, and a run can only touch the runs of the four earlier rows around it (the row before in
its plane, three rows in the plane before) whose spans, widened by one voxel for the diagonals,
overlap its own: a merge of sorted runs, with union-find. Each set's root is its first run in raster
order, so components are numbered by their first voxel, as scipy numbers them.
Compiled by numba without the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _runs(mask):  # pragma: no cover - compiled
    """Runs of True along the last axis: per row (plane * H + row) the range of its runs in ``x0``/``x1``."""
    d, h, w = mask.shape
    n = 0
    for z in range(d):
        for y in range(h):
            prev = False
            for x in range(w):
                v = mask[z, y, x]
                if v and not prev:
                    n += 1
                prev = v
    row_start = np.empty(d * h + 1, dtype=np.int64)
    x0 = np.empty(n, dtype=np.int32)
    x1 = np.empty(n, dtype=np.int32)
    k = 0
    for z in range(d):
        for y in range(h):
            row_start[z * h + y] = k
            x = 0
            while x < w:
                if mask[z, y, x]:
                    s = x
                    while x < w and mask[z, y, x]:
                        x += 1
                    x0[k] = s
                    x1[k] = x
                    k += 1
                else:
                    x += 1
    row_start[d * h] = k
    return row_start, x0, x1


@njit(cache=True, nogil=True)
def _find(parent, i):  # pragma: no cover - compiled
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True, nogil=True)
def _join_rows(parent, row_start, x0, x1, a, b):  # pragma: no cover - compiled
    """Union every run of row ``a`` with the runs of row ``b`` it touches (spans overlapping once widened
    by one voxel). Runs of a row are sorted and at least one voxel apart, so one merge finds them all."""
    i, i_end = row_start[a], row_start[a + 1]
    j, j_end = row_start[b], row_start[b + 1]
    while i < i_end and j < j_end:
        if x0[i] <= x1[j] and x0[j] <= x1[i]:
            ri, rj = _find(parent, i), _find(parent, j)
            if ri < rj:
                parent[rj] = ri
            elif rj < ri:
                parent[ri] = rj
        if x1[i] < x1[j]:
            i += 1
        else:
            j += 1


@njit(cache=True, nogil=True)
def _label_runs(shape, row_start, x0, x1):  # pragma: no cover - compiled
    """Component number (1...) of every run, and the count."""
    d, h = shape[0], shape[1]
    n_runs = x0.shape[0]
    parent = np.arange(n_runs).astype(np.int32)
    for z in range(d):
        for y in range(h):
            row = z * h + y
            if row_start[row] == row_start[row + 1]:
                continue
            if y > 0:
                _join_rows(parent, row_start, x0, x1, row, row - 1)
            if z > 0:
                for dy in (-1, 0, 1):
                    if 0 <= y + dy < h:
                        _join_rows(parent, row_start, x0, x1, row, row - h + dy)
    label = np.empty(n_runs, dtype=np.int32)
    n = 0
    for k in range(n_runs):
        root = _find(parent, k)
        if root == k:  # the root is its set's first run
            n += 1
            label[k] = n
        else:
            label[k] = label[root]
    return label, n


@njit(cache=True, nogil=True)
def _paint(out, row_start, x0, x1, label):  # pragma: no cover - compiled
    d, h = out.shape[0], out.shape[1]
    for z in range(d):
        for y in range(h):
            row = z * h + y
            for k in range(row_start[row], row_start[row + 1]):
                out[z, y, x0[k] : x1[k]] = label[k]


def label26(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask, structure=np.ones((3, 3, 3)))``: the components' numbers (uint16
    when at most 65 535 components, else int32; 0 outside the mask) and their count."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    row_start, x0, x1 = _runs(mask)
    label, n = _label_runs(np.array(mask.shape, dtype=np.int64), row_start, x0, x1)
    out = np.zeros(mask.shape, dtype=np.uint16 if n <= np.iinfo(np.uint16).max else np.int32)
    _paint(out, row_start, x0, x1, label.astype(out.dtype))
    return out, int(n)
