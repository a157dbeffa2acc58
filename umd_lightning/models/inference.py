"""Whole-volume sliding-window inference that streams: argmax labels out, never full-volume logits.

:func:`sliding_window_labels` gives the labels of
``monai.inferers.sliding_window_inference(image, roi_size, sw_batch_size, predictor, overlap, mode,
sigma_scale).argmax(1)[0]`` (same window positions, same padding of a volume smaller than the window,
same importance map, both from MONAI's public helpers) without MONAI's float buffer of
(classes x whole volume) plus count map.

How it stays small. The window start positions on each axis cut the volume into a grid of *cells*:
boxes that are covered by exactly the same windows. A cell's blended scores are complete as soon as
the last window covering it has been added, so every cell is argmaxed into the uint8 output and its
score buffer dropped at that moment. Cells covered by a single window never get a buffer at all.
The memory left is the set of *live* cells: touched by a finished window and by one still to come.
The windows are processed in the order that keeps that set smallest, chosen by simulating a few
sweep orders (:func:`plan_windows`): it is mostly one window overlap (24 voxels for roi 96 and
overlap 0.25) thick across the smallest cross-section. The shifted last window of each axis (whose
overlap with its neighbour is larger) is swept together with that neighbour so that its wide overlap
never spans a whole cross-section. For a whole-body 400x512x512 volume, roi 96^3, overlap 0.25 the
live set peaks at 7.0 M voxels per class (370 MB at 14 classes in float32): 1/15 of the volume and a
third of a window-deep slab of the smallest cross-section.

Equality with MONAI. The blended score of a voxel is the importance-weighted sum of its windows'
logits; MONAI divides it by the summed weights, a positive per-voxel factor that cannot change the
argmax, so it is skipped (and applied only when probabilities are saved). The additions happen in
another order, so a voxel whose two best classes are within float32 rounding of each other can come
out differently: those near-ties are the only differences.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from umd_lightning.organs import label_dtype

logger = logging.getLogger(__name__)

__all__ = ["WindowPlan", "plan_windows", "sliding_window_labels", "tta_flips"]

BlendMode = Literal["constant", "gaussian"]
Predictor = Callable[[torch.Tensor], torch.Tensor]

# A writer re-maps its .npy every so many bytes so that written pages leave the process' RSS.
_REMAP_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------------------------
# plan: window positions (MONAI's), cells, and the processing order
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows go, how they cut the volume into cells, and in which order they run.

    Attributes:
        image_size: spatial size of the volume (D, H, W).
        roi_size: window size (after MONAI's ``fall_back_tuple`` for non-positive entries).
        pad_before: voxels MONAI pads in front of each axis where the volume is smaller than the
            window (it pads ``diff // 2`` before and the rest after, with zeros).
        starts: (N, 3) window starts in padded coordinates, in MONAI's order.
        grid: (N, 3) index of each window's start among its axis' distinct starts.
        edges: per axis, the sorted cell boundaries in image coordinates (from 0 to the size).
        cover: (n0, n1, n2) number of windows covering each cell.
        order: (N,) window indices in processing order.
        peak_buffer_voxels: simulated peak of live buffered voxels (per class channel) when the
            windows run in ``order`` in batches of ``sw_batch_size``.
        sw_batch_size: the batch size the order was simulated for.
    """

    image_size: tuple[int, int, int]
    roi_size: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    starts: np.ndarray
    grid: np.ndarray
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]
    cover: np.ndarray
    order: np.ndarray
    peak_buffer_voxels: int
    sw_batch_size: int

    @property
    def num_windows(self) -> int:
        """Number of windows N."""
        return int(self.starts.shape[0])

    def window_cells(self, window: int, axis: int) -> list[tuple[int, slice, slice]]:
        """The cells one window covers along one axis.

        Args:
            window: window index into ``starts``.
            axis: spatial axis (0, 1 or 2).

        Returns:
            ``(cell index, slice in the image, slice in the window)`` for each covered cell.
        """
        edges = self.edges[axis]
        start = int(self.starts[window, axis]) - self.pad_before[axis]
        lo, hi = max(start, 0), min(start + self.roi_size[axis], self.image_size[axis])
        first, last = int(np.searchsorted(edges, lo)), int(np.searchsorted(edges, hi))
        return [
            (c, slice(int(edges[c]), int(edges[c + 1])), slice(int(edges[c]) - start, int(edges[c + 1]) - start))
            for c in range(first, last)
        ]


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    # The rule of monai.inferers.utils._get_scan_interval (private there, so restated here):
    # int(roi * (1 - overlap)), at least 1, and exactly roi where the window spans the axis.
    return tuple(
        int(r) if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap)
    )


def plan_windows(
    image_size: Sequence[int],
    roi_size: Sequence[int] | int,
    overlap: Sequence[float] | float = 0.25,
    sw_batch_size: int = 4,
) -> WindowPlan:
    """Place the windows as MONAI does and choose the order that keeps the fewest scores alive.

    Args:
        image_size: spatial size (D, H, W) of the volume.
        roi_size: window size, an int for a cube; non-positive entries take the volume's size.
        overlap: overlap fraction in [0, 1), one value or one per axis.
        sw_batch_size: windows per network call (the order is simulated batch by batch).

    Returns:
        The :class:`WindowPlan`.

    Raises:
        ValueError: if the sizes are not 3D and positive, or an overlap is outside [0, 1).
    """
    from monai.data.utils import dense_patch_slices
    from monai.utils import ensure_tuple_rep, fall_back_tuple

    size = tuple(int(s) for s in image_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"sliding window: image_size must be 3 positive ints (D, H, W), got {tuple(image_size)}")
    if isinstance(roi_size, Sequence) and len(roi_size) != 3:
        raise ValueError(f"sliding window: roi_size must have 3 entries for a 3D volume, got {tuple(roi_size)}")
    roi = tuple(int(r) for r in fall_back_tuple(roi_size, size))
    ovl = tuple(float(o) for o in ensure_tuple_rep(overlap, 3))
    if any(o < 0 or o >= 1 for o in ovl):
        raise ValueError(f"sliding window: overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sliding window: sw_batch_size must be >= 1, got {sw_batch_size}")

    # MONAI pads a volume smaller than the window symmetrically (diff // 2 before) with zeros.
    padded = tuple(max(s, r) for s, r in zip(size, roi))
    pad_before = tuple((p - s) // 2 for p, s in zip(padded, size))
    slices = dense_patch_slices(padded, roi, _scan_interval(padded, roi, ovl))
    starts = np.asarray([[sl.start for sl in win] for win in slices], dtype=np.int64)
    grid = np.stack([np.unique(starts[:, a], return_inverse=True)[1].ravel() for a in range(3)], axis=1)

    edges, cover_axis, lengths = [], [], []
    for a in range(3):
        lo = np.clip(starts[:, a] - pad_before[a], 0, size[a])
        hi = np.clip(starts[:, a] - pad_before[a] + roi[a], 0, size[a])
        e = np.unique(np.concatenate([lo, hi, [0, size[a]]]))
        edges.append(e)
        lengths.append(np.diff(e))
        pos_lo, pos_hi = np.unique(lo), np.unique(hi)  # one entry per distinct start (sorted alike)
        mids = (e[:-1] + e[1:]) / 2
        cover_axis.append(((pos_lo[:, None] <= mids[None]) & (pos_hi[:, None] > mids[None])).sum(0))
    cover = np.einsum("i,j,k->ijk", *cover_axis)
    volume = np.einsum("i,j,k->ijk", *lengths)

    ranges = np.empty((len(starts), 3, 2), dtype=np.int64)
    for a in range(3):
        lo = np.clip(starts[:, a] - pad_before[a], 0, size[a])
        hi = np.clip(starts[:, a] - pad_before[a] + roi[a], 0, size[a])
        ranges[:, a, 0] = np.searchsorted(edges[a], lo)
        ranges[:, a, 1] = np.searchsorted(edges[a], hi)

    best_order, best_peak = None, None
    for order in _candidate_orders(grid):
        peak = _simulate_peak(order, ranges, cover, volume, sw_batch_size)
        if best_peak is None or peak < best_peak:
            best_order, best_peak = order, peak
    assert best_order is not None and best_peak is not None
    return WindowPlan(
        image_size=size,  # type: ignore[arg-type]
        roi_size=roi,  # type: ignore[arg-type]
        pad_before=pad_before,  # type: ignore[arg-type]
        starts=starts,
        grid=grid,
        edges=tuple(edges),  # type: ignore[arg-type]
        cover=cover,
        order=best_order,
        peak_buffer_voxels=int(best_peak),
        sw_batch_size=sw_batch_size,
    )


def _candidate_orders(grid: np.ndarray) -> list[np.ndarray]:
    """Sweep orders: an outer, a middle and an inner axis, the last two rows of an axis optionally paired.

    Key (outer group, middle group, inner, outer, middle): the live set between outer groups is one
    overlap thick across the middle x inner cross-section, so the order with the thinnest such
    slab wins. Pairing the last two rows of an axis (MONAI shifts the last window back, so it
    overlaps its neighbour more than the others do) keeps that wide overlap inside a group.
    """
    n = grid.max(axis=0) + 1
    seen: set[bytes] = set()
    orders = []
    for outer, middle, inner in itertools.permutations(range(3)):
        for pair_outer, pair_middle in itertools.product((False, True), repeat=2):
            g_o = np.minimum(grid[:, outer], max(n[outer] - 2, 0)) if pair_outer else grid[:, outer]
            g_m = np.minimum(grid[:, middle], max(n[middle] - 2, 0)) if pair_middle else grid[:, middle]
            order = np.lexsort((grid[:, middle], grid[:, outer], grid[:, inner], g_m, g_o))
            key = order.tobytes()
            if key not in seen:
                seen.add(key)
                orders.append(order)
    return orders


def _simulate_peak(
    order: np.ndarray, ranges: np.ndarray, cover: np.ndarray, volume: np.ndarray, batch: int
) -> int:
    """Peak number of buffered voxels (per channel) when windows run in ``order``, ``batch`` at a time."""
    steps = len(order) // batch + 2
    first = np.full(cover.shape, steps, dtype=np.int64)
    last = np.full(cover.shape, -1, dtype=np.int64)
    for rank, w in enumerate(order):
        step = rank // batch
        box = tuple(slice(int(ranges[w, a, 0]), int(ranges[w, a, 1])) for a in range(3))
        np.minimum(first[box], step, out=first[box])
        last[box] = step
    buffered = (cover > 1) & (last >= 0)
    delta = np.zeros(steps + 1, dtype=np.int64)
    np.add.at(delta, first[buffered], volume[buffered])
    np.add.at(delta, last[buffered] + 1, -volume[buffered])
    return int(np.cumsum(delta).max(initial=0))


# ----------------------------------------------------------------------------------------------
# test-time augmentation and the network call
# ----------------------------------------------------------------------------------------------


def tta_flips(tta: bool | Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The axis flips nnU-Net's mirroring averages, besides the unflipped pass.

    Args:
        tta: ``False`` for none; ``True`` for every non-empty subset of the spatial axes (0, 1, 2);
            a sequence of spatial axes (e.g. ``(1, 2)``) for every non-empty subset of those, as
            nnU-Net's ``allowed_mirroring_axes``; or a sequence of axis tuples for those flips only.

    Returns:
        The flips as tuples of spatial axes (0 = D), without the empty flip.

    Raises:
        ValueError: if an axis is not 0, 1 or 2.
    """
    if tta is False or tta is None:
        return []
    if tta is True:
        axes: Sequence = (0, 1, 2)
    else:
        axes = list(tta)
    if axes and all(isinstance(a, (int, np.integer)) for a in axes):
        flat = sorted({int(a) for a in axes})
        flips = [c for i in range(len(flat)) for c in itertools.combinations(flat, i + 1)]
    else:
        flips = [tuple(sorted({int(a) for a in combo})) for combo in axes]
    for flip in flips:
        if any(a not in (0, 1, 2) for a in flip):
            raise ValueError(f"sliding window: tta axes must be spatial axes 0, 1 or 2, got {tta!r}")
    out: list[tuple[int, ...]] = []
    for flip in flips:
        if flip and flip not in out:
            out.append(flip)
    return out


def _call(predictor: Predictor, x: torch.Tensor, roi: tuple[int, ...]) -> torch.Tensor:
    y = predictor(x)
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"sliding window: the predictor must return a logits tensor (B, K, *roi), got {type(y).__name__}"
        )
    if y.ndim != 5 or y.shape[0] != x.shape[0] or tuple(y.shape[2:]) != roi:
        raise ValueError(
            f"sliding window: the predictor returned shape {tuple(y.shape)} for windows {tuple(x.shape)}; "
            f"expected ({x.shape[0]}, K, {', '.join(map(str, roi))})"
        )
    return y


def _predict(
    predictor: Predictor,
    x: torch.Tensor,
    roi: tuple[int, ...],
    flips: list[tuple[int, ...]],
    amp: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """Logits (B, K, *roi) as float32, averaged over the flips (each flipped back) when there are any."""
    with amp():
        y = _call(predictor, x, roi)
    if not flips:
        return y.float()
    acc = y.to(torch.float32, copy=True)  # a copy: the predictor may hand back a view of x
    for flip in flips:
        dims = [a + 2 for a in flip]
        with amp():
            y = _call(predictor, torch.flip(x, dims), roi)
        acc += torch.flip(y, dims)
    return acc.div_(len(flips) + 1)


def _weighted(logits: torch.Tensor, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, *roi) times the importance map (*roi), in place when the tensor is a fresh one."""
    fresh = logits.is_contiguous() and logits.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    return logits.mul_(importance) if fresh else logits * importance


def _amp_context(device: torch.device, autocast: bool | torch.dtype) -> Callable[[], contextlib.AbstractContextManager]:
    if autocast is False or autocast is None:
        return contextlib.nullcontext
    if autocast is True:
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    elif isinstance(autocast, torch.dtype):
        dtype = autocast
    else:
        raise TypeError(f"sliding window: autocast must be a bool or a torch.dtype, got {autocast!r}")
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _single_threaded():
    """Run the many small per-cell CPU operations on one intra-op thread (the network keeps them all).

    Each multi-threaded operation ends in a thread hand-off; for cell-sized work on a busy machine
    that hand-off costs more than the work (measured: 2.2x faster aggregation on 2 loaded cores).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _resolve_device(device: torch.device | str | None, predictor: Predictor, image: torch.Tensor) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(predictor, torch.nn.Module):
        for tensor in itertools.chain(predictor.parameters(), predictor.buffers()):
            return tensor.device
    return image.device


# ----------------------------------------------------------------------------------------------
# window staging: CPU volume -> (B, C, *roi) on the compute device
# ----------------------------------------------------------------------------------------------


def _fill_window(dst: torch.Tensor, image: torch.Tensor, plan: WindowPlan, window: int) -> None:
    """Copy one window (C, *roi) of ``image`` (1, C, D, H, W) into ``dst``, zeros where MONAI pads."""
    src, inner, padded = [], [], False
    for a in range(3):
        start = int(plan.starts[window, a]) - plan.pad_before[a]
        lo, hi = max(start, 0), min(start + plan.roi_size[a], plan.image_size[a])
        src.append(slice(lo, hi))
        inner.append(slice(lo - start, hi - start))
        padded |= hi - lo != plan.roi_size[a]
    if padded:
        dst.zero_()
    dst[(slice(None), *inner)].copy_(image[(0, slice(None), *src)])


class _Stager:
    """Windows straight into a reused buffer on the compute device (CPU, or an image already there)."""

    def __init__(self, image: torch.Tensor, plan: WindowPlan, device: torch.device) -> None:
        self.image, self.plan, self.device = image, plan, device
        self.buf = torch.empty(
            (plan.sw_batch_size, image.shape[1], *plan.roi_size), dtype=image.dtype, device=image.device
        )

    def put(self, windows: Sequence[int]) -> torch.Tensor:
        x = self.buf[: len(windows)]
        for b, w in enumerate(windows):
            _fill_window(x[b], self.image, self.plan, w)
        return x.to(self.device)

    def consumed(self) -> None:
        pass


class _CudaStager:
    """Windows through two pinned host buffers, copied on a side stream while the network runs.

    Slot ``s`` alternates between batches. Before the host fills slot ``s`` again it waits for the
    slot's previous copy; the copy into the slot's device buffer waits (on the side stream, not the
    host) until the network has finished reading it.
    """

    def __init__(self, image: torch.Tensor, plan: WindowPlan, device: torch.device) -> None:
        self.image, self.plan, self.device = image, plan, device
        shape = (plan.sw_batch_size, image.shape[1], *plan.roi_size)
        self.host = [torch.empty(shape, dtype=image.dtype, pin_memory=True) for _ in range(2)]
        self.dev = [torch.empty(shape, dtype=image.dtype, device=device) for _ in range(2)]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.read: list[torch.cuda.Event | None] = [None, None]
        self.stream = torch.cuda.Stream(device=device)
        self.slot = 0

    def put(self, windows: Sequence[int]) -> torch.Tensor:
        s, n = self.slot, len(windows)
        if self.copied[s] is not None:
            self.copied[s].synchronize()  # the host buffer is free once its last copy is done
        host = self.host[s][:n]
        for b, w in enumerate(windows):
            _fill_window(host[b], self.image, self.plan, w)
        with torch.cuda.stream(self.stream):
            if self.read[s] is not None:
                self.stream.wait_event(self.read[s])
            self.dev[s][:n].copy_(host, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        self.copied[s] = copied
        torch.cuda.current_stream(self.device).wait_event(copied)
        return self.dev[s][:n]

    def consumed(self) -> None:
        """Call once the network's work on the last batch is enqueued."""
        read = torch.cuda.Event()
        read.record(torch.cuda.current_stream(self.device))
        self.read[self.slot] = read
        self.slot ^= 1


# ----------------------------------------------------------------------------------------------
# sinks: finished cells -> output labels (and probabilities) on the CPU
# ----------------------------------------------------------------------------------------------


class _ProbabilityWriter:
    """Softmax probabilities (K, D, H, W) as float16 in a .npy file, written cell by cell.

    Cells finish in sweep order, so the file fills slab by slab along the outer sweep axis; the
    memory map is flushed and reopened every 64 MiB so written pages leave the process' memory.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npy":
            raise ValueError(f"sliding window: save_probabilities must name a .npy file, got {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=shape)
        self.pending = 0

    def write(self, region: tuple[slice, ...], probs: torch.Tensor) -> None:
        self.mm[(slice(None), *region)] = probs.numpy()
        self.pending += probs.numel() * 2
        if self.pending >= _REMAP_BYTES:
            self.mm.flush()
            del self.mm
            self.mm = np.load(self.path, mmap_mode="r+")
            self.pending = 0

    def close(self) -> None:
        self.mm.flush()
        del self.mm


class _CpuSink:
    def __init__(self, out: torch.Tensor, writer: _ProbabilityWriter | None) -> None:
        self.out, self.writer = out, writer

    def put(self, region: tuple[slice, ...], labels: torch.Tensor, probs: torch.Tensor | None) -> None:
        self.out[region].copy_(labels)
        if probs is not None and self.writer is not None:
            self.writer.write(region, probs)

    def end_batch(self) -> None:
        pass

    def finish(self) -> None:
        pass


class _CudaSink:
    """Finished cells of a batch leave the GPU in one copy on a side stream into pinned memory.

    The host unpacks a batch into the output only once its copy's event has fired, so the host
    never waits for the GPU except at the very end.
    """

    def __init__(
        self, out: torch.Tensor, writer: _ProbabilityWriter | None, device: torch.device, num_classes: int
    ) -> None:
        self.out, self.writer, self.device, self.num_classes = out, writer, device, num_classes
        self.stream = torch.cuda.Stream(device=device)
        self.cells: list[tuple[tuple[slice, ...], torch.Tensor, torch.Tensor | None]] = []
        self.pending: deque = deque()

    def put(self, region: tuple[slice, ...], labels: torch.Tensor, probs: torch.Tensor | None) -> None:
        self.cells.append((region, labels, probs))

    def end_batch(self) -> None:
        if self.cells:
            regions = [c[0] for c in self.cells]
            labels = torch.cat([c[1].reshape(-1) for c in self.cells]).to(self.out.dtype)  # int64 -> uint8
            probs = torch.cat([c[2].reshape(-1) for c in self.cells]) if self.writer is not None else None
            self.cells = []
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self.stream.wait_event(ready)
                host_labels = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
                host_labels.copy_(labels, non_blocking=True)
                host_probs = None
                if probs is not None:
                    host_probs = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
                    host_probs.copy_(probs, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            # The device tensors stay referenced until the copy is done, so their memory is not reused.
            self.pending.append((done, regions, host_labels, host_probs, labels, probs))
        while self.pending and self.pending[0][0].query():
            self._unpack(self.pending.popleft())

    def _unpack(self, item) -> None:
        _, regions, host_labels, host_probs, _, _ = item
        offset = offset_p = 0
        for region in regions:
            shape = tuple(s.stop - s.start for s in region)
            n = math.prod(shape)
            self.out[region].copy_(host_labels[offset : offset + n].view(shape))
            offset += n
            if host_probs is not None and self.writer is not None:
                m = n * self.num_classes
                self.writer.write(region, host_probs[offset_p : offset_p + m].view(-1, *shape))
                offset_p += m

    def finish(self) -> None:
        self.end_batch()
        while self.pending:
            item = self.pending.popleft()
            item[0].synchronize()
            self._unpack(item)


# ----------------------------------------------------------------------------------------------
# the blender: live cells on the aggregation device
# ----------------------------------------------------------------------------------------------


class _Blender:
    """Adds weighted window logits into per-cell buffers and argmaxes each cell when its last window is in.

    The logits come already multiplied by the importance map (as MONAI does, one vectorised
    multiply per batch); ``importance`` is kept for the weight sums that saved probabilities need.
    ``importance`` None means constant blending: plain sums, and a cell's weight sum is its window
    count.
    """

    def __init__(self, plan: WindowPlan, importance: torch.Tensor | None, sink, with_probs: bool) -> None:
        self.plan, self.importance, self.sink, self.with_probs = plan, importance, sink, with_probs
        self.remaining = plan.cover.copy()
        self.scores: dict[tuple[int, int, int], torch.Tensor] = {}
        self.weights: dict[tuple[int, int, int], torch.Tensor] = {}
        self.live = self.peak = 0
        # Per axis and window position, the cells it covers (computed once, shared by many windows).
        self._cells: list[dict[int, list[tuple[int, slice, slice]]]] = [{}, {}, {}]

    def _axis_cells(self, window: int, axis: int) -> list[tuple[int, slice, slice]]:
        pos = int(self.plan.grid[window, axis])
        cells = self._cells[axis].get(pos)
        if cells is None:
            cells = self._cells[axis][pos] = self.plan.window_cells(window, axis)
        return cells

    def add(self, window: int, logits: torch.Tensor) -> None:
        """Blend one window's importance-weighted logits (K, *roi) into its cells."""
        for c0, c1, c2 in itertools.product(*(self._axis_cells(window, a) for a in range(3))):
            key = (c0[0], c1[0], c2[0])
            region = (c0[1], c1[1], c2[1])
            inner = (c0[2], c1[2], c2[2])
            part = logits[(slice(None), *inner)]
            track = self.with_probs and self.importance is not None
            if self.plan.cover[key] == 1:  # one window only: no buffer
                self._finish(key, region, part, self.importance[inner] if track else None)
                continue
            scores = self.scores.get(key)
            if scores is None:
                # A new contiguous buffer (never a view that would keep the logits batch alive).
                scores = self.scores[key] = torch.clone(part, memory_format=torch.contiguous_format)
                self.live += scores[0].numel()
                self.peak = max(self.peak, self.live)
                if track:
                    self.weights[key] = self.importance[inner].clone(memory_format=torch.contiguous_format)
            else:
                scores.add_(part)
                if track:
                    self.weights[key] += self.importance[inner]
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                del self.scores[key]
                self.live -= scores[0].numel()
                self._finish(key, region, scores, self.weights.pop(key, None))

    def _finish(
        self, key: tuple[int, int, int], region: tuple[slice, ...], scores: torch.Tensor, weights: torch.Tensor | None
    ) -> None:
        labels = torch.max(scores, 0).indices  # the first maximum, as argmax; about 3x faster on the CPU
        probs = None
        if self.with_probs:
            # MONAI's blend: the weighted sum over the summed weights (the window count when constant).
            count = int(self.plan.cover[key])
            blended = scores / weights if weights is not None else scores / count if count > 1 else scores
            probs = torch.softmax(blended, 0).to(torch.float16)
        self.sink.put(region, labels, probs)


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------


def sliding_window_labels(
    image: torch.Tensor,
    predictor: Predictor,
    roi_size: Sequence[int] | int,
    *,
    sw_batch_size: int = 4,
    overlap: Sequence[float] | float = 0.25,
    mode: BlendMode = "gaussian",
    sigma_scale: Sequence[float] | float = 0.125,
    device: torch.device | str | None = None,
    autocast: bool | torch.dtype = False,
    tta: bool | Sequence[int] | Sequence[Sequence[int]] = False,
    save_probabilities: str | Path | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Argmax labels of a whole volume by sliding-window inference, streamed in bounded memory.

    The labels equal ``monai.inferers.sliding_window_inference(image, roi_size, sw_batch_size,
    predictor, overlap, mode, sigma_scale).argmax(1)[0]`` up to float32 near-ties, but no buffer of
    (K x volume) ever exists: each voxel is argmaxed as soon as no remaining window touches it (see
    the module docstring). The volume stays where it is (normally the CPU); windows go to
    ``device`` ``sw_batch_size`` at a time. On a CUDA device the windows pass through pinned memory
    on a side stream while the network runs, the live scores stay on the GPU, and finished labels
    come back on the side stream; GPU memory is the network's plus about (K x overlap x the smallest
    cross-section) floats. On the CPU the network gets all intra-op threads and the per-cell
    blending runs on one (many small operations: thread hand-offs would cost more than they give).
    The predictor's output tensor is scaled by the importance map in place when it is a fresh
    contiguous tensor (as a network's output is); return a copy if you keep a reference to it.

    Args:
        image: (1, C, D, H, W) volume, normally on the CPU.
        predictor: callable (an ``nn.Module`` in eval mode, or any function) from windows
            (B, C, *roi_size) to logits (B, K, *roi_size). It is called under ``torch.inference_mode``.
        roi_size: window size (an int for a cube); non-positive entries take the volume's size.
        sw_batch_size: windows per predictor call.
        overlap: overlap of neighbouring windows in [0, 1), one value or one per axis.
        mode: ``"constant"`` or ``"gaussian"`` blending (MONAI's importance map).
        sigma_scale: Gaussian sigma as a fraction of the window size, one value or one per axis.
        device: where the predictor runs; default: the device of the predictor's first parameter
            (an ``nn.Module``), else the image's.
        autocast: run the predictor under ``torch.autocast``: ``True`` for float16 on CUDA
            (bfloat16 on the CPU), or the dtype to use. Blending is always float32.
        tta: test-time augmentation by axis flips, averaged over the flips per window before
            blending (nnU-Net's mirroring): ``True`` for all 7 flips of (D, H, W), spatial axes
            like ``(1, 2)`` for every flip of those, or explicit flips like ``[(2,), (1, 2)]``.
        save_probabilities: if given, a ``.npy`` path where the softmax of MONAI's blended logits
            is written as float16 with shape (K, D, H, W), cell by cell as cells finish (slab by
            slab along the sweep), never held whole in memory. Read it with
            ``np.load(path, mmap_mode="r")``.
        progress: show a tqdm progress bar over the batches (when tqdm is installed).

    Returns:
        (D, H, W) label map on the CPU: uint8 for K <= 256 classes, int16 for more (int32 above
        32768).

    Raises:
        ValueError: if the image is not (1, C, D, H, W), the predictor's output does not match the
            windows, or the options are invalid.
        TypeError: if the predictor returns something other than a tensor.
    """
    from monai.data import MetaTensor
    from monai.data.utils import compute_importance_map

    if not isinstance(image, torch.Tensor) or image.ndim != 5 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"sliding window: image must be a (1, C, D, H, W) tensor, got {shape}")
    if mode not in ("constant", "gaussian"):
        raise ValueError(f"sliding window: mode must be 'constant' or 'gaussian', got {mode!r}")
    if isinstance(image, MetaTensor):
        image = image.as_tensor()  # plain tensor: slicing a MetaTensor copies its metadata each time
    dev = _resolve_device(device, predictor, image)
    flips = tta_flips(tta)
    amp = _amp_context(dev, autocast)
    plan = plan_windows(tuple(image.shape[2:]), roi_size, overlap, sw_batch_size)
    roi = plan.roi_size
    importance = None
    if mode == "gaussian":  # constant weights are all 1: sums without the multiplications
        importance = compute_importance_map(roi, mode=mode, sigma_scale=sigma_scale, device=dev, dtype=torch.float32)
    return _run(image, predictor, plan, dev, importance, flips, amp, save_probabilities, progress, dev.type == "cuda")


def _run(
    image: torch.Tensor,
    predictor: Predictor,
    plan: WindowPlan,
    dev: torch.device,
    importance: torch.Tensor | None,
    flips: list[tuple[int, ...]],
    amp: Callable[[], contextlib.AbstractContextManager],
    save_probabilities: str | Path | None,
    progress: bool,
    cuda: bool,
) -> torch.Tensor:
    """The streaming loop; ``cuda`` selects the pinned-memory / side-stream pipeline."""
    roi = plan.roi_size
    stager = (_CudaStager if cuda and image.device.type == "cpu" else _Stager)(image, plan, dev)
    out: torch.Tensor | None = None
    writer: _ProbabilityWriter | None = None
    blender: _Blender | None = None
    sink: _CpuSink | _CudaSink | None = None
    num_classes = 0
    size = plan.sw_batch_size
    batches = [plan.order[i : i + size].tolist() for i in range(0, plan.num_windows, size)]
    if progress:
        from monai.utils import optional_import

        tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
        batches = tqdm(batches, desc="sliding window") if has_tqdm else batches
    try:
        with torch.inference_mode():
            for windows in batches:
                with _single_threaded():
                    x = stager.put(windows)
                logits = _predict(predictor, x, roi, flips, amp)
                stager.consumed()
                if blender is None:
                    num_classes = int(logits.shape[1])
                    dtype = torch.from_numpy(np.empty(0, label_dtype(num_classes - 1))).dtype
                    with torch.inference_mode(False):  # a normal tensor: callers may edit it in place
                        out = torch.empty(plan.image_size, dtype=dtype)
                    if save_probabilities is not None:
                        writer = _ProbabilityWriter(save_probabilities, (num_classes, *plan.image_size))
                    sink = _CudaSink(out, writer, dev, num_classes) if cuda else _CpuSink(out, writer)
                    blender = _Blender(plan, importance, sink, writer is not None)
                elif logits.shape[1] != num_classes:
                    raise ValueError(
                        f"sliding window: the predictor returned {logits.shape[1]} channels after {num_classes}"
                    )
                logits = logits.to(dev)
                if importance is not None:
                    logits = _weighted(logits, x, importance)
                with _single_threaded():
                    for b, w in enumerate(windows):
                        blender.add(w, logits[b])
                    del logits, x
                    sink.end_batch()
            sink.finish()
    finally:
        if writer is not None:
            writer.close()
    assert out is not None and blender is not None and sink is not None
    if blender.live != 0 or blender.scores:
        raise RuntimeError("sliding window: internal error, some cells were never finished")
    logger.debug(
        "sliding window: %d windows, peak live buffer %d voxels x %d classes (plan %d)",
        plan.num_windows,
        blender.peak,
        num_classes,
        plan.peak_buffer_voxels,
        extra={"peak_buffer_voxels": blender.peak, "num_classes": num_classes},
    )
    return out
