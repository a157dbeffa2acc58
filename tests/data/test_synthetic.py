"""The built-in synthetic PET/CT + PET/MRI cohort: determinism, geometry, labels, intensities, caching."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from umd_lightning.data.synthetic import (
    COMPLETE_MARKER,
    CohortConfig,
    Grid,
    config_hash,
    ensure_cohort,
    generate_cohort,
    main,
)
from umd_lightning.organs import UMD13

IDS = UMD13.ids
FILES = ("petct/ct", "petct/pet", "petct/label", "petmri/mri", "petmri/pet", "petmri/label")


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(0))


def _sample_at_label(image: np.ndarray, image_affine: np.ndarray, mask: np.ndarray, mask_affine: np.ndarray) -> np.ndarray:
    """Values of ``image`` (own grid) at the world positions of the voxels of ``mask``: linear interpolation."""
    world = nib.affines.apply_affine(mask_affine, np.argwhere(mask))
    vox = nib.affines.apply_affine(np.linalg.inv(image_affine), world)
    return ndimage.map_coordinates(image.astype(np.float64), vox.T, order=1, mode="nearest")


@pytest.fixture(scope="module")
def coarse(tmp_path_factory) -> dict[str, Path]:
    """Cohorts at scale 3: the same config twice, a larger one, and another seed."""
    root = tmp_path_factory.mktemp("synthetic_coarse")
    cfg = CohortConfig(n_subjects=2, seed=0, scale=3.0)
    out = {
        "a": generate_cohort(root / "a", cfg).parent,
        "a_again": generate_cohort(root / "a_again", cfg, workers=2).parent,
        "more": generate_cohort(root / "more", CohortConfig(n_subjects=3, seed=0, scale=3.0)).parent,
        "seed1": generate_cohort(root / "seed1", CohortConfig(n_subjects=1, seed=1, scale=3.0)).parent,
    }
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two subjects at scale 2, for geometry and intensities."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_cohort(root, CohortConfig(n_subjects=2, seed=0, scale=2.0))


# --------------------------------------------------------------------------- layout and manifest


def test_manifest_rows_and_files(cohort):
    rows = list(csv.DictReader(cohort.open()))
    assert list(rows[0]) == ["subject_id", "session", "view", "image", "label"]
    assert len(rows) == 8
    expected = {
        ("CT", "petct", "petct/ct.nii.gz"), ("PET_CT", "petct", "petct/pet.nii.gz"),
        ("MRI", "petmri", "petmri/mri.nii.gz"), ("PET_MRI", "petmri", "petmri/pet.nii.gz"),
    }  # fmt: skip
    for sid in ("syn000", "syn001"):
        mine = [r for r in rows if r["subject_id"] == sid]
        assert {(r["view"], r["session"], r["image"].removeprefix(f"{sid}/")) for r in mine} == expected
        for r in mine:
            assert r["label"] == f"{sid}/{r['session']}/label.nii.gz"
            assert (cohort.parent / r["image"]).is_file() and (cohort.parent / r["label"]).is_file()
    meta = json.loads((cohort.parent / "cohort.json").read_text())
    assert meta["config"]["n_subjects"] == 2 and meta["config"]["scale"] == 2.0
    assert meta["organ_set"]["labels"] == {str(k): v for k, v in UMD13.labels.items()}


def test_dtypes_labels_and_grids(cohort):
    root = cohort.parent
    for sid in ("syn000", "syn001"):
        ct, ct_aff = _load(root / sid / "petct/ct.nii.gz")
        assert ct.dtype == np.int16
        for session in ("petct", "petmri"):
            label, label_aff = _load(root / sid / session / "label.nii.gz")
            assert label.dtype == np.uint8
            assert set(np.unique(label).tolist()) == set(range(14)), f"{sid}/{session}: not all 13 organs"
            pet, pet_aff = _load(root / sid / session / "pet.nii.gz")
            assert pet.dtype == np.float32 and np.isfinite(pet).all() and pet.min() >= 0
            # PET is coarser than its anatomical grid on every axis, and on a different grid.
            assert np.all(nib.affines.voxel_sizes(pet_aff) > nib.affines.voxel_sizes(label_aff) - 1e-6)
            assert np.prod(nib.affines.voxel_sizes(pet_aff)) > np.prod(nib.affines.voxel_sizes(label_aff))
            assert not np.allclose(pet_aff, label_aff)
        mri, mri_aff = _load(root / sid / "petmri/mri.nii.gz")
        assert mri.dtype == np.float32
        assert np.allclose(ct_aff, _load(root / sid / "petct/label.nii.gz")[1])
        assert np.allclose(mri_aff, _load(root / sid / "petmri/label.nii.gz")[1])


def test_orientations_and_headers(cohort):
    root = cohort.parent / "syn000"
    for name in ("petct/ct", "petct/pet", "petct/label"):
        img = nib.load(str(root / f"{name}.nii.gz"))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S"), name
        assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
        assert np.allclose(img.get_qform(), img.get_sform())
    for name in ("petmri/mri", "petmri/pet", "petmri/label"):
        img = nib.load(str(root / f"{name}.nii.gz"))
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S"), name
        assert np.allclose(img.get_qform(), img.get_sform())


def test_world_coordinates_are_anatomical(cohort):
    """Whatever the storage order, world x points to the subject's right (RAS): liver right of spleen."""
    root = cohort.parent
    for sid in ("syn000", "syn001"):
        for session in ("petct", "petmri"):
            label, aff = _load(root / sid / session / "label.nii.gz")
            liver = _world_centroid(label == IDS["liver"], aff)
            spleen = _world_centroid(label == IDS["spleen"], aff)
            brain = _world_centroid(label == IDS["brain"], aff)
            bladder = _world_centroid(label == IDS["urinary_bladder"], aff)
            assert liver[0] - spleen[0] > 80, f"{sid}/{session}: liver not on the right of the spleen"
            assert brain[2] - bladder[2] > 500, f"{sid}/{session}: brain not above the bladder"
            kr = _world_centroid(label == IDS["kidney_right"], aff)
            kl = _world_centroid(label == IDS["kidney_left"], aff)
            assert kr[0] > kl[0]


# --------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_files(coarse):
    for sid in ("syn000", "syn001"):
        for name in FILES:
            a = coarse["a"] / sid / f"{name}.nii.gz"
            b = coarse["a_again"] / sid / f"{name}.nii.gz"
            assert a.read_bytes() == b.read_bytes(), f"{sid}/{name} differs between two runs"
            (da, aa), (db, ab) = _load(a), _load(b)
            np.testing.assert_array_equal(da, db)
            np.testing.assert_array_equal(aa, ab)
    assert (coarse["a"] / "manifest.csv").read_text() == (coarse["a_again"] / "manifest.csv").read_text()


def test_subject_does_not_depend_on_cohort_size(coarse):
    for sid in ("syn000", "syn001"):
        for name in FILES:
            a = (coarse["a"] / sid / f"{name}.nii.gz").read_bytes()
            assert a == (coarse["more"] / sid / f"{name}.nii.gz").read_bytes(), f"{sid}/{name}"
    assert (coarse["more"] / "syn002" / "petct" / "ct.nii.gz").is_file()


def test_other_seed_differs(coarse):
    for name in FILES:
        da, _ = _load(coarse["a"] / "syn000" / f"{name}.nii.gz")
        db, _ = _load(coarse["seed1"] / "syn000" / f"{name}.nii.gz")
        assert da.shape != db.shape or not np.array_equal(da, db), name
    # Subjects of one cohort differ from each other too.
    l0, _ = _load(coarse["a"] / "syn000" / "petct/label.nii.gz")
    l1, _ = _load(coarse["a"] / "syn001" / "petct/label.nii.gz")
    assert l0.shape != l1.shape or not np.array_equal(l0, l1)


# --------------------------------------------------------------------------- geometry


def _bladder_hotspot(pet: np.ndarray, pet_aff: np.ndarray, label_centroid_world: np.ndarray) -> np.ndarray:
    """World centroid of the hot PET blob (SUV > 3) at the label's bladder centroid."""
    blobs, _ = ndimage.label(pet > 3.0)
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(pet_aff), label_centroid_world)).astype(int)
    assert np.all(ijk >= 0) and np.all(ijk < pet.shape), "bladder centroid outside the PET field of view"
    blob = blobs[tuple(ijk)]
    assert blob > 0, "no hot PET blob where the label puts the bladder: PET and label grids disagree"
    return _world_centroid(blobs == blob, pet_aff)


def test_pet_and_anatomy_share_world_coordinates(cohort):
    root = cohort.parent
    for sid in ("syn000", "syn001"):
        for session in ("petct", "petmri"):
            label, label_aff = _load(root / sid / session / "label.nii.gz")
            pet, pet_aff = _load(root / sid / session / "pet.nii.gz")
            centroid = _world_centroid(label == IDS["urinary_bladder"], label_aff)
            hot = _bladder_hotspot(pet, pet_aff, centroid)
            tolerance = nib.affines.voxel_sizes(pet_aff).max() + 5.0
            assert np.linalg.norm(hot - centroid) < tolerance, f"{sid}/{session}: {hot} vs {centroid}"
            # The brain is hot where the label puts it and cold in a ring 3-5 cm around it.
            brain = label == IDS["brain"]
            inside = _sample_at_label(pet, pet_aff, brain, label_aff).mean()
            step = nib.affines.voxel_sizes(label_aff).min()
            near = ndimage.binary_dilation(brain, iterations=int(round(30 / step)))
            ring = ndimage.binary_dilation(brain, iterations=int(round(50 / step))) & ~near
            assert _sample_at_label(pet, pet_aff, ring, label_aff).mean() < inside / 3, f"{sid}/{session}"


def test_two_sessions_are_not_aligned(cohort):
    root = cohort.parent
    for sid in ("syn000", "syn001"):
        ct_label, ct_aff = _load(root / sid / "petct/label.nii.gz")
        mr_label, mr_aff = _load(root / sid / "petmri/label.nii.gz")
        assert ct_label.shape != mr_label.shape or not np.allclose(ct_aff, mr_aff)
        shifts = []
        volumes = []
        for organ, i in IDS.items():
            c_ct = _world_centroid(ct_label == i, ct_aff)
            c_mr = _world_centroid(mr_label == i, mr_aff)
            shifts.append(np.linalg.norm(c_ct - c_mr))
            v_ct = (ct_label == i).sum() * np.prod(nib.affines.voxel_sizes(ct_aff))
            v_mr = (mr_label == i).sum() * np.prod(nib.affines.voxel_sizes(mr_aff))
            volumes.append((organ, v_ct, v_mr))
        assert np.median(shifts) > 5.0, f"{sid}: sessions nearly aligned ({np.round(shifts, 1)})"
        assert max(shifts) < 120.0
        # Same subject: the big organs keep their volume across sessions (the bladder fills differently).
        for organ, v_ct, v_mr in volumes:
            if organ in ("liver", "brain", "lung", "heart"):
                assert abs(v_ct - v_mr) / v_ct < 0.2, f"{sid} {organ}: {v_ct:.0f} vs {v_mr:.0f} mm3"


# --------------------------------------------------------------------------- intensities


def test_intensities_inside_organs(cohort):
    root = cohort.parent
    for sid in ("syn000", "syn001"):
        ct, ct_aff = _load(root / sid / "petct/ct.nii.gz")
        label, label_aff = _load(root / sid / "petct/label.nii.gz")
        assert 40 <= ct[label == IDS["liver"]].mean() <= 75
        assert ct[label == IDS["lung"]].mean() < -600
        assert ct[label == 0].min() <= -900  # air around the body
        mri, _ = _load(root / sid / "petmri/mri.nii.gz")
        mr_label, mr_aff = _load(root / sid / "petmri/label.nii.gz")
        assert mri[mr_label == IDS["liver"]].mean() > mri[mr_label == IDS["spleen"]].mean()
        assert mri[mr_label == IDS["lung"]].mean() < 0.3 * mri[mr_label == IDS["liver"]].mean()
        for session, lab, lab_aff in (("petct", label, label_aff), ("petmri", mr_label, mr_aff)):
            pet, pet_aff = _load(root / sid / session / "pet.nii.gz")
            suv = {o: _sample_at_label(pet, pet_aff, lab == IDS[o], lab_aff).mean() for o in
                   ("brain", "urinary_bladder", "liver", "lung")}  # fmt: skip
            assert max(suv["brain"], suv["urinary_bladder"]) > 2 * suv["liver"], f"{sid}/{session}: {suv}"
            assert suv["liver"] > 1.5 * suv["lung"], f"{sid}/{session}: {suv}"


# --------------------------------------------------------------------------- caching and CLI


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ensure_cohort_reuses_and_regenerates(tmp_path):
    cfg = CohortConfig(n_subjects=1, seed=3, scale=3.0)
    manifest = ensure_cohort(tmp_path, cfg)
    folder = manifest.parent
    assert folder == tmp_path / config_hash(cfg)
    assert (folder / COMPLETE_MARKER).is_file()
    before = _mtimes(folder)
    assert ensure_cohort(tmp_path, cfg) == manifest
    assert _mtimes(folder) == before, "a complete cohort was rewritten"
    # Interrupted generation: no marker, a file missing, a stray file -> regenerated from scratch.
    (folder / COMPLETE_MARKER).unlink()
    (folder / "syn000" / "petct" / "pet.nii.gz").unlink()
    (folder / "stray.txt").write_text("partial")
    assert ensure_cohort(tmp_path, cfg) == manifest
    assert (folder / COMPLETE_MARKER).is_file()
    assert (folder / "syn000" / "petct" / "pet.nii.gz").is_file()
    assert not (folder / "stray.txt").exists()
    assert set(_mtimes(folder)) == set(before)
    # No temporary folders left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    # Another config goes to another folder.
    other = ensure_cohort(tmp_path, CohortConfig(n_subjects=1, seed=4, scale=3.0))
    assert other.parent != folder


def test_cohort_is_published_atomically_with_normal_permissions(tmp_path):
    from umd_lightning.data.synthetic.cache import _publish, _umask

    cfg = CohortConfig(n_subjects=1, seed=3, scale=3.0)
    folder = ensure_cohort(tmp_path, cfg).parent
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not a temporary folder's 0700
    inode, before = folder.stat().st_ino, _mtimes(folder)
    # A concurrent run that finishes second: its copy is discarded, the published cohort stays as it is.
    late = tmp_path / ".late"
    shutil.copytree(folder, late)
    _publish(late, folder)
    assert folder.stat().st_ino == inode and _mtimes(folder) == before and late.is_dir()
    # Even when the published cohort's marker is missing for a moment, a rename never replaces a
    # folder that holds files: the incomplete one is moved aside whole, never emptied in place.
    (folder / COMPLETE_MARKER).unlink()
    _publish(late, folder)
    assert (folder / COMPLETE_MARKER).is_file() and not late.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_config_hash_is_stable_and_sensitive():
    a = CohortConfig(n_subjects=2, scale=3.0)
    assert config_hash(a) == config_hash(CohortConfig(n_subjects=2, scale=3.0))
    assert config_hash(a) != config_hash(CohortConfig(n_subjects=2, scale=3.0, pet_fwhm_mm=7.0))
    with pytest.raises(ValueError, match="n_subjects"):
        CohortConfig(n_subjects=0)
    with pytest.raises(ValueError, match="lesions_per_subject"):
        CohortConfig(lesions_per_subject=(3, 1))


def test_cli_prints_manifest(tmp_path, capsys):
    main([str(tmp_path / "out"), "--n-subjects", "1", "--seed", "2", "--scale", "3"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [str(tmp_path / "out" / "manifest.csv")]
    rows = list(csv.DictReader(open(printed[0])))
    assert len(rows) == 4 and {r["subject_id"] for r in rows} == {"syn000"}


def test_refined_grid_averages_back_to_the_coarse_grid():
    """A 2x-finer PET simulation grid: each coarse voxel centre is the mean of its 8 fine centres."""
    for orientation in ("RAS", "LPS"):
        coarse = Grid.centered(np.array([10.0, -20.0, 5.0]), (60.0, 48.0, 36.0), (6.0, 6.0, 6.0), orientation)
        fine = coarse.refined(2)
        assert fine.shape == tuple(2 * n for n in coarse.shape)
        ijk = np.argwhere(np.ones(fine.shape, bool))
        world = nib.affines.apply_affine(fine.affine, ijk).reshape(*fine.shape, 3)
        n0, n1, n2 = coarse.shape
        means = world.reshape(n0, 2, n1, 2, n2, 2, 3).mean(axis=(1, 3, 5))
        expected = nib.affines.apply_affine(coarse.affine, np.argwhere(np.ones(coarse.shape, bool)))
        np.testing.assert_allclose(means.reshape(-1, 3), expected, atol=1e-9)
        # The grid is centred where asked.
        centre = nib.affines.apply_affine(coarse.affine, (np.asarray(coarse.shape) - 1) / 2)
        np.testing.assert_allclose(centre, [10.0, -20.0, 5.0])


# --------------------------------------------------------------------------- bounded memory


def _subject_session(index: int = 0, name: str = "petct"):
    from umd_lightning.data.synthetic.anatomy import draw_session, draw_subject

    cfg = CohortConfig()
    seeds = np.random.SeedSequence(entropy=cfg.seed, spawn_key=(index,)).spawn(5)
    subject = draw_subject(index, np.random.default_rng(seeds[0]), tuple(cfg.lesions_per_subject))
    return subject, draw_session(name, np.random.default_rng(seeds[1]), subject, cfg.deformation_mm)


@pytest.mark.parametrize("name", ["petct", "petmri"])
def test_sampling_by_slabs_equals_the_whole_block(monkeypatch, name):
    # Every voxel's label and tissue depend on its own coordinates only: one plane per slab must give
    # the whole block's arrays exactly, PET activity (lesions included) too.
    from umd_lightning.data.synthetic import sampling, scans
    from umd_lightning.data.synthetic.cohort import _scan_center

    subject, session = _subject_session(name=name)
    centre = _scan_center(session.pose, subject, 900.0, np.random.default_rng(0))
    grid = Grid.centered(centre, (400.0, 270.0, 900.0), (9.0, 9.0, 12.0), "RAS")
    pet_grid = Grid.centered(centre, (440.0, 300.0, 920.0), (18.0, 18.0, 18.0), "LPS")
    results = {}
    for slab_voxels in (10**9, 1):
        monkeypatch.setattr(sampling, "SLAB_VOXELS", slab_voxels)
        block = sampling.body_block(subject, session, grid, 3.0)
        slabs = list(block.slabs())
        pet = scans._pet_image(subject, session, pet_grid, 6.0, 3.0, np.random.default_rng(0))
        results[slab_voxels] = (*sampling.sample_anatomy(subject, session, grid, 3.0), pet, len(slabs))
    (label, tissue, pet, one), (label_s, tissue_s, pet_s, many) = results[10**9], results[1]
    assert one == 1 and many == block.sampler.shape[2] > 1
    assert set(np.unique(label).tolist()) == set(UMD13.labels) | {0}
    np.testing.assert_array_equal(label_s, label)
    np.testing.assert_array_equal(tissue_s, tissue)
    np.testing.assert_array_equal(pet_s, pet)
    assert pet.max() > 3.0  # lesions and hot organs are in it


def test_noise_in_chunks_is_one_draw(monkeypatch):
    from umd_lightning.data.synthetic import scans

    monkeypatch.setattr(scans, "_CHUNK", 1000)
    image = np.linspace(-5, 5, 24 * 17 * 13, dtype=np.float32).reshape(24, 17, 13)
    expected = image + np.float32(2.5) * np.random.default_rng(3).standard_normal(image.shape, dtype=np.float32)
    got = image.copy()
    scans._add_noise(got, np.float32(2.5), np.random.default_rng(3))
    np.testing.assert_array_equal(got, expected)
    noise = np.float32(0.5) * np.random.default_rng(4).standard_normal(image.shape, dtype=np.float32)
    got = image * image
    scans._add_noise(got, np.float32(0.5), np.random.default_rng(4), square=True)
    np.testing.assert_array_equal(got, image * image + noise * noise)
