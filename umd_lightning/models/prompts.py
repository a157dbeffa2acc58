"""Prompt simulation for promptable models, deterministic from a seed and saved with the results.

Every prompt is derived from the reference label (so a prompted model is an *oracle*: its results
rows say so). Coordinates are voxel indices (D, H, W) on the grid the adapter was given.

- one point per organ at the interior point farthest from the boundary of its largest component
  (the maximum of the Euclidean distance transform, in mm when the spacing is known);
- optionally ``k`` random interior points per organ (away from the boundary where the organ allows);
- a bounding box per organ, optionally loosened by a random jitter (outward only, so the box always
  contains the organ, as a user's loose box does);
- iterative corrective clicks at the centre of the largest error region (positive where the organ
  was missed, negative where the model over-segmented).

Randomness comes from ``numpy.random.default_rng([seed, crc32(case_id), label_id])``: a case's
prompts do not depend on which other cases or organs were prompted before it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from scipy import ndimage

from umd_lightning.organs import OrganSet

PointSource = Literal["center", "random", "corrective"]

__all__ = [
    "BoxPrompt",
    "OrganPrompts",
    "PointPrompt",
    "PromptSimulator",
    "bounding_box",
    "center_point",
    "corrective_click",
    "largest_component",
    "prompts_to_records",
    "random_points",
]


@dataclass(frozen=True)
class PointPrompt:
    """One click.

    Attributes:
        organ: organ name in the organ set.
        label: the organ's id in the organ set.
        coords: voxel index (D, H, W) on the adapter's input grid.
        positive: True for a foreground click, False for a background (negative) click.
        source: how it was simulated: ``center``, ``random`` or ``corrective``.
        iteration: 0 for initial prompts, i for the i-th corrective click.
    """

    organ: str
    label: int
    coords: tuple[int, int, int]
    positive: bool = True
    source: PointSource = "center"
    iteration: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "point",
            "organ": self.organ,
            "label": int(self.label),
            "coords": [int(c) for c in self.coords],
            "positive": bool(self.positive),
            "source": self.source,
            "iteration": int(self.iteration),
        }


@dataclass(frozen=True)
class BoxPrompt:
    """An axis-aligned box with inclusive voxel corners ``lo`` and ``hi`` (D, H, W)."""

    organ: str
    label: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    jitter: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "box",
            "organ": self.organ,
            "label": int(self.label),
            "lo": [int(c) for c in self.lo],
            "hi": [int(c) for c in self.hi],
            "jitter": float(self.jitter),
        }

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b + 1) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


@dataclass
class OrganPrompts:
    """All prompts for one organ of one case; ``points`` grows with corrective clicks."""

    organ: str
    label: int
    points: list[PointPrompt] = field(default_factory=list)
    box: BoxPrompt | None = None

    def records(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.points] + ([self.box.to_dict()] if self.box is not None else [])

    def coords_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Points as arrays: coords (N, 3) int64 and labels (N,) with 1 positive, 0 negative."""
        coords = np.array([p.coords for p in self.points], dtype=np.int64).reshape(-1, 3)
        labels = np.array([1 if p.positive else 0 for p in self.points], dtype=np.int64)
        return coords, labels


def prompts_to_records(prompts: Sequence[OrganPrompts] | dict[str, OrganPrompts]) -> list[dict[str, Any]]:
    """JSON-ready list of every prompt, in organ order (what is saved with the results)."""
    items = prompts.values() if isinstance(prompts, dict) else prompts
    return [r for op in items for r in op.records()]


# ------------------------------------------------------------------------------------------ geometry


def _as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _crop_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    objs = ndimage.find_objects(mask.astype(np.uint8, copy=False))
    return objs[0] if objs else None


def largest_component(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """The largest face-connected component of a boolean mask (ties: the lowest component index)."""
    mask = _as_numpy(mask).astype(bool, copy=False)
    box = _crop_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    comp, n = ndimage.label(mask[box])
    if n <= 1:
        out[box] = comp > 0
        return out
    sizes = np.bincount(comp.ravel())[1:]
    out[box] = comp == (int(np.argmax(sizes)) + 1)
    return out


def _deepest_voxel(mask: np.ndarray, spacing: Sequence[float] | None) -> tuple[int, int, int]:
    """argmax of the distance to the mask's boundary (volume edges count as boundary); first in C order."""
    box = _crop_box(mask)
    assert box is not None
    sub = np.pad(mask[box], 1)
    dist = ndimage.distance_transform_edt(sub, sampling=None if spacing is None else tuple(float(s) for s in spacing))
    idx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(i) - 1 + int(s.start) for i, s in zip(idx, box))  # type: ignore[return-value]


def center_point(mask: np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None) -> tuple[int, int, int] | None:
    """The interior point farthest from the boundary of the mask's largest component.

    Args:
        mask: (D, H, W) boolean.
        spacing: voxel size (mm) per axis, so that "farthest" is in mm; None = voxels.

    Returns:
        The voxel index (D, H, W), or None for an empty mask.
    """
    comp = largest_component(mask)
    if not comp.any():
        return None
    return _deepest_voxel(comp, spacing)


def random_points(
    mask: np.ndarray | torch.Tensor, k: int, rng: np.random.Generator, *, margin: int = 1
) -> list[tuple[int, int, int]]:
    """``k`` distinct random voxels inside the mask, at least ``margin`` voxels from its boundary
    where the organ is thick enough (else anywhere inside).
    """
    mask = _as_numpy(mask).astype(bool, copy=False)
    if k <= 0 or not mask.any():
        return []
    inner = ndimage.binary_erosion(mask, iterations=margin) if margin > 0 else mask
    pool = np.flatnonzero(inner if inner.any() else mask)
    take = rng.choice(pool.size, size=min(k, pool.size), replace=False)
    return [tuple(int(c) for c in np.unravel_index(int(pool[i]), mask.shape)) for i in np.sort(take)]  # type: ignore[misc]


def bounding_box(
    mask: np.ndarray | torch.Tensor, *, jitter: float = 0.0, rng: np.random.Generator | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Inclusive corners (lo, hi) of the mask's bounding box, each side pushed outward by up to
    ``jitter`` x the box's extent on that axis (uniform, integer voxels, clipped to the volume).
    """
    mask = _as_numpy(mask).astype(bool, copy=False)
    box = _crop_box(mask)
    if box is None:
        return None
    lo = [int(s.start) for s in box]
    hi = [int(s.stop) - 1 for s in box]
    if jitter > 0:
        if rng is None:
            raise ValueError("bounding_box: jitter needs a random generator")
        for ax in range(3):
            reach = int(round(jitter * (hi[ax] - lo[ax] + 1)))
            if reach > 0:
                lo[ax] = max(0, lo[ax] - int(rng.integers(0, reach + 1)))
                hi[ax] = min(mask.shape[ax] - 1, hi[ax] + int(rng.integers(0, reach + 1)))
    return tuple(lo), tuple(hi)  # type: ignore[return-value]


def corrective_click(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
) -> tuple[tuple[int, int, int], bool] | None:
    """A click at the centre of the largest error region of one organ.

    Args:
        prediction: (D, H, W) boolean mask the model predicted for the organ.
        reference: (D, H, W) boolean reference mask of the organ.
        spacing: voxel size (mm), for the distance to the region's boundary.

    Returns:
        ``(coords, positive)``: positive where the region was missed (inside the reference), negative
        where it was over-segmented; None when prediction and reference agree.
    """
    pred = _as_numpy(prediction).astype(bool, copy=False)
    ref = _as_numpy(reference).astype(bool, copy=False)
    error = pred ^ ref
    if not error.any():
        return None
    # FN and FP regions are separate components even where they touch
    fn, fp = largest_component(error & ref), largest_component(error & ~ref)
    region = fn if fn.sum() >= fp.sum() else fp
    coords = _deepest_voxel(region, spacing)
    return coords, bool(ref[coords])


# ------------------------------------------------------------------------------------------ simulator


@dataclass
class PromptSimulator:
    """Simulates a user's prompts from the reference label, deterministically.

    Args:
        seed: base seed; with the case id and organ id it fixes every random choice.
        center_point: one point per organ at the deepest voxel of its largest component.
        k_random: extra random interior points per organ.
        boxes: one bounding box per organ.
        box_jitter: each box side is pushed outward by up to this fraction of the box's extent.
        corrective_clicks: number of corrective clicks an adapter may ask for per organ.
        use_spacing: measure "farthest from the boundary" in mm (else in voxels).
        box_slice_axis: None: 3D boxes around the organ. An axis (2 = axial on a RAS grid): 2D boxes, the
            bounding box of the organ's cross-section on the slice through its centre point (the
            deepest voxel of its largest component) perpendicular to that axis, width 1 along it, as a
            user draws a box on one slice (nnInteractive accepts only such boxes).
    """

    seed: int = 0
    center_point: bool = True
    k_random: int = 0
    boxes: bool = False
    box_jitter: float = 0.0
    corrective_clicks: int = 0
    use_spacing: bool = True
    box_slice_axis: int | None = None

    def __post_init__(self) -> None:
        if self.k_random < 0 or self.corrective_clicks < 0 or self.box_jitter < 0:
            raise ValueError("PromptSimulator: k_random, corrective_clicks and box_jitter must be >= 0")
        if self.box_slice_axis not in (None, 0, 1, 2):
            raise ValueError(f"PromptSimulator: box_slice_axis must be None, 0, 1 or 2, got {self.box_slice_axis!r}")
        if not (self.center_point or self.k_random or self.boxes):
            raise ValueError("PromptSimulator: no prompt at all (center_point, k_random and boxes all off)")

    def rng(self, case_id: str, label: int) -> np.random.Generator:
        """The generator for one organ of one case."""
        return np.random.default_rng([int(self.seed), zlib.crc32(str(case_id).encode()), int(label)])

    def simulate(
        self,
        reference: np.ndarray | torch.Tensor,
        organ_set: OrganSet,
        *,
        case_id: str = "",
        spacing: Sequence[float] | None = None,
        organs: Sequence[str] | None = None,
    ) -> dict[str, OrganPrompts]:
        """Initial prompts for every organ present in ``reference``.

        Args:
            reference: (D, H, W) label map on the organ set's ids.
            organ_set: the organ set.
            case_id: the case's id (part of the seed).
            spacing: voxel size (mm) of ``reference``'s grid.
            organs: only these organs (default: all of the organ set); absent organs get no prompt.

        Returns:
            ``{organ: OrganPrompts}`` in the organ set's order, organs absent from the reference left out.
        """
        ref = _as_numpy(reference)
        if ref.ndim != 3:
            raise ValueError(f"PromptSimulator: reference must be (D, H, W), got shape {ref.shape}")
        sp = spacing if self.use_spacing else None
        wanted = set(organ_set.organs if organs is None else organs)
        objs = ndimage.find_objects(ref.astype(np.int64, copy=False))
        out: dict[str, OrganPrompts] = {}
        for organ in organ_set.organs:
            label = organ_set.ids[organ]
            if organ not in wanted or label > len(objs) or objs[label - 1] is None:
                continue
            box = objs[label - 1]
            # work inside the organ's box (+ margin for jitter), shifted back at the end
            pad = [max(1, int(np.ceil(self.box_jitter * (s.stop - s.start)))) for s in box]
            crop = tuple(
                slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, ref.shape)
            )
            offset = np.array([s.start for s in crop])
            mask = ref[crop] == label
            rng = self.rng(case_id, label)
            op = OrganPrompts(organ, label)
            shift = lambda c: tuple(int(v) for v in np.asarray(c) + offset)  # noqa: E731
            if self.center_point:
                c = center_point(mask, sp)
                assert c is not None
                op.points.append(PointPrompt(organ, label, shift(c), True, "center"))
            for c in random_points(mask, self.k_random, rng):
                op.points.append(PointPrompt(organ, label, shift(c), True, "random"))
            if self.boxes:
                box_mask = mask
                if self.box_slice_axis is not None:
                    ax = self.box_slice_axis
                    centre = center_point(mask, sp)
                    assert centre is not None
                    at = centre[ax]
                    box_mask = np.zeros_like(mask)
                    box_mask[(slice(None),) * ax + (at,)] = mask[(slice(None),) * ax + (at,)]
                corners = bounding_box(box_mask, jitter=self.box_jitter, rng=rng)
                assert corners is not None
                if self.box_slice_axis is not None:  # jitter never widens the slice
                    lo, hi = list(corners[0]), list(corners[1])
                    lo[ax] = hi[ax] = int(at)
                    corners = (tuple(lo), tuple(hi))  # type: ignore[assignment]
                # the crop's margin is at least the jitter's reach, so clipping to it clips to the volume
                op.box = BoxPrompt(organ, label, shift(corners[0]), shift(corners[1]), self.box_jitter)
            out[organ] = op
        return out

    def correct(
        self,
        prompts: OrganPrompts,
        prediction: np.ndarray | torch.Tensor,
        reference: np.ndarray | torch.Tensor,
        *,
        spacing: Sequence[float] | None = None,
    ) -> PointPrompt | None:
        """Add one corrective click for ``prompts.organ`` to ``prompts.points`` and return it.

        Args:
            prompts: the organ's prompts so far (appended to).
            prediction: (D, H, W) boolean mask predicted for the organ.
            reference: (D, H, W) label map on the organ set's ids, or the organ's boolean mask.
            spacing: voxel size (mm).

        Returns:
            The click, or None when the prediction is already right (nothing is added).
        """
        ref = _as_numpy(reference)
        ref_mask = ref == prompts.label if ref.dtype != bool else ref
        click = corrective_click(prediction, ref_mask, spacing if self.use_spacing else None)
        if click is None:
            return None
        coords, positive = click
        iteration = 1 + sum(p.source == "corrective" for p in prompts.points)
        point = PointPrompt(prompts.organ, prompts.label, coords, positive, "corrective", iteration)
        prompts.points.append(point)
        return point
