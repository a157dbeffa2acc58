"""Three-plane slice overlays of image, reference label and prediction for chosen cases.

The display grid is the prediction's grid reoriented to RAS (affine arithmetic only, no resampling
of the prediction). The image and the label are sampled onto each displayed plane in world
coordinates (``scipy.ndimage.map_coordinates``: linear for the image, nearest for labels), reading
only the block of each file that the plane touches, so whole-body volumes are never loaded whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: Display-grid axis held fixed by each plane (RAS: 0 = x/sagittal, 1 = y/coronal, 2 = z/axial).
_PLANE_AXIS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


@dataclass
class CasePlanes:
    """Three orthogonal planes of one case on the display grid.

    Attributes:
        image: ``{plane: (H, W) float32}`` image intensities (NaN outside the image).
        label: ``{plane: (H, W) int}`` reference label ids.
        prediction: ``{plane: (H, W) int}`` predicted label ids.
        aspect: ``{plane: pixel height / pixel width}`` in mm.
        center: (3,) display-grid voxel the planes pass through.
    """

    image: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    prediction: dict[str, np.ndarray]
    aspect: dict[str, float]
    center: tuple[int, int, int]


def _load(path: str | Path, what: str):
    import nibabel as nib  # lazy: only overlays read images

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"{what} {path} is not a readable NIfTI: {exc}") from exc
    shape = img.shape
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise ValueError(f"{what} {path}: expected a 3D volume, got shape {shape}")
    return img


def display_grid(img) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of ``img``'s grid reoriented to RAS (no voxel data touched)."""
    import nibabel as nib

    shape = img.shape[:3]
    ornt = nib.orientations.io_orientation(img.affine)
    to_ras = nib.orientations.inv_ornt_aff(ornt, shape)
    # inv_ornt_aff maps reoriented voxel -> original voxel (as nibabel's as_reoriented uses it);
    # ornt[i, 0] is the RAS axis of input axis i, so output axis j has the size of the input axis
    # whose ornt[i, 0] == j.
    perm = np.argsort(ornt[:, 0].astype(int))
    new_shape = tuple(int(shape[int(i)]) for i in perm)
    return new_shape, img.affine @ to_ras


def _plane_coords(shape: Sequence[int], axis: int, index: int) -> np.ndarray:
    """(3, H, W) voxel coordinates of the plane ``axis == index``; H, W the other axes in order."""
    others = [a for a in range(3) if a != axis]
    g0, g1 = np.meshgrid(np.arange(shape[others[0]]), np.arange(shape[others[1]]), indexing="ij")
    coords = np.empty((3, *g0.shape), dtype=np.float64)
    coords[axis] = index
    coords[others[0]] = g0
    coords[others[1]] = g1
    return coords


def _sample(img, grid_affine: np.ndarray, coords: np.ndarray, order: int, cval: float) -> np.ndarray:
    """Values of ``img`` at display-grid voxel ``coords`` (3, H, W), reading only the needed block."""
    from scipy.ndimage import map_coordinates

    m = np.linalg.inv(img.affine) @ grid_affine
    src = np.tensordot(m[:3, :3], coords, axes=1) + m[:3, 3, None, None]
    shape = np.asarray(img.shape[:3])
    lo = np.clip(np.floor(src.reshape(3, -1).min(axis=1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(src.reshape(3, -1).max(axis=1)).astype(int) + 2, 0, shape)
    if np.any(hi <= lo):
        return np.full(coords.shape[1:], cval, dtype=np.float32)
    index = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    if len(img.shape) > 3:
        index = index + (0,) * (len(img.shape) - 3)
    block = np.asarray(img.dataobj[index], dtype=np.float32)
    return map_coordinates(block, src - lo[:, None, None], order=order, mode="constant", cval=cval,
                           prefilter=False).astype(np.float32)


def _center(label, pred, grid_affine: np.ndarray, grid_shape: Sequence[int]) -> tuple[int, int, int]:
    """Display voxel through the reference foreground's centre (prediction's if the label is empty)."""
    from scipy.ndimage import center_of_mass

    for img in (label, pred):
        step = max(1, int(math.ceil(max(img.shape[:3]) / 128)))  # coarse read: the centre only
        idx = (slice(None, None, step),) * 3 + (0,) * (len(img.shape) - 3)
        fg = np.asarray(img.dataobj[idx]) > 0
        if fg.any():
            com = np.asarray(center_of_mass(fg)) * step
            world = img.affine @ np.append(com, 1.0)
            vox = np.linalg.inv(grid_affine) @ world
            return tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(vox[:3], grid_shape))
    return tuple(int(s // 2) for s in grid_shape)


def load_case_planes(image: str | Path, label: str | Path, prediction: str | Path) -> CasePlanes:
    """Sample the three planes through the organ centre of one case onto the prediction's grid.

    Args:
        image: image NIfTI (any grid; sampled in world coordinates).
        label: reference label NIfTI.
        prediction: prediction NIfTI; its grid, reoriented to RAS, is the display grid.

    Returns:
        The planes, as :class:`CasePlanes`.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming a file that is unreadable or not 3D.
    """
    img = _load(image, "image")
    lab = _load(label, "label")
    pred = _load(prediction, "prediction")
    shape, affine = display_grid(pred)
    center = _center(lab, pred, affine, shape)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = CasePlanes({}, {}, {}, {}, center)
    for plane, axis in _PLANE_AXIS.items():
        coords = _plane_coords(shape, axis, center[axis])
        out.image[plane] = _sample(img, affine, coords, order=1, cval=np.nan)
        out.label[plane] = _sample(lab, affine, coords, order=0, cval=0).astype(np.int32)
        out.prediction[plane] = _sample(pred, affine, coords, order=0, cval=0).astype(np.int32)
        rows, cols = [a for a in range(3) if a != axis]
        out.aspect[plane] = float(zooms[cols] / zooms[rows])
    return out


def _boundary(lab: np.ndarray) -> np.ndarray:
    """Pixels of a label map whose 4-neighbourhood holds another id (organ outlines)."""
    p = np.pad(lab, 1, mode="edge")
    c = p[1:-1, 1:-1]
    edge = (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])
    return edge & (lab > 0)


def _colors(n: int) -> np.ndarray:
    from matplotlib import colormaps

    base = colormaps["tab20"].colors
    return np.array([base[i % len(base)] for i in range(n)])


def overlay_figure(
    cases: Sequence[tuple[str, CasePlanes]],
    organ_names: Mapping[int, str] | None = None,
    title: str = "",
    pet: bool = False,
) -> Figure:
    """Rows of cases x columns of planes: image in grey, prediction filled, reference outlined.

    Planes are shown in the radiological convention: patient right on the image left in axial and
    coronal planes, anterior on the left in sagittal ones, superior / anterior up.

    Args:
        cases: ``(row title, planes)`` per row, e.g. best, median, worst.
        organ_names: ``{label id: organ}`` for the legend.
        title: figure title.
        pet: window the image for PET (0 to the 99.5th percentile) instead of 1st-99th percentile.
    """
    n_ids = 1 + max([1] + [int(max(c.label[p].max(), c.prediction[p].max())) for _, c in cases for p in PLANES])
    colors = _colors(n_ids)
    fill = ListedColormap(np.vstack([[0, 0, 0], colors[1:]])) if n_ids > 1 else ListedColormap([[0, 0, 0]])
    fig = Figure(figsize=(9.5, 3.1 * len(cases) + 0.6), layout="constrained")
    axes = fig.subplots(len(cases), len(PLANES), squeeze=False)
    present: set[int] = set()
    for r, (row_title, planes) in enumerate(cases):
        vals = np.concatenate([planes.image[p][np.isfinite(planes.image[p])] for p in PLANES] + [np.zeros(1)])
        lo, hi = (0.0, float(np.percentile(vals, 99.5))) if pet else tuple(np.percentile(vals, [1, 99]))
        for c, plane in enumerate(PLANES):
            ax = axes[r, c]
            ax.set_facecolor("black")
            # rows: the plane's second axis upwards (origin lower); columns reversed for the
            # radiological convention (patient right on image left, anterior on the left)
            img = planes.image[plane].T[:, ::-1]
            lab = planes.label[plane].T[:, ::-1]
            prd = planes.prediction[plane].T[:, ::-1]
            present |= set(np.unique(lab).tolist()) | set(np.unique(prd).tolist())
            kw = {"origin": "lower", "aspect": planes.aspect[plane], "interpolation": "nearest"}
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, **kw)
            ax.imshow(np.ma.masked_equal(prd, 0), cmap=fill, vmin=0, vmax=n_ids - 1, alpha=0.45, **kw)
            edge = _boundary(lab)
            rgba = np.zeros((*lab.shape, 4))
            rgba[edge, :3] = colors[lab[edge]]
            rgba[edge, 3] = 1.0
            ax.imshow(rgba, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane, fontsize=9)
            if c == 0:
                ax.set_ylabel(row_title, fontsize=9)
    present.discard(0)
    names = organ_names or {}
    handles = [Patch(color=colors[i], label=names.get(i, str(i))) for i in sorted(present) if i < n_ids]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(7, len(handles)), fontsize=7)
    fig.suptitle(f"{title}\nfill: prediction, outline: reference" if title else "fill: prediction, outline: reference",
                 fontsize=10)
    return fig


def overlay_figures(
    selected: pd.DataFrame,
    organ_names: Mapping[int, str] | None = None,
) -> tuple[dict[str, Figure], list[str]]:
    """One overlay figure per model x view from :func:`discrepancy.select_cases` rows.

    Args:
        selected: rows with ``model, view, which, case_id, score, image, label, prediction``.
        organ_names: ``{label id: organ}`` for the legend.

    Returns:
        ``({"overlay_<model>_<view>": figure}, skipped)`` where ``skipped`` explains each case whose
        files were missing or unreadable (the figure then holds the remaining cases, or is absent).
    """
    from .figures import safe_name

    figs: dict[str, Figure] = {}
    skipped: list[str] = []
    cols = ["image", "label", "prediction"]
    if selected.empty or not set(cols) <= set(selected.columns):
        return figs, ["no image/label/prediction columns in the results table"]
    given = selected[cols].fillna("").astype(str).apply(lambda s: s.str.strip().isin(["", "nan", "None"]))
    if given.to_numpy().all():
        return figs, ["the results table holds no image/label/prediction paths"]
    cache: dict[tuple[str, str, str], CasePlanes | None] = {}
    for (model, view), g in selected.groupby(["model", "view"], sort=False):
        rows = []
        # one row per distinct case: with few cases, best, median and worst may be the same one
        merged = g.groupby("case_id", sort=False).agg(which=("which", " = ".join), score=("score", "first"),
                                                      image=("image", "first"), label=("label", "first"),
                                                      prediction=("prediction", "first")).reset_index()
        for _, r in merged.iterrows():
            key = (str(r["image"]), str(r["label"]), str(r["prediction"]))
            if key not in cache:
                try:
                    if not all(k and k != "nan" for k in key):
                        raise FileNotFoundError("empty path")
                    cache[key] = load_case_planes(*key)
                except (FileNotFoundError, ValueError) as exc:
                    cache[key] = None
                    skipped.append(f"{model}/{view}/{r['case_id']}: {exc}")
            if cache[key] is not None:
                rows.append((f"{r['which']}: {r['case_id']}\nDice {r['score']:.2f}", cache[key]))
        if rows:
            figs[f"overlay_{safe_name(model)}_{safe_name(view)}"] = overlay_figure(
                rows, organ_names, title=f"{model} - {view}: best, median and worst case",
                pet=str(view).startswith("PET"))
    return figs, skipped
