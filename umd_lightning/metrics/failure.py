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

Cost: evaluation calls :func:`case_metrics_and_failure`, which takes each organ's masks, surfaces
and predicted-to-reference surface distances from the case metrics' own pass (HD95 needs the
distance of every predicted surface voxel); what is left is one component labelling (equal to
``scipy.ndimage.label`` with 26-connectivity, by runs: :mod:`umd_lightning.metrics._components`) on the
prediction's compact grid (its empty planes dropped, one kept per gap: :func:`_compact_planes`, so
specks far apart do not make a grid of the whole volume) and a look-up of which components touch
the reference inside the reference's box. :func:`failure_columns` alone does the same on its own
crops, with a k-d tree search from the boundary voxels of components apart from the reference only.
The SUV means index the PET with the masks' crops. ``benchmarks/failure_bench.py`` prints the cost
against :func:`~umd_lightning.metrics.functional.case_metrics`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np

from umd_lightning.metrics._components import label26
from umd_lightning.metrics.functional import CaseArrays, _label_dict, _Mask, _nearest, _score_organs, case_metrics
from umd_lightning.results import FAILURE_COLUMNS


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


def _compact_planes(points: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, ...]:
    """Global index per axis of the planes a mask's compact grid keeps: its occupied planes and the
    first empty plane of each gap.

    ``points`` are the mask's surface voxels: every occupied plane holds one (walk within the plane
    until the mask ends). Components, 26-neighbourhoods and 6-connected boundaries of the mask's voxels
    are the same on the compact grid: planes that were neighbours still are, and planes a gap separated
    still have an empty plane between them. A scattered prediction (specks far from the organ) has a
    bounding box of most of the volume but a compact grid of little more than its voxels' planes.
    """
    keep = []
    for axis in range(3):
        occupied = np.bincount(points[:, axis], minlength=int(stop[axis])).astype(bool)  # O(n), no sort
        occupied[1:] |= occupied[:-1].copy()  # and the plane after each occupied one
        keep.append(np.flatnonzero(occupied))
    return tuple(keep)


def _on_planes(arr: np.ndarray, start: Any, planes: tuple[np.ndarray, ...]) -> np.ndarray:
    """The values of ``arr`` (whose first element is at global index ``start``) on the grid of the
    given global planes: a view where they are contiguous, else copies along the gappy axes only."""
    out = arr[tuple(slice(int(k[0] - s), int(k[-1] + 1 - s)) for k, s in zip(planes, start))]
    for axis, k in enumerate(planes):
        if len(k) < out.shape[axis]:
            out = out.take(k - k[0], axis=axis)
    return out


def _mean_in(values: np.ndarray, m: _Mask) -> float:
    """Mean of ``values`` (the whole grid) inside the mask, read through the mask's box: no copy of it."""
    box = tuple(slice(int(a), int(b)) for a, b in zip(m.start, m.surface.stop))
    return float(values[box][m.mask].mean(dtype=np.float64))


def _organ_columns(
    p: _Mask | None, r: _Mask | None, d_pr: np.ndarray | None, spacing: np.ndarray, suv: np.ndarray | None,
    workers: int,
) -> tuple[int, float, float, float]:
    """``n_components, farthest_component_mm, suv_mean_pred, suv_mean_ref`` of one organ.

    ``d_pr``: distances (mm) from every predicted surface voxel to the reference surface, as
    :func:`~umd_lightning.metrics.functional.case_metrics` found them; None: searched here, for the
    components apart from the reference only.
    """
    nan = float("nan")
    suv_ref = nan if suv is None or r is None else _mean_in(suv, r)
    if p is None:
        return 0, nan, nan, suv_ref
    suv_pred = nan if suv is None else _mean_in(suv, p)
    points = p.surface.points
    planes = _compact_planes(points, p.surface.stop)
    mask = _on_planes(p.mask, p.start, planes)
    components, n = label26(mask)
    if r is None:
        return int(n), nan, suv_pred, suv_ref
    touching = np.zeros(n + 1, dtype=bool)
    # components with a voxel in the reference, looked for in the reference's box only
    lo = [int(np.searchsorted(k, s)) for k, s in zip(planes, r.start)]
    hi = [int(np.searchsorted(k, e)) for k, e in zip(planes, r.surface.stop)]
    if all(h > l for l, h in zip(lo, hi)):
        shared = tuple(k[l:h] for k, l, h in zip(planes, lo, hi))
        near = components[tuple(slice(l, h) for l, h in zip(lo, hi))]
        touching[near[_on_planes(r.mask, r.start, shared)]] = True
    touching[0] = True  # background is no component
    if touching.all():
        return int(n), 0.0, suv_pred, suv_ref
    # The closest voxel of a component to the reference is on the predicted surface.
    ids = components[tuple(np.searchsorted(k, points[:, axis]) for axis, k in enumerate(planes))]
    apart = ~touching[ids]
    ids = ids[apart]
    if d_pr is None:
        dist = _nearest(points[apart], r.surface, spacing, "kdtree", workers)
    else:
        dist = d_pr[apart]
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

    :func:`case_metrics_and_failure` gives the same columns with the case metrics, at little more
    than the cost of the metrics alone.

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
    labels = _label_dict(labels)
    case = CaseArrays.of(pred, ref, spacing, list(labels), workers)
    suv_arr = None if suv is None else _suv_array(suv, case.pred.shape)
    return {
        labels[i]: dict(zip(FAILURE_COLUMNS, _organ_columns(*case.masks(i), None, case.spacing, suv_arr, workers)))
        for i in sorted(labels)
    }


def case_metrics_and_failure(
    pred: Any, ref: Any, spacing: Any, labels: Mapping[int, str], *, suv: Any = None, **metric_options: Any
) -> list[dict[str, Any]]:
    """The rows of :func:`~umd_lightning.metrics.functional.case_metrics` with the
    :data:`FAILURE_COLUMNS` of :func:`failure_columns` added, from one pass per organ: the masks,
    surfaces and predicted-to-reference surface distances the metrics need also give the farthest
    component, so the failure columns cost a component labelling on the prediction's compact grid.

    Args:
        pred, ref, spacing, labels: as :func:`case_metrics`.
        suv: the PET in SUV on the label grid, or None.
        **metric_options: :func:`case_metrics`' keyword options (``workers`` serves both).

    Returns:
        One dict per organ with the keys of ``ROW_KEYS`` and of :data:`FAILURE_COLUMNS`.
    """
    options = {**_CASE_METRICS_DEFAULTS, **metric_options}
    case = CaseArrays.of(pred, ref, spacing, list(_label_dict(labels)), options["workers"])
    suv_arr = None if suv is None else _suv_array(suv, case.pred.shape)

    def with_failure_columns(row: dict[str, Any], p: _Mask | None, r: _Mask | None, d_pr: np.ndarray | None,
                             workers: int) -> dict[str, Any]:
        return {**row, **dict(zip(FAILURE_COLUMNS, _organ_columns(p, r, d_pr, case.spacing, suv_arr, workers)))}

    return _score_organs(pred, ref, spacing, labels, case=case, per_organ=with_failure_columns, **options)


_CASE_METRICS_DEFAULTS = {
    name: param.default for name, param in inspect.signature(case_metrics).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY
}


__all__ = ["FAILURE_COLUMNS", "case_metrics_and_failure", "failure_columns"]
