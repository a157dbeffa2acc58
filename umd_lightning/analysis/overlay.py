"""Three-plane slice overlays of image, reference label and prediction for chosen cases.

The display grid is the prediction's grid reoriented to RAS (affine arithmetic only, no resampling
of the prediction). The image and the label are sampled onto each displayed plane in world
coordinates (``scipy.ndimage.map_coordinates``: linear for the image, nearest for labels). An
uncompressed file is read one slab per plane; a gzipped one is decompressed once (reading a slab of
it decompresses everything before the slab anyway).

The planes pass through the case's worst organ (lowest Dice among organs with a non-empty
reference), so a missed organ is in view. Each panel carries orientation letters taken from the
display affine and a scale bar in mm; each row a colourbar in the view's units (SUV for PET).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .figures import FIGURE_DPI, FIGURE_FORMATS, organ_colors, safe_name, save_figure

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: Display-grid axis held fixed by each plane (RAS: 0 = x/sagittal, 1 = y/coronal, 2 = z/axial).
_PLANE_AXIS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
#: Colourbar label of an image row, by view (the data module hands PET in SUV, CT in HU).
IMAGE_UNITS: dict[str, str] = {"CT": "HU", "PET_CT": "SUV", "PET_MRI": "SUV", "MRI": "MRI signal (a.u.)"}
_SCALE_BARS_MM = (5, 10, 20, 50, 100, 200)


@dataclass
class CasePlanes:
    """Three orthogonal planes of one case on the display grid.

    Attributes:
        image: ``{plane: (H, W) float32}`` image intensities (NaN outside the image).
        label: ``{plane: (H, W) int}`` reference label ids.
        prediction: ``{plane: (H, W) int}`` predicted label ids.
        aspect: ``{plane: pixel height / pixel width}`` in mm, as displayed.
        center: (3,) display-grid voxel the planes pass through.
        affine: display grid voxel -> world (mm).
        spacing: ``{plane: (mm per displayed column, mm per displayed row)}``.
        focus: label id the planes were centred on (the worst organ), or None.
    """

    image: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    prediction: dict[str, np.ndarray]
    aspect: dict[str, float]
    center: tuple[int, int, int]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    spacing: dict[str, tuple[float, float]] = field(default_factory=dict)
    focus: int | None = None


def display(arr: np.ndarray) -> np.ndarray:
    """A plane array as drawn with ``origin="lower"``: its second axis upwards, its first reversed.

    Reversing the first (R->L in RAS, A->P for sagittal) gives the radiological convention: patient
    right on the image left in axial and coronal planes, anterior on the left in sagittal ones.
    """
    return arr.T[:, ::-1]


def orientation_letters(affine: np.ndarray, plane: str) -> dict[str, str]:
    """Anatomical direction at each edge of a displayed plane, from the display grid's affine.

    Args:
        affine: display grid voxel -> world (RAS mm).
        plane: ``axial``, ``coronal`` or ``sagittal`` (the grid axis 2, 1 or 0 held fixed).

    Returns:
        ``{"left", "right", "bottom", "top": letter}``; e.g. ``R, L, P, A`` for an axial plane of
        an RAS grid. Flipping a grid axis in the affine swaps the letters of that axis.
    """
    import nibabel as nib

    codes = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))
    cols, rows = [a for a in range(3) if a != _PLANE_AXIS[plane]]
    # display(): the first plane axis runs right-to-left, the second bottom-to-top
    return {"left": codes[cols], "right": _OPPOSITE[codes[cols]], "bottom": _OPPOSITE[codes[rows]],
            "top": codes[rows]}


def scale_bar_mm(width_mm: float) -> int:
    """A round scale-bar length: the largest of 5, 10, 20, 50, 100, 200 mm within a quarter of the panel."""
    fit = [b for b in _SCALE_BARS_MM if b <= width_mm / 4]
    return fit[-1] if fit else _SCALE_BARS_MM[0]


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


class _Volume:
    """A NIfTI's voxels: slabs from an uncompressed file, one decompression of a gzipped one."""

    def __init__(self, img) -> None:
        self.img = img
        self.affine = img.affine
        self.shape = tuple(int(s) for s in img.shape[:3])
        self._whole: np.ndarray | None = None
        self._gz = str(img.get_filename() or "").endswith(".gz")

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        if self._gz or self._whole is not None:
            return self.whole()[index]
        return np.asanyarray(self.img.dataobj[index + (0,) * (len(self.img.shape) - 3)])

    def whole(self) -> np.ndarray:
        if self._whole is None:
            data = np.asanyarray(self.img.dataobj)
            self._whole = data.reshape(data.shape[:3])
        return self._whole


def _sample(vol: _Volume, grid_affine: np.ndarray, coords: np.ndarray, order: int, cval: float) -> np.ndarray:
    """Values of ``vol`` at display-grid voxel ``coords`` (3, H, W), reading only the needed block."""
    from scipy.ndimage import map_coordinates

    m = np.linalg.inv(vol.affine) @ grid_affine
    src = np.tensordot(m[:3, :3], coords, axes=1) + m[:3, 3, None, None]
    shape = np.asarray(vol.shape)
    lo = np.clip(np.floor(src.reshape(3, -1).min(axis=1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(src.reshape(3, -1).max(axis=1)).astype(int) + 2, 0, shape)
    if np.any(hi <= lo):
        return np.full(coords.shape[1:], cval, dtype=np.float32)
    block = vol.block(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)))
    return map_coordinates(block, src - lo[:, None, None], order=order, mode="constant", cval=cval,
                           prefilter=False, output=np.float32)


def _center(label: _Volume, pred: _Volume, grid_affine: np.ndarray, grid_shape: Sequence[int],
            focus: int | None = None) -> tuple[tuple[int, int, int], int | None]:
    """Display voxel the planes pass through, and the label id it was chosen for.

    The reference voxel of ``focus`` nearest to that organ's centroid (inside the organ even when
    it is curved, e.g. the colon); else the reference foreground's centroid, else the prediction's,
    else the grid centre.
    """
    from scipy.ndimage import center_of_mass

    for vol, organ in ((label, focus), (label, None), (pred, None)):
        data = vol.whole()
        fg = data == organ if organ is not None else data > 0
        if not fg.any():
            continue
        vox = np.asarray(center_of_mass(fg))
        if organ is not None:
            pts = np.argwhere(fg)
            vox = pts[np.argmin(((pts - vox) ** 2).sum(axis=1))].astype(np.float64)
        disp = np.linalg.inv(grid_affine) @ (vol.affine @ np.append(vox, 1.0))
        return tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(disp[:3], grid_shape)), organ
    return tuple(int(s // 2) for s in grid_shape), None


def load_case_planes(image: str | Path, label: str | Path, prediction: str | Path,
                     focus: int | None = None) -> CasePlanes:
    """Sample the three planes of one case onto the prediction's grid, through organ ``focus``.

    Args:
        image: image NIfTI (any grid; sampled in world coordinates).
        label: reference label NIfTI.
        prediction: prediction NIfTI; its grid, reoriented to RAS, is the display grid.
        focus: label id to centre the planes on (the case's worst organ); default (or when the
            reference lacks it) the reference foreground's centre.

    Returns:
        The planes, as :class:`CasePlanes`.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming a file that is unreadable or not 3D.
    """
    img = _Volume(_load(image, "image"))
    lab = _Volume(_load(label, "label"))
    pred = _Volume(_load(prediction, "prediction"))
    shape, affine = display_grid(pred.img)
    center, focus = _center(lab, pred, affine, shape, focus)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = CasePlanes({}, {}, {}, {}, center, affine=affine, focus=focus)
    for plane, axis in _PLANE_AXIS.items():
        coords = _plane_coords(shape, axis, center[axis])
        out.image[plane] = _sample(img, affine, coords, order=1, cval=np.nan)
        out.label[plane] = _sample(lab, affine, coords, order=0, cval=0).astype(np.int32)
        out.prediction[plane] = _sample(pred, affine, coords, order=0, cval=0).astype(np.int32)
        cols, rows = [a for a in range(3) if a != axis]  # displayed columns, rows (see display())
        out.aspect[plane] = float(zooms[rows] / zooms[cols])
        out.spacing[plane] = (float(zooms[cols]), float(zooms[rows]))
    return out


def _boundary(lab: np.ndarray) -> np.ndarray:
    """Pixels of a label map whose 4-neighbourhood holds another id (organ outlines)."""
    p = np.pad(lab, 1, mode="edge")
    c = p[1:-1, 1:-1]
    edge = (c != p[:-2, 1:-1]) | (c != p[2:, 1:-1]) | (c != p[1:-1, :-2]) | (c != p[1:-1, 2:])
    return edge & (lab > 0)


def _color_table(n_ids: int, names: Mapping[int, str]) -> np.ndarray:
    """(n_ids, 3) RGB per label id: the organ's colour (figures.ORGAN_COLOR); black for background."""
    colors = organ_colors({i: names.get(i, str(i)) for i in range(1, n_ids)})
    return np.array([(0.0, 0.0, 0.0)] + [to_rgb(colors[i]) for i in range(1, n_ids)])


def image_window(planes: CasePlanes, pet: bool) -> tuple[float, float]:
    """Display range of a case: SUV 0 to the 99.5th percentile for PET, else the 1st-99th percentile."""
    vals = np.concatenate([planes.image[p][np.isfinite(planes.image[p])] for p in PLANES] + [np.zeros(1)])
    lo, hi = (0.0, float(np.percentile(vals, 99.5))) if pet else tuple(float(v) for v in np.percentile(vals, [1, 99]))
    return lo, hi if hi > lo else lo + 1.0


FILL_ALPHA = 0.45


def compose(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, window: tuple[float, float],
            colors: np.ndarray) -> np.ndarray:
    """One RGB picture of a displayed plane: grey image, prediction filled (alpha 0.45), reference outlined.

    Blended here in numpy rather than as three stacked ``imshow`` layers: a 300-dpi render then
    resamples one image per panel instead of three.

    Args:
        image: (H, W) intensities (NaN outside the image: black).
        label: (H, W) reference label ids; their outlines are drawn opaque in the organ's colour.
        prediction: (H, W) predicted label ids, filled.
        window: intensities mapped to black and white.
        colors: (n_ids, 3) RGB per label id.

    Returns:
        (H, W, 3) float RGB in [0, 1].
    """
    lo, hi = window
    grey = np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    filled = prediction > 0
    rgb[filled] = (1 - FILL_ALPHA) * rgb[filled] + FILL_ALPHA * colors[prediction[filled]]
    edge = _boundary(label)
    rgb[edge] = colors[label[edge]]
    return rgb


def _annotate_panel(ax, planes: CasePlanes, plane: str, shape: tuple[int, int]) -> None:
    """Orientation letters at the panel's edges and a scale bar (bottom left) in mm."""
    letters = orientation_letters(planes.affine, plane)
    style = {"color": "yellow", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, letters["left"], ha="left", va="center", gid="orient-left", **style)
    ax.text(0.98, 0.5, letters["right"], ha="right", va="center", gid="orient-right", **style)
    ax.text(0.5, 0.98, letters["top"], ha="center", va="top", gid="orient-top", **style)
    ax.text(0.5, 0.02, letters["bottom"], ha="center", va="bottom", gid="orient-bottom", **style)
    col_mm, _ = planes.spacing[plane]
    h, w = shape
    bar = scale_bar_mm(w * col_mm)
    x0, y0 = 0.04 * w, 0.06 * h
    ax.plot([x0, x0 + bar / col_mm], [y0, y0], color="white", lw=2.5, solid_capstyle="butt", gid="scalebar")
    ax.text(x0, y0 + 0.02 * h, f"{bar} mm", color="white", fontsize=7, ha="left", va="bottom", gid="scalebar-label")


def _extent_mm(planes: CasePlanes, plane: str) -> tuple[float, float]:
    h, w = display(planes.label[plane]).shape
    col_mm, row_mm = planes.spacing[plane]
    return w * col_mm, h * row_mm


def overlay_figure(
    cases: Sequence[tuple[str, CasePlanes]],
    organ_names: Mapping[int, str] | None = None,
    title: str = "",
    pet: bool = False,
    unit: str | None = None,
) -> Figure:
    """Rows of cases x columns of planes: image in grey, prediction filled, reference outlined.

    Planes are shown in the radiological convention (see :func:`display`), with orientation letters,
    a scale bar and, per row, a colourbar of the image in ``unit``. The layout is fixed (no
    constrained layout: it cost more than the drawing), panel widths follow the planes' extents in mm.

    Args:
        cases: ``(row title, planes)`` per row, e.g. best, median, worst.
        organ_names: ``{label id: organ}`` for the colours (``figures.ORGAN_COLOR``) and the legend.
        title: figure title.
        pet: window the image for PET (SUV 0 to the 99.5th percentile) instead of the 1st-99th percentile.
        unit: colourbar label (default ``SUV`` for PET, else ``intensity``).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = dict(organ_names or {})
    n_ids = 1 + max([1, *names] + [int(max(c.label[p].max(), c.prediction[p].max())) for _, c in cases for p in PLANES])
    colors = _color_table(n_ids, names)
    ratios = [max(w / h for w, h in (_extent_mm(c, p) for _, c in cases)) for p in PLANES]
    row_h = 3.0
    width = 1.0 + row_h * sum(ratios) + 0.9
    height = 0.8 + row_h * len(cases) + 0.7
    fig = Figure(figsize=(width, height))
    grid = fig.add_gridspec(len(cases), len(PLANES) + 1, width_ratios=[*ratios, 0.06], left=0.9 / width,
                            right=1 - 0.65 / width, top=1 - 0.8 / height, bottom=0.7 / height, wspace=0.04,
                            hspace=0.06)
    present: set[int] = set()
    for r, (row_title, planes) in enumerate(cases):
        window = image_window(planes, pet)
        for c, plane in enumerate(PLANES):
            ax = fig.add_subplot(grid[r, c])
            ax.set_facecolor("black")
            lab, prd = display(planes.label[plane]), display(planes.prediction[plane])
            present |= set(np.unique(lab).tolist()) | set(np.unique(prd).tolist())
            rgb = compose(display(planes.image[plane]), lab, prd, window, colors)
            # "none": an SVG embeds the picture at its own resolution (no 150-dpi resampling); PNG draws it nearest
            ax.imshow(rgb, origin="lower", aspect=planes.aspect[plane], interpolation="none")
            _annotate_panel(ax, planes, plane, lab.shape)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane, fontsize=9)
            if c == 0:
                ax.set_ylabel(row_title, fontsize=8)
        cax = fig.add_subplot(grid[r, -1])
        fig.colorbar(ScalarMappable(Normalize(*window), "gray"), cax=cax,
                     label=unit or ("SUV" if pet else "intensity"))
    present.discard(0)
    handles = [Patch(color=colors[i], label=names.get(i, str(i))) for i in sorted(present) if i < n_ids]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncols=min(7, len(handles)), fontsize=7, frameon=False)
    what = "fill: prediction, outline: reference; planes through the case's worst organ"
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=10)
    return fig


def worst_organs(results: pd.DataFrame, selected: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per selected case, its worst organ: lowest ``metric`` among organs with a non-empty reference.

    Args:
        results: results table (``case_id, model, view, organ, label_id`` and ``ref_voxels`` or ``status``).
        selected: rows of :func:`discrepancy.select_cases`.

    Returns:
        ``selected`` with ``worst_organ``, ``worst_label`` (label id, or -1) and ``worst_score``.
    """
    out = selected.copy()
    out["worst_organ"], out["worst_label"], out["worst_score"] = "", -1, np.nan
    if results is None or results.empty or selected.empty or "label_id" not in results.columns:
        return out
    d = results[np.isfinite(results[metric].to_numpy(np.float64))]
    if "ref_voxels" in d.columns:
        d = d[d["ref_voxels"].to_numpy(np.float64) > 0]
    else:
        d = d[d["status"].isin(["ok", "missed"])]
    # the lowest score; among equals the first organ in label order
    d = d.sort_values([metric, "label_id"], kind="stable").drop_duplicates(["model", "view", "case_id"])
    worst = d.set_index(["model", "view", "case_id"])
    for i, row in out.iterrows():
        key = (row["model"], row["view"], row["case_id"])
        if key in worst.index:
            w = worst.loc[key]
            out.at[i, "worst_organ"], out.at[i, "worst_label"] = str(w["organ"]), int(w["label_id"])
            out.at[i, "worst_score"] = float(w[metric])
    return out


@dataclass
class OverlayCase:
    """One case drawn in a view's overlay figure (kept for logging masks, e.g. to wandb)."""

    model: str
    view: str
    caption: str
    planes: CasePlanes


def overlay_cases(
    selected: pd.DataFrame,
    results: pd.DataFrame | None = None,
) -> tuple[dict[tuple[str, str], list[OverlayCase]], list[str]]:
    """Sample the planes of every selected case through its worst organ.

    Args:
        selected: rows with ``model, view, which, case_id, score, image, label, prediction``.
        results: the results table, for each case's worst organ (without it, the planes pass
            through the reference foreground's centre).

    Returns:
        ``({(model, view): [case, ...]}, skipped)`` where ``skipped`` explains each case whose files
        were missing or unreadable.
    """
    cols = ["image", "label", "prediction"]
    if selected.empty or not set(cols) <= set(selected.columns):
        return {}, ["no image/label/prediction columns in the results table"]
    given = selected[cols].fillna("").astype(str).apply(lambda s: s.str.strip().isin(["", "nan", "None"]))
    if given.to_numpy().all():
        return {}, ["the results table holds no image/label/prediction paths"]
    selected = worst_organs(results, selected) if results is not None else worst_organs(pd.DataFrame(), selected)
    out: dict[tuple[str, str], list[OverlayCase]] = {}
    skipped: list[str] = []
    cache: dict[tuple[str, ...], CasePlanes | None] = {}
    for (model, view), g in selected.groupby(["model", "view"], sort=False):
        # one row per distinct case: with few cases, best, median and worst may be the same one
        merged = g.groupby("case_id", sort=False).agg(
            which=("which", " = ".join), score=("score", "first"), image=("image", "first"),
            label=("label", "first"), prediction=("prediction", "first"), worst_organ=("worst_organ", "first"),
            worst_label=("worst_label", "first"), worst_score=("worst_score", "first")).reset_index()
        for _, r in merged.iterrows():
            key = (str(r["image"]), str(r["label"]), str(r["prediction"]), str(r["worst_label"]))
            if key not in cache:
                try:
                    if not all(k and k != "nan" for k in key[:3]):
                        raise FileNotFoundError("empty path")
                    focus = int(r["worst_label"]) if int(r["worst_label"]) > 0 else None
                    cache[key] = load_case_planes(*key[:3], focus=focus)
                except (FileNotFoundError, ValueError) as exc:
                    cache[key] = None
                    skipped.append(f"{model}/{view}/{r['case_id']}: {exc}")
            planes = cache[key]
            if planes is None:
                continue
            caption = f"{r['which']}: {r['case_id']}\nDice {r['score']:.2f}"
            if r["worst_organ"] and planes.focus == int(r["worst_label"]):
                caption += f"; worst organ {r['worst_organ']} {r['worst_score']:.2f}"
            out.setdefault((str(model), str(view)), []).append(OverlayCase(str(model), str(view), caption, planes))
    return out, skipped


def overlay_figures(
    selected: pd.DataFrame,
    organ_names: Mapping[int, str] | None = None,
    results: pd.DataFrame | None = None,
) -> tuple[dict[str, Figure], list[str]]:
    """One overlay figure per model x view from :func:`discrepancy.select_cases` rows.

    Args:
        selected: rows with ``model, view, which, case_id, score, image, label, prediction``.
        organ_names: ``{label id: organ}`` for colours and legend.
        results: the results table, so the planes pass through each case's worst organ.

    Returns:
        ``({"overlay_<model>_<view>": figure}, skipped)`` where ``skipped`` explains each case whose
        files were missing or unreadable (the figure then holds the remaining cases, or is absent).
    """
    cases, skipped = overlay_cases(selected, results)
    return _figures(cases, organ_names), skipped


def _figures(cases: Mapping[tuple[str, str], list[OverlayCase]], organ_names: Mapping[int, str] | None) -> dict[str, Figure]:
    figs = {}
    for (model, view), rows in cases.items():
        pet = view.startswith("PET")
        figs[f"overlay_{safe_name(model)}_{safe_name(view)}"] = overlay_figure(
            [(c.caption, c.planes) for c in rows], organ_names, title=f"{model} - {view}: best, median and worst case",
            pet=pet, unit=IMAGE_UNITS.get(view))
    return figs


def render_overlays(
    selected: pd.DataFrame,
    organ_names: Mapping[int, str] | None,
    results: pd.DataFrame | None,
    fig_dir: str | Path,
    dpi: int = FIGURE_DPI,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> tuple[dict[str, dict[str, Path]], list[str], dict[tuple[str, str], list[OverlayCase]]]:
    """Build and save every overlay figure (a plain function, so a worker process can run it).

    Returns:
        ``({name: {format: path}}, skipped, cases)``; ``cases`` as :func:`overlay_cases` gives them.
    """
    cases, skipped = overlay_cases(selected, results)
    Path(fig_dir).mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in _figures(cases, organ_names).items():
        paths[name] = save_figure(fig, Path(fig_dir) / name, dpi=dpi, formats=formats)
    return paths, skipped, cases
