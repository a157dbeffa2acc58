r"""Mask-level quantities behind the failure modes, computed where the masks are in memory: at scoring.

:func:`failure_columns` gives, per organ of one case, the optional columns of the results table
(:data:`~umd_lightning.results.FAILURE_COLUMNS`):

- ``n_components``: connected components of the predicted mask (26-connectivity: voxels touching by
  a face, an edge or a corner are one component); 0 when nothing is predicted.
- ``farthest_component_mm``: the distance from the reference organ to the farthest predicted
  component, :math:`\max_C \min_{c \in C, r \in R} \lVert (c - r) \odot s \rVert_2` in mm between
  voxel centres, with a component that overlaps the reference at distance 0. So 0 means every
  component overlaps the reference organ, and a value above a few voxels is a stray component (or,
  with one component, a prediction elsewhere). NaN when either mask is empty.
- ``suv_mean_pred`` / ``suv_mean_ref``: the mean SUV of the PET inside the predicted / reference mask,
  on PET views (``suv`` given); NaN without a PET or with an empty mask.

Why the distance needs only surfaces: for disjoint voxel sets the closest pair lies on both sets'
6-connected boundaries (a step from an interior voxel towards the other set shortens the distance), and
the boundary of the predicted mask is the union of its components' boundaries under 26-connectivity.

Cost: per organ, the work is on the organ's bounding-box crops of the two label maps (bool), with the
predicted crop's empty planes dropped (:func:`_compact`: specks far apart no longer make a crop of the
whole volume); one ``scipy.ndimage.label`` there (int32 component ids of that size), and a k-d tree
search of the reference surface only from the boundary voxels of components that do not overlap the
reference; the SUV means index the PET with the masks' crops. No whole-volume array is made besides
the two ``find_objects`` passes over the label maps; ``benchmarks/failure_bench.py`` prints the cost
against :func:`~umd_lightning.metrics.functional.case_metrics`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from umd_lightning.metrics.functional import _boundary, _check_spacing, _nearest, _Surface, _to_numpy
from umd_lightning.results import FAILURE_COLUMNS

#: 26-connectivity: the predicted components a reader would see as one blob are one.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _suv_array(suv: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The PET as a numpy view (D, H, W) on the label grid; torch tensors are moved to the CPU, not copied."""
    if hasattr(suv, "detach"):
        suv = suv.detach().cpu()
        suv = (suv.as_tensor() if hasattr(suv, "as_tensor") else suv).numpy()  # MetaTensor: a plain view
    arr = np.asarray(suv)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != shape:
        raise ValueError(f"suv must lie on the label grid {shape}, got shape {arr.shape}")
    return arr


def _compact(mask: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
    """``mask`` without the empty planes between its occupied ones (one kept per gap), and the global
    index of every kept plane per axis (None: nothing dropped, ``mask`` itself).

    Components, 26-neighbourhoods and 6-connected boundaries of the mask's voxels are the same on this
    compact grid: planes that were neighbours still are, and planes a gap separated still have an empty
    plane between them. A scattered prediction (specks far from the organ) has a bounding box of most of
    the volume but a compact grid of little more than its voxels' planes, so it is labelled there.
    """
    keep = []
    for axis in range(3):
        occupied = mask.any(axis=tuple(a for a in range(3) if a != axis))
        occupied[1:] = occupied[1:] | occupied[:-1]  # the first empty plane of each gap stays
        keep.append(np.flatnonzero(occupied))
    if all(len(k) == n for k, n in zip(keep, mask.shape)):
        return mask, None
    return mask[np.ix_(*keep)], tuple(k + s for k, s in zip(keep, start))


def _organ_columns(
    p_arr: np.ndarray, p_box: tuple[slice, ...] | None, r_arr: np.ndarray, r_box: tuple[slice, ...] | None,
    label_id: int, suv: np.ndarray | None, spacing: np.ndarray, workers: int,
) -> tuple[int, float, float, float]:
    """``n_components, farthest_component_mm, suv_mean_pred, suv_mean_ref`` of one organ."""
    nan = float("nan")
    r_mask = None if r_box is None else r_arr[r_box] == label_id
    suv_ref = nan if suv is None or r_mask is None else float(suv[r_box][r_mask].mean(dtype=np.float64))
    if p_box is None:
        return 0, nan, nan, suv_ref
    p_start = _start(p_box)
    mask, planes = _compact(p_arr[p_box] == label_id, p_start)
    grid = p_box if planes is None else np.ix_(*planes)  # the compact grid's voxels in whole-volume arrays
    suv_pred = nan if suv is None else float(suv[grid][mask].mean(dtype=np.float64))
    components, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if r_mask is None:
        return int(n), nan, suv_pred, suv_ref
    touching = np.zeros(n + 1, dtype=bool)
    touching[components[r_arr[grid] == label_id]] = True  # components with a voxel in the reference
    touching[0] = True  # background is no component
    if touching.all():
        return int(n), 0.0, suv_pred, suv_ref
    # Only the boundary voxels of components apart from the reference are searched.
    flat = np.flatnonzero(_boundary(mask))
    ids = components.ravel()[flat]
    apart = ~touching[ids]
    flat, ids = flat[apart], ids[apart]
    local = np.unravel_index(flat, mask.shape)
    if planes is None:
        points = np.stack(local, axis=1) + p_start
    else:
        points = np.stack([axis_planes[i] for axis_planes, i in zip(planes, local)], axis=1)
    dist = _nearest(points, _Surface(_start(r_box), _boundary(r_mask)), spacing, "kdtree", workers)
    nearest = np.full(n + 1, np.inf)
    np.minimum.at(nearest, ids, dist)
    return int(n), float(nearest[~touching].max()), suv_pred, suv_ref


def failure_columns(
    pred: Any,
    ref: Any,
    spacing: Any,
    labels: Mapping[int, str],
    *,
    suv: Any = None,
    workers: int = 1,
) -> dict[str, dict[str, float]]:
    """Components, farthest-component distance and SUV means of every organ of one case.

    Args:
        pred: predicted integer label map (D, H, W), numpy or torch.
        ref: reference label map on the same grid.
        spacing: voxel size in mm, in the arrays' axis order.
        labels: ``{label_id: organ_name}``.
        suv: the PET in SUV on the same grid (D, H, W) on a PET view, else None (SUV columns NaN).
        workers: threads for the nearest-surface search.

    Returns:
        ``{organ: {column: value}}`` with the keys of :data:`FAILURE_COLUMNS`: plain numbers (the
        component count an int), NaN where undefined (see the module docstring).

    Raises:
        ValueError: grids differ, bad spacing, or ``suv`` off the label grid.

    Example:
        >>> import numpy as np
        >>> ref = np.zeros((30, 10, 10), dtype=np.uint8); ref[2:6, 2:6, 2:6] = 1
        >>> pred = ref.copy(); pred[20:22, 2:4, 2:4] = 1      # a stray blob 15 voxels past the organ
        >>> suv = np.where(ref == 1, 3.0, 1.0).astype(np.float32)
        >>> cols = failure_columns(pred, ref, (2.0, 1.0, 1.0), {1: "liver"}, suv=suv)["liver"]
        >>> cols["n_components"], cols["farthest_component_mm"], cols["suv_mean_ref"]
        (2, 30.0, 3.0)
    """
    p_arr, r_arr = _to_numpy(pred, "pred"), _to_numpy(ref, "ref")
    if p_arr.shape != r_arr.shape:
        raise ValueError(f"pred and ref must be on the same grid, got shapes {p_arr.shape} and {r_arr.shape}")
    spacing_arr = np.asarray(_check_spacing(spacing))
    suv_arr = None if suv is None else _suv_array(suv, p_arr.shape)
    labels = {int(k): str(v) for k, v in dict(getattr(labels, "labels", labels)).items()}
    max_label = max(labels)
    p_boxes = ndimage.find_objects(p_arr, max_label=max_label)
    r_boxes = ndimage.find_objects(r_arr, max_label=max_label)
    return {
        labels[i]: dict(zip(FAILURE_COLUMNS, _organ_columns(
            p_arr, p_boxes[i - 1], r_arr, r_boxes[i - 1], i, suv_arr, spacing_arr, workers)))
        for i in sorted(labels)
    }


def _start(box: tuple[slice, ...]) -> np.ndarray:
    return np.array([s.start for s in box], dtype=np.int64)


__all__ = ["FAILURE_COLUMNS", "failure_columns"]
