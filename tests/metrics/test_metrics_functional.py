"""case_metrics against analytic shapes, a brute-force reference, MONAI, DeepMind's surface-distance,
the real TotalSegmentator pair, and every empty-mask case."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from umd_lightning.metrics import functional as F
from umd_lightning.metrics.functional import ROW_KEYS, case_metrics, metrics_metadata, volume_diagonal_mm
from umd_lightning.organs import UMD13, load_label_map

SPACINGS = [(1.0, 1.0, 1.0), (2.0, 0.98, 0.98), (0.7, 1.3, 3.0)]


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing, q: float = 95.0, tol: float = 2.0) -> dict[str, float]:
    """Independent reference: scipy erosion surfaces and all-pairs distances."""
    cross = ndimage.generate_binary_structure(3, 1)
    sp = pred & ~ndimage.binary_erosion(pred, structure=cross, border_value=0)
    sr = ref & ~ndimage.binary_erosion(ref, structure=cross, border_value=0)
    d = cdist(np.argwhere(sp) * spacing, np.argwhere(sr) * spacing)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    both = np.concatenate([d_pr, d_rp])
    return {
        "dice": 2.0 * (pred & ref).sum() / (pred.sum() + ref.sum()),
        "hd95": max(np.percentile(d_pr, q), np.percentile(d_rp, q)),
        "hd95_pooled": np.percentile(both, q),
        "nsd": ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / len(both),
        "assd": both.mean(),
    }


def random_blob(rng: np.random.Generator, shape, frac: float = 0.3, sigma: float = 2.0) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - frac)


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


# --------------------------------------------------------------------------- analytic shapes


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_box_has_known_distances(spacing, axis):
    """A box shifted by k voxels: HD95 = HD = k * spacing, Dice = 1 - k/L, and the NSD below the
    smallest spacing counts only the shared side rings."""
    shape, lo, size, k = (30, 30, 30), (5, 6, 7), (12, 10, 11), 3
    ref = box(shape, lo, np.add(lo, size))
    shift = np.zeros(3, dtype=int)
    shift[axis] = k
    pred = box(shape, np.add(lo, shift), np.add(lo, size) + shift)
    tight = 0.5 * min(spacing)
    (row,) = case_metrics(pred, ref, spacing, {1: "liver"}, nsd_tolerance=tight)
    (row_p100,) = case_metrics(pred, ref, spacing, {1: "liver"}, hd_percentile=100.0)
    (row_wide,) = case_metrics(pred, ref, spacing, {1: "liver"}, nsd_tolerance=k * spacing[axis])
    assert row["status"] == "ok"
    assert row["hd95"] == pytest.approx(k * spacing[axis], abs=1e-9)
    assert row_p100["hd95"] == pytest.approx(k * spacing[axis], abs=1e-9)
    assert row["dice"] == pytest.approx(1.0 - k / size[axis], abs=1e-12)
    n_surface = np.prod(size) - np.prod(np.subtract(size, 2))
    others = [size[i] for i in range(3) if i != axis]
    ring = others[0] * others[1] - (others[0] - 2) * (others[1] - 2)
    shared = (size[axis] - k) * ring
    assert row["nsd"] == pytest.approx(2 * shared / (2 * n_surface), abs=1e-12)
    assert row_wide["nsd"] == 1.0
    voxel_ml = np.prod(spacing) / 1000.0
    assert row["pred_voxels"] == row["ref_voxels"] == np.prod(size)
    assert row["ref_volume_ml"] == pytest.approx(np.prod(size) * voxel_ml)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_slabs_across_the_grid(spacing):
    """Slabs that fill the grid's cross-section (their sides lie on the grid border, which counts as
    background): a slab of thickness T shifted by k slices has HD95 = HD = k * s_0 and Dice 1 - k/T."""
    shape, z0, thickness, k = (30, 20, 20), 8, 6, 2
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    ref[z0 : z0 + thickness] = True
    pred[z0 + k : z0 + k + thickness] = True
    (row,) = case_metrics(pred, ref, spacing, {1: "x"})
    (row_max,) = case_metrics(pred, ref, spacing, {1: "x"}, hd_percentile=100.0)
    assert row["hd95"] == pytest.approx(k * spacing[0], abs=1e-9)
    assert row_max["hd95"] == pytest.approx(k * spacing[0], abs=1e-9)
    assert row["dice"] == pytest.approx(1 - k / thickness, abs=1e-12)
    # Each slab's surface: its two faces and the border ring (4 * 20 - 4 voxels) of each inner slice.
    # Below the smallest spacing only voxels on both surfaces count: the rings of the T - k shared slices.
    ring = 4 * 20 - 4
    surface = 2 * 20 * 20 + (thickness - 2) * ring
    (tight,) = case_metrics(pred, ref, spacing, {1: "x"}, nsd_tolerance=0.5 * min(spacing))
    assert tight["nsd"] == pytest.approx((thickness - k) * ring / surface, abs=1e-12)
    assert row["pred_voxels"] == row["ref_voxels"] == 20 * 20 * thickness


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (2.0, 0.98, 0.98), (0.8, 1.2, 2.5)])
def test_concentric_spheres(spacing):
    """Spheres of radius 12 and 9 mm (in mm, whatever the spacing): surface distances are 3 mm up to
    the voxelisation, at most one voxel diagonal."""
    sp = np.asarray(spacing)
    n = np.ceil(32 / sp).astype(int)
    grids = np.ogrid[: n[0], : n[1], : n[2]]
    r = np.sqrt(sum(((g - (k - 1) / 2.0) * s) ** 2 for g, k, s in zip(grids, n, sp)))
    ref, pred = r <= 12.0, r <= 9.0
    diag = float(np.linalg.norm(sp))
    (row,) = case_metrics(pred, ref, spacing, {1: "bladder"}, nsd_tolerance=3.0 + diag)
    assert abs(row["hd95"] - 3.0) <= diag
    assert abs(row["assd"] - 3.0) <= diag
    assert row["nsd"] == 1.0  # every distance within 3 mm plus a voxel diagonal
    assert row["dice"] == pytest.approx(2 * 9**3 / (9**3 + 12**3), abs=0.03)
    assert row["ref_volume_ml"] == pytest.approx(4 / 3 * math.pi * 12**3 / 1000, rel=0.03)


def test_identical_masks_are_perfect():
    rng = np.random.default_rng(3)
    m = random_blob(rng, (20, 24, 18))
    (row,) = case_metrics(m, m, (1.0, 2.0, 0.5), {1: "spleen"})
    assert (row["dice"], row["hd95"], row["nsd"], row["assd"]) == (1.0, 0.0, 1.0, 0.0)


# --------------------------------------------------------------------------- brute force and definitions


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    """Every metric and both HD definitions equal the all-pairs reference, on shapes that touch the
    grid border, with anisotropic spacing, in a multi-label map."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(14, 30, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
    tol = float(rng.uniform(0.5, 4.0))
    pred_l = np.zeros(shape, np.uint8)
    ref_l = np.zeros(shape, np.uint8)
    for label in (1, 2):
        pred_l[random_blob(rng, shape, 0.2)] = label
        ref_l[random_blob(rng, shape, 0.2)] = label
    labels = {1: "liver", 2: "spleen"}
    rows = case_metrics(pred_l, ref_l, spacing, labels, nsd_tolerance=tol)
    pooled = case_metrics(pred_l, ref_l, spacing, labels, nsd_tolerance=tol, hd_definition="pooled")
    assert case_metrics(pred_l, ref_l, spacing, labels, nsd_tolerance=tol, workers=2) == rows  # organs on two threads
    for row, row_pooled in zip(rows, pooled):
        lid = row["label_id"]
        ref = brute_force(pred_l == lid, ref_l == lid, np.asarray(spacing), tol=tol)
        assert row["status"] == "ok"
        for key in ("dice", "hd95", "nsd", "assd"):
            assert row[key] == pytest.approx(ref[key], abs=1e-9), key
        assert row_pooled["hd95"] == pytest.approx(ref["hd95_pooled"], abs=1e-9)
        assert row_pooled["dice"] == row["dice"]


def test_distance_methods_agree_including_far_outliers():
    """window / kdtree / edt agree, also for a false-positive blob far beyond the search window."""
    rng = np.random.default_rng(7)
    shape = (24, 48, 48)
    ref = random_blob(rng, shape, 0.1)
    ref[:, 30:, 30:] = False
    pred = ndimage.binary_dilation(ref, iterations=2)
    pred[2:5, 42:46, 42:46] = True  # far away: farther than the window radius
    spacing = (2.0, 0.8, 0.8)
    out = {
        m: case_metrics(pred, ref, spacing, {1: "x"}, distance_method=m, hd_percentile=100.0)[0]
        for m in ("window", "kdtree", "edt")
    }
    for m in ("kdtree", "edt"):
        for key in ("hd95", "nsd", "assd"):
            assert out[m][key] == pytest.approx(out["window"][key], abs=1e-9)
    # The far blob really is beyond the window, so the fallback was needed for the maximum.
    assert out["window"]["hd95"] > F._window_radius(np.asarray(spacing))


def test_window_search_gives_up_on_a_far_prediction(monkeypatch):
    """A prediction mostly far from the reference (zero-shot PET) leaves the windowed search early
    for the far-point search, and the distances stay exact."""
    rng = np.random.default_rng(3)
    shape = (40, 40, 40)
    ref = np.zeros(shape, bool)
    ref[4:12, 4:12, 4:12] = True
    pred = np.zeros(shape, bool)
    pred[26:36, 26:36, 26:36] = True  # ~30 mm away: beyond the budget for every point
    pred |= rng.random(shape) > 0.999  # and some scatter
    spacing = (1.5, 1.0, 1.0)
    handed = []
    far_search = F._far_search

    def spy(src, *args, **kwargs):
        handed.append(len(src))
        return far_search(src, *args, **kwargs)

    monkeypatch.setattr(F, "_far_search", spy)
    window = case_metrics(pred, ref, spacing, {1: "x"}, distance_method="window", hd_percentile=100.0)[0]
    monkeypatch.undo()
    edt = case_metrics(pred, ref, spacing, {1: "x"}, distance_method="edt", hd_percentile=100.0)[0]
    ref_rows = brute_force(pred, ref, np.asarray(spacing), q=100.0)
    for key in ("hd95", "nsd", "assd"):
        assert window[key] == pytest.approx(ref_rows[key], abs=1e-9)
        assert edt[key] == pytest.approx(ref_rows[key], abs=1e-9)
    surface_points = int(F._boundary(pred).sum() + F._boundary(ref).sum())
    assert sum(handed) > 0.9 * surface_points


@pytest.mark.parametrize("many", [False, True])
def test_far_points_go_to_the_cheaper_exact_search(monkeypatch, many):
    """A few far points go to the k-d tree; a scattered prediction's many far points to the sweep,
    whose cost does not grow with the distances. Both give the brute-force distances."""
    rng = np.random.default_rng(5)
    shape = (60, 60, 60)
    ref = box(shape, (5, 5, 5), (15, 15, 15))
    pred = ref.copy()
    if many:
        pred |= rng.random(shape) > 0.9  # scatter over the whole grid, most of it far from ref
    else:
        pred[50:52, 50:52, 50:52] = True  # one small far blob
    spacing = np.array([1.2, 1.0, 0.8])
    used, windowed = [], []
    for name in ("_kdtree_search", "_sweep_search"):
        original = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *a, _f=original, _n=name, **k: used.append(_n) or _f(*a, **k))
    window = F._window_search
    monkeypatch.setattr(F, "_window_search", lambda src, *a, **k: windowed.append(len(src)) or window(src, *a, **k))
    row = case_metrics(pred, ref, spacing, {1: "x"}, hd_percentile=100.0)[0]
    want = brute_force(pred, ref, spacing, q=100.0)
    for key in ("hd95", "nsd", "assd"):
        assert row[key] == pytest.approx(want[key], abs=1e-9)
    assert ("_sweep_search" in used) == many
    assert ("_kdtree_search" in used) == (not many)
    # A scattered prediction's surface is sampled, found mostly far, and never searched point by point.
    n_pred_surface = int(F._boundary(pred).sum())
    assert (n_pred_surface in windowed) == (not many)
    if many:
        assert -(-n_pred_surface // F._SAMPLE_EVERY) in windowed


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(11)
    p = random_blob(rng, (16, 18, 20)).astype(np.int64)
    r = random_blob(rng, (16, 18, 20)).astype(np.int64)
    a = case_metrics(p, r, (1.0, 1.0, 2.0), {1: "x"})
    b = case_metrics(torch.from_numpy(p)[None, None], torch.from_numpy(r).float(), torch.tensor([1.0, 1.0, 2.0]), {1: "x"})
    assert a == b


def test_per_organ_tolerance_and_row_keys():
    rng = np.random.default_rng(5)
    shape = (20, 20, 20)
    p = np.zeros(shape, np.uint8)
    r = np.zeros(shape, np.uint8)
    p[random_blob(rng, shape, 0.2)] = 1
    r[random_blob(rng, shape, 0.2)] = 1
    p[2:6, 2:6, 2:6] = 2
    r[3:7, 2:6, 2:6] = 2
    rows = case_metrics(p, r, (1, 1, 1), {1: "a", 2: "b"}, nsd_tolerance={"a": 0.5, "b": 10.0})
    assert [tuple(row) for row in rows] == [ROW_KEYS, ROW_KEYS]
    assert rows[0]["nsd_tolerance_mm"] == 0.5 and rows[1]["nsd_tolerance_mm"] == 10.0
    assert rows[1]["nsd"] == 1.0
    with pytest.raises(ValueError, match="no value for organs"):
        case_metrics(p, r, (1, 1, 1), {1: "a", 2: "b"}, nsd_tolerance={"a": 1.0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"empty_policy": "ignore"}, "empty_policy"),
        ({"hd_definition": "mean"}, "hd_definition"),
        ({"nsd_definition": "area"}, "nsd_definition"),
        ({"hd_percentile": 120}, "hd_percentile"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    m = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=match):
        case_metrics(m, m, (1, 1, 1), {1: "x"}, **kwargs)


def test_bad_inputs_are_named():
    m = np.ones((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="same grid"):
        case_metrics(m, np.ones((4, 4, 5), np.uint8), (1, 1, 1), {1: "x"})
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(m, m, (1, 0, 1), {1: "x"})
    with pytest.raises(ValueError, match="3D"):
        case_metrics(np.ones((4, 4)), np.ones((4, 4)), (1, 1, 1), {1: "x"})
    with pytest.raises(TypeError, match="integer label map"):
        case_metrics(m * 0.5, m, (1, 1, 1), {1: "x"})
    with pytest.raises(ValueError, match="negative"):
        case_metrics(-m.astype(np.int16), m, (1, 1, 1), {1: "x"})


# --------------------------------------------------------------------------- empty masks


def _two_organ_case():
    shape = (10, 12, 14)
    pred = np.zeros(shape, np.uint8)
    ref = np.zeros(shape, np.uint8)
    ref[2:5, 2:5, 2:5] = 1  # organ 1: missed
    pred[6:9, 6:9, 6:9] = 2  # organ 2: false positive
    return pred, ref, {1: "liver", 2: "spleen", 3: "aorta"}  # organ 3: both empty


def test_worst_policy_gives_finite_worst_case():
    pred, ref, labels = _two_organ_case()
    spacing = (2.0, 1.0, 0.5)
    rows = {r["organ"]: r for r in case_metrics(pred, ref, spacing, labels)}
    diag = math.sqrt((10 * 2.0) ** 2 + (12 * 1.0) ** 2 + (14 * 0.5) ** 2)
    assert volume_diagonal_mm((10, 12, 14), spacing) == pytest.approx(diag)
    for organ, status in (("liver", "missed"), ("spleen", "false_positive")):
        row = rows[organ]
        assert row["status"] == status
        assert (row["dice"], row["nsd"]) == (0.0, 0.0)
        assert row["hd95"] == row["assd"] == pytest.approx(diag)
        assert all(math.isfinite(row[k]) for k in ("dice", "hd95", "nsd", "assd"))
    assert rows["liver"]["ref_voxels"] == 27 and rows["liver"]["pred_voxels"] == 0
    assert rows["spleen"]["pred_voxels"] == 27 and rows["spleen"]["ref_volume_ml"] == 0.0
    both = rows["aorta"]
    assert both["status"] == "both_empty"
    assert all(math.isnan(both[k]) for k in ("dice", "hd95", "nsd", "assd"))


def test_exclude_policy_gives_nan_but_keeps_status():
    pred, ref, labels = _two_organ_case()
    rows = {r["organ"]: r for r in case_metrics(pred, ref, (1, 1, 1), labels, empty_policy="exclude")}
    assert [rows[o]["status"] for o in ("liver", "spleen", "aorta")] == ["missed", "false_positive", "both_empty"]
    for row in rows.values():
        assert all(math.isnan(row[k]) for k in ("dice", "hd95", "nsd", "assd"))
    assert rows["liver"]["ref_voxels"] == 27


def test_not_predicted_organs_are_not_scored():
    pred, ref, labels = _two_organ_case()
    rows = {r["organ"]: r for r in case_metrics(pred, ref, (1, 1, 1), labels, organs_predicted=["spleen"])}
    assert rows["liver"]["status"] == "not_predicted" and math.isnan(rows["liver"]["dice"])
    assert rows["spleen"]["status"] == "false_positive"


def test_all_empty_volume():
    z = np.zeros((5, 5, 5), np.uint8)
    rows = case_metrics(z, z, (1, 1, 1), UMD13.labels)
    assert {r["status"] for r in rows} == {"both_empty"}


def test_metadata_states_the_conventions():
    meta = metrics_metadata("exclude", 95.0, "pooled", "surfel_area", {"liver": 3.0})
    assert meta["empty_policy"] == "exclude" and "NaN" in meta["empty_policy_rule"]
    assert meta["hd_definition"] == "pooled" and "medpy" in meta["hd_rule"]
    assert meta["nsd_definition"] == "surfel_area" and "DeepMind" in meta["nsd_rule"]
    assert meta["nsd_tolerance_mm"] == {"liver": 3.0}
    assert metrics_metadata()["empty_policy"] == "worst"


# --------------------------------------------------------------------------- reference libraries


@pytest.fixture(scope="module")
def monai_metrics():
    metrics = pytest.importorskip("monai.metrics")
    return metrics


def _one_hot(labels: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([labels == i for i in range(n + 1)]))[None].float()


@pytest.mark.parametrize("seed", range(4))
def test_matches_monai_on_random_shapes(monai_metrics, seed):
    """HD95 within 1e-3 mm, NSD and ASSD equal, for every organ present in both maps."""
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in rng.integers(16, 32, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.6, 2.5, 3))
    pred = np.zeros(shape, np.uint8)
    ref = np.zeros(shape, np.uint8)
    for label in (1, 2, 3):
        pred[random_blob(rng, shape, 0.15)] = label
        ref[random_blob(rng, shape, 0.15)] = label
    tol = 1.7
    rows = case_metrics(pred, ref, spacing, {1: "a", 2: "b", 3: "c"}, nsd_tolerance=tol)
    y_pred, y = _one_hot(pred, 3), _one_hot(ref, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = monai_metrics.compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing)[0]
        nsd = monai_metrics.compute_surface_dice(y_pred, y, [tol] * 3, spacing=spacing)[0]
        asd = monai_metrics.compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing)[0]
        dice = monai_metrics.compute_dice(y_pred, y, include_background=False)[0]
    for i, row in enumerate(rows):
        assert row["status"] == "ok"
        assert abs(row["hd95"] - float(hd[i])) < 1e-3
        assert row["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6)
        assert row["assd"] == pytest.approx(float(asd[i]), abs=1e-4)
        assert row["dice"] == pytest.approx(float(dice[i]), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_surfel_area_nsd_matches_deepmind_definition(monai_metrics, seed):
    """The area-weighted NSD equals MONAI's sub-voxel NSD (a port of DeepMind's) and, where it is
    installed, DeepMind's surface-distance itself."""
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(v) for v in rng.integers(14, 28, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
    pred, ref = random_blob(rng, shape), random_blob(rng, shape)
    tol = 1.5
    (row,) = case_metrics(pred, ref, spacing, {1: "x"}, nsd_tolerance=tol, nsd_definition="surfel_area")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_nsd = monai_metrics.compute_surface_dice(
            _one_hot(pred.astype(np.uint8), 1), _one_hot(ref.astype(np.uint8), 1), [tol], spacing=spacing,
            use_subvoxels=True,
        )[0, 0]
    assert row["nsd"] == pytest.approx(float(monai_nsd), abs=1e-6)
    try:
        import surface_distance
    except ImportError:
        return
    dm = surface_distance.compute_surface_dice_at_tolerance(
        surface_distance.compute_surface_distances(ref, pred, spacing), tol
    )
    assert row["nsd"] == pytest.approx(dm, abs=1e-12)


def test_surfel_table_matches_monai(monai_metrics):
    from monai.metrics.utils import create_table_neighbour_code_to_surface_area

    from umd_lightning.metrics._surfels import surfel_area_table

    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9)]:
        ours = surfel_area_table(spacing)
        theirs = create_table_neighbour_code_to_surface_area(spacing)[0].numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_real_pair_matches_monai(monai_metrics, real_data_dir):
    """example_seg_fast (prediction) vs example_seg (reference), TotalSegmentator ids mapped to umd13.

    Real TotalSegmentator test scans (wasserth/TotalSegmentator, tests/reference_files, Apache-2.0).
    """
    nib = pytest.importorskip("nibabel")
    REAL = real_data_dir
    lm = load_label_map("total")
    ref_img = nib.load(str(REAL / "example_seg.nii.gz"))
    pred_img = nib.load(str(REAL / "example_seg_fast.nii.gz"))
    ref = lm.apply(np.asarray(ref_img.dataobj), UMD13)
    pred = lm.apply(np.asarray(pred_img.dataobj), UMD13)
    spacing = tuple(float(v) for v in ref_img.header.get_zooms()[:3])
    rows = case_metrics(pred, ref, spacing, UMD13.labels)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["organ"] for r in ok} >= {"liver", "spleen", "kidney_left", "kidney_right", "lung", "aorta"}
    assert all(r["status"] in ("ok", "both_empty") for r in rows)
    by = {r["organ"]: r for r in rows}
    assert by["liver"]["dice"] > 0.95
    n = max(UMD13.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = monai_metrics.compute_hausdorff_distance(_one_hot(pred, n), _one_hot(ref, n), percentile=95, spacing=spacing)[0]
        nsd = monai_metrics.compute_surface_dice(_one_hot(pred, n), _one_hot(ref, n), [2.0] * n, spacing=spacing)[0]
    for r in ok:
        i = r["label_id"] - 1
        assert abs(r["hd95"] - float(hd[i])) < 1e-3, r["organ"]
        assert r["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6), r["organ"]


# --------------------------------------------------------------------------- docs


def test_module_doctests_run():
    from umd_lightning.metrics import collection

    for module in (F, collection):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
