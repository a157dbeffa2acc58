"""Overlay sampling in world coordinates on tiny NIfTI files with known geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from scipy.ndimage import binary_erosion

from umd_lightning.analysis.figures import ORGAN_COLOR
from umd_lightning.analysis.overlay import (
    PLANES,
    display,
    display_grid,
    image_window,
    load_case_planes,
    orientation_letters,
    overlay_cases,
    overlay_figure,
    overlay_figures,
    render_overlays,
    scale_bar_mm,
    worst_organs,
)

# Display grid: the prediction, stored LPS-like (x and y flipped) with axes permuted (z, y, x order).
PRED_SHAPE = (12, 14, 16)  # stored axes: (z, y, x)
PRED_AFFINE = np.array([
    [0.0, 0.0, -2.0, 40.0],   # stored axis 2 -> world x, flipped
    [0.0, -2.0, 0.0, 30.0],   # stored axis 1 -> world y, flipped
    [3.0, 0.0, 0.0, -10.0],   # stored axis 0 -> world z
    [0.0, 0.0, 0.0, 1.0],
])
# Image on a finer RAS grid covering more than the prediction; value = a linear function of world mm.
IMG_SHAPE = (40, 40, 40)
IMG_AFFINE = np.array([[1.0, 0, 0, -5.0], [0, 1.0, 0, -5.0], [0, 0, 1.5, -15.0], [0, 0, 0, 1]])


def linear(x, y, z):
    return 0.5 * x + 2.0 * y - 1.0 * z + 3.0


def world_of(affine, ijk):
    return (affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


def write_case(tmp_path):
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in IMG_SHAPE], indexing="ij")
    xyz = world_of(IMG_AFFINE, np.c_[ii.ravel(), jj.ravel(), kk.ravel()])
    image = linear(*xyz.T).reshape(IMG_SHAPE).astype(np.float32)
    # A box organ (id 4) in world coordinates, drawn on the prediction's stored grid; the label is
    # the same voxels stored in RAS order (so label and prediction agree everywhere).
    pi, pj, pk = np.meshgrid(*[np.arange(s) for s in PRED_SHAPE], indexing="ij")
    pw = world_of(PRED_AFFINE, np.c_[pi.ravel(), pj.ravel(), pk.ravel()])
    box = ((pw[:, 0] > 14) & (pw[:, 0] < 26) & (pw[:, 1] > 8) & (pw[:, 1] < 20) & (pw[:, 2] > 2) & (pw[:, 2] < 20))
    pred = np.where(box, 4, 0).reshape(PRED_SHAPE).astype(np.uint8)
    pred_img = nib.Nifti1Image(pred, PRED_AFFINE)
    canon = nib.as_closest_canonical(pred_img)
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("image", "label", "prediction")}
    nib.save(nib.Nifti1Image(image, IMG_AFFINE), str(paths["image"]))
    nib.save(canon, str(paths["label"]))
    nib.save(pred_img, str(paths["prediction"]))
    return paths, canon


def test_display_grid_matches_nibabel_canonical_reorientation():
    img = nib.Nifti1Image(np.zeros(PRED_SHAPE, np.uint8), PRED_AFFINE)
    shape, affine = display_grid(img)
    canon = nib.as_closest_canonical(img)
    assert shape == canon.shape
    np.testing.assert_allclose(affine, canon.affine)


def test_planes_sample_the_image_in_world_coordinates(tmp_path):
    paths, canon = write_case(tmp_path)
    planes = load_case_planes(paths["image"], paths["label"], paths["prediction"])
    ci, cj, ck = planes.center
    # the centre is the box centroid: world (20, 14, 11) on the canonical grid (bounds inclusive)
    fg = np.argwhere(np.asarray(canon.dataobj) > 0).mean(axis=0)
    np.testing.assert_allclose(planes.center, np.round(fg), atol=1)
    nx, ny, nz = canon.shape
    gi, gj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    world = world_of(canon.affine, np.c_[gi.ravel(), gj.ravel(), np.full(gi.size, ck)])
    expected = linear(*world.T).reshape(nx, ny)
    inside = np.isfinite(planes.image["axial"])
    # the image ends at world x = 34 mm; beyond it the plane is NaN (shown black), not zero
    np.testing.assert_array_equal(inside, (world[:, 0] <= 34.0 + 1e-6).reshape(nx, ny))
    assert 0.5 < inside.mean() < 1.0
    np.testing.assert_allclose(planes.image["axial"][inside], expected[inside], atol=1e-3)
    # labels: nearest sampling of the same voxels stored in another orientation is exact
    data = np.asarray(canon.dataobj)
    np.testing.assert_array_equal(planes.label["axial"], data[:, :, ck])
    np.testing.assert_array_equal(planes.prediction["coronal"], data[:, cj, :])
    np.testing.assert_array_equal(planes.label["sagittal"], data[ci, :, :])
    assert planes.aspect["axial"] == pytest.approx(1.0)  # 2 mm x 2 mm
    assert planes.aspect["coronal"] == pytest.approx(1.5)  # z 3 mm over x 2 mm


def test_bad_files_are_named(tmp_path):
    paths, _ = write_case(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        load_case_planes(tmp_path / "missing.nii.gz", paths["label"], paths["prediction"])
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(ValueError, match="4d.nii.gz: expected a 3D volume"):
        load_case_planes(four_d, paths["label"], paths["prediction"])
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="junk.nii.gz"):
        load_case_planes(paths["image"], junk, paths["prediction"])


def test_overlay_figures_per_view_and_skipped_cases(tmp_path):
    paths, _ = write_case(tmp_path)
    good = {k: str(v) for k, v in paths.items()}
    rows = [
        {"model": "m", "view": "CT", "which": w, "case_id": f"c{i}", "score": s, **good}
        for i, (w, s) in enumerate([("best", 0.9), ("median", 0.5), ("worst", 0.1)])
    ]
    rows.append({"model": "m", "view": "PET_CT", "which": "best", "case_id": "p0", "score": 0.4,
                 **{**good, "prediction": str(tmp_path / "gone.nii.gz")}})
    figs, skipped = overlay_figures(pd.DataFrame(rows), {4: "liver"})
    assert list(figs) == ["overlay_m_CT"]
    fig = figs["overlay_m_CT"]
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 9  # 3 cases x 3 planes
    colourbars = [ax for ax in fig.axes if not ax.get_images()]
    assert [ax.get_ylabel() for ax in colourbars] == ["HU"] * 3  # one per case row, in the view's unit
    assert len(skipped) == 1 and "gone.nii.gz" in skipped[0] and "PET_CT/p0" in skipped[0]
    none, why = overlay_figures(pd.DataFrame([{**rows[0], "image": "", "label": "", "prediction": ""}]))
    assert none == {} and "no image/label/prediction paths" in why[0]


def test_overlay_panel_blends_prediction_fill_and_draws_reference_outline(tmp_path):
    paths, _ = write_case(tmp_path)
    planes = load_case_planes(paths["image"], paths["label"], paths["prediction"])
    fig = overlay_figure([("best", planes)], {4: "liver"}, title="t", pet=True)
    ax = fig.axes[0]
    assert len(ax.get_images()) == 1  # one composed picture per panel
    rgb = ax.get_images()[0].get_array()
    lab = display(planes.label["axial"])
    img = display(planes.image["axial"])
    lo, hi = image_window(planes, pet=True)
    grey = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)
    liver = np.array(to_rgb(ORGAN_COLOR["liver"]))
    inside = binary_erosion(lab == 4)  # filled, not on the outline
    edge = (lab == 4) & ~inside
    np.testing.assert_allclose(rgb[inside], 0.55 * grey[inside, None] + 0.45 * liver, atol=1e-6)
    np.testing.assert_allclose(rgb[edge], np.broadcast_to(liver, rgb[edge].shape))
    np.testing.assert_allclose(rgb[lab == 0], np.repeat(grey[lab == 0, None], 3, axis=1), atol=1e-6)
    # radiological convention: the box lies at world x 14..26 mm on a grid spanning 10..40 mm,
    # i.e. towards the patient's left, so it shows in the right half of the axial panel
    cols = np.flatnonzero((lab > 0).any(axis=0))
    assert (cols.min(), cols.max(), lab.shape[1]) == (8, 12, 16)  # 3..7 before the flip
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["liver"]
    assert fig.axes[-1].get_ylabel() == "SUV"  # PET in SUV, with its colourbar
    lim = fig.axes[-1].get_ylim()
    assert lim == pytest.approx((0.0, np.nanpercentile(np.r_[[0.0], *[planes.image[p][np.isfinite(planes.image[p])]
                                                                  for p in PLANES]], 99.5)))


def test_orientation_letters_follow_the_affine():
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    assert orientation_letters(ras, "axial") == {"left": "R", "right": "L", "bottom": "P", "top": "A"}
    assert orientation_letters(ras, "coronal") == {"left": "R", "right": "L", "bottom": "I", "top": "S"}
    assert orientation_letters(ras, "sagittal") == {"left": "A", "right": "P", "bottom": "I", "top": "S"}
    flip_x = ras @ np.diag([-1.0, 1.0, 1.0, 1.0])
    assert orientation_letters(flip_x, "axial") == {"left": "L", "right": "R", "bottom": "P", "top": "A"}
    flip_z = ras @ np.diag([1.0, 1.0, -1.0, 1.0])
    assert orientation_letters(flip_z, "coronal") == {"left": "R", "right": "L", "bottom": "S", "top": "I"}


def test_panels_carry_the_letters_and_a_scale_bar_of_the_right_length(tmp_path):
    paths, canon = write_case(tmp_path)
    planes = load_case_planes(paths["image"], paths["label"], paths["prediction"])
    fig = overlay_figure([("case", planes)], {4: "liver"})
    zooms = canon.header.get_zooms()  # display grid = the canonical grid: (2, 2, 3) mm
    for ax, plane, col_axis in zip(fig.axes[:3], PLANES, (0, 0, 1)):
        texts = {t.get_gid(): t.get_text() for t in ax.texts}
        letters = orientation_letters(canon.affine, plane)
        assert [texts[f"orient-{k}"] for k in ("left", "right", "bottom", "top")] == \
            [letters[k] for k in ("left", "right", "bottom", "top")]
        bar = next(line for line in ax.lines if line.get_gid() == "scalebar")
        mm = int(texts["scalebar-label"].split()[0])
        width_mm = canon.shape[col_axis] * zooms[col_axis]
        assert mm <= width_mm / 4 and mm == scale_bar_mm(width_mm)
        xs = bar.get_xdata()
        assert xs[1] - xs[0] == pytest.approx(mm / zooms[col_axis])  # pixels = mm / pixel spacing


def two_organ_case(tmp_path):
    """Organ 4 found, organ 7 missed (far from 4 in z), organ 9 only predicted (no reference)."""
    lab = np.zeros((20, 20, 24), np.uint8)
    lab[4:14, 4:14, 2:10] = 4
    lab[6:9, 6:9, 19:22] = 7
    pred = np.where(lab == 4, 4, 0).astype(np.uint8)
    pred[15:18, 15:18, 4:6] = 9
    aff = np.diag([2.0, 2.0, 2.5, 1.0])
    paths = {}
    arrays = {"image": np.random.default_rng(1).normal(0, 1, lab.shape).astype(np.float32), "label": lab, "prediction": pred}
    for k, arr in arrays.items():
        paths[k] = str(tmp_path / f"{k}.nii.gz")
        nib.save(nib.Nifti1Image(arr, aff), paths[k])
    results = pd.DataFrame([
        {"model": "m", "view": "CT", "case_id": "c", "organ": o, "label_id": i, "dice": d, "ref_voxels": r,
         "status": st}
        for o, i, d, r, st in (("liver", 4, 1.0, 800, "ok"), ("aorta", 7, 0.0, 27, "missed"),
                               ("colon", 9, 0.0, 0, "false_positive"), ("brain", 1, np.nan, 0, "both_empty"))])
    return paths, results


def test_planes_pass_through_the_worst_organ_so_a_missed_one_is_shown(tmp_path):
    paths, results = two_organ_case(tmp_path)
    selected = pd.DataFrame([{"model": "m", "view": "CT", "which": "worst", "case_id": "c", "score": 0.5, **paths}])
    worst = worst_organs(results, selected)
    # lowest Dice among organs with a reference: the missed aorta, not the predicted-only colon
    assert (worst.loc[0, "worst_organ"], worst.loc[0, "worst_label"], worst.loc[0, "worst_score"]) == ("aorta", 7, 0.0)
    cases, skipped = overlay_cases(selected, results)
    planes = cases[("m", "CT")][0].planes
    assert skipped == [] and planes.focus == 7
    assert 19 <= planes.center[2] <= 21
    for plane in PLANES:
        assert (planes.label[plane] == 7).any(), plane
        assert not (planes.prediction[plane] == 7).any()  # missed: outline only
    assert "worst organ aorta 0.00" in cases[("m", "CT")][0].caption
    # without the results table the planes pass through the foreground centre, which misses it
    default = load_case_planes(paths["image"], paths["label"], paths["prediction"])
    assert not (default.label["axial"] == 7).any()


def test_render_overlays_writes_a_300_dpi_png_and_an_svg(tmp_path):
    from PIL import Image

    paths, results = two_organ_case(tmp_path)
    selected = pd.DataFrame([{"model": "m", "view": "PET_CT", "which": "best", "case_id": "c", "score": 0.5, **paths}])
    written, skipped, cases = render_overlays(selected, {4: "liver", 7: "aorta"}, results, tmp_path / "figs")
    files = written["overlay_m_PET_CT"]
    assert skipped == [] and set(files) == {"png", "svg"}
    with Image.open(files["png"]) as im:
        assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        fig = overlay_figure([(c.caption, c.planes) for c in cases[("m", "PET_CT")]], {4: "liver", 7: "aorta"})
        w, h = fig.get_size_inches()
        assert im.size == (round(w * 300), round(h * 300))
    svg = files["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<image" in svg


def test_a_case_that_is_best_median_and_worst_is_drawn_once(tmp_path):
    paths, _ = write_case(tmp_path)
    rows = [{"model": "m", "view": "MRI", "which": w, "case_id": "only", "score": 0.7,
             **{k: str(v) for k, v in paths.items()}} for w in ("best", "median", "worst")]
    figs, skipped = overlay_figures(pd.DataFrame(rows))
    fig = figs["overlay_m_MRI"]
    assert skipped == [] and len([ax for ax in fig.axes if ax.get_images()]) == 3
    assert fig.axes[0].get_ylabel().startswith("best = median = worst: only")
