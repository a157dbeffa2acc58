"""Overlay sampling in world coordinates on tiny NIfTI files with known geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from umd_lightning.analysis.overlay import display_grid, load_case_planes, overlay_figure, overlay_figures

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
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 9  # 3 cases x 3 planes
    assert len(skipped) == 1 and "gone.nii.gz" in skipped[0] and "PET_CT/p0" in skipped[0]
    none, why = overlay_figures(pd.DataFrame([{**rows[0], "image": "", "label": "", "prediction": ""}]))
    assert none == {} and "no image/label/prediction paths" in why[0]


def test_overlay_figure_draws_prediction_fill_and_reference_outline(tmp_path):
    paths, _ = write_case(tmp_path)
    planes = load_case_planes(paths["image"], paths["label"], paths["prediction"])
    fig = overlay_figure([("best", planes)], {4: "liver"}, title="t", pet=True)
    ax = fig.axes[0]
    images = ax.get_images()
    assert len(images) == 3  # image, prediction fill, reference outline
    outline = images[2].get_array()
    assert outline[..., 3].sum() > 0  # some outline pixels are opaque
    # radiological convention: the box lies at world x 14..26 mm on a grid spanning 10..40 mm,
    # i.e. towards the patient's left, so it shows in the right half of the axial panel
    fill = np.ma.getmaskarray(images[1].get_array())
    cols = np.flatnonzero((~fill).any(axis=0))
    assert (cols.min(), cols.max(), fill.shape[1]) == (8, 12, 16)  # 3..7 before the flip
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["liver"]


def test_a_case_that_is_best_median_and_worst_is_drawn_once(tmp_path):
    paths, _ = write_case(tmp_path)
    rows = [{"model": "m", "view": "MRI", "which": w, "case_id": "only", "score": 0.7,
             **{k: str(v) for k, v in paths.items()}} for w in ("best", "median", "worst")]
    figs, skipped = overlay_figures(pd.DataFrame(rows))
    fig = figs["overlay_m_MRI"]
    assert skipped == [] and len(fig.axes) == 3
    assert fig.axes[0].get_ylabel().startswith("best = median = worst: only")
