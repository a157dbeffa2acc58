"""One test per manifest error: each names the file and the problem."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from umd_lightning.data.manifest import (
    ManifestError,
    PetUnitsError,
    check_record,
    distinct_values,
    read_manifest,
    validate_manifest,
)
from umd_lightning.organs import UMD13


def _save(path, data, affine=None):
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture()
def case(tmp_path):
    """A valid CT case plus a PET on its own coarser grid."""
    rng = np.random.default_rng(0)
    ct = _save(tmp_path / "ct.nii.gz", rng.normal(0, 50, (16, 14, 12)).astype(np.float32))
    lab = np.zeros((16, 14, 12), np.uint8)
    lab[4:10, 3:9, 2:8] = 4
    label = _save(tmp_path / "label.nii.gz", lab)
    pet = _save(tmp_path / "pet.nii.gz", rng.random((8, 7, 6)).astype(np.float32), np.diag([4.0, 4.0, 6.0, 1.0]))
    return tmp_path, ct, label, pet


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["subject_id", "session", "view", "image", "label"]).to_csv(path, index=False)
    return read_manifest(path)


def _one(tmp_path, image, label, view="CT"):
    session = "petct" if view in ("CT", "PET_CT") else "petmri"
    return _manifest(tmp_path, [["s1", session, view, image.name, label.name]])


def test_valid_case_passes_with_relative_paths(case):
    tmp_path, ct, label, pet = case
    manifest = _manifest(
        tmp_path, [["s1", "petct", "CT", "ct.nii.gz", "label.nii.gz"], ["s1", "petct", "PET_CT", "pet.nii.gz", "label.nii.gz"]]
    )
    assert validate_manifest(manifest, UMD13) == []
    assert manifest.records[0].image == tmp_path / "ct.nii.gz"


def test_missing_file(case):
    tmp_path, ct, label, _ = case
    ct.unlink()
    with pytest.raises(ManifestError, match=r"ct\.nii\.gz: file not found"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_folder_or_symlink_loop_where_a_file_should_be(case):
    tmp_path, ct, label, pet = case
    ct.unlink()
    ct.mkdir()  # an unpacked archive left where the file was
    with pytest.raises(ManifestError, match=r"ct\.nii\.gz: is a folder, not a file$"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)
    label.unlink()
    label.symlink_to(label.name)  # a link to itself
    problems = validate_manifest(_one(tmp_path, pet, label, "PET_CT"), UMD13, raise_on_error=False)
    assert [str(p) for p in problems] == [f"{label}: is a symbolic link loop"]
    manifest = tmp_path / "loop.csv"
    manifest.symlink_to(manifest.name)
    with pytest.raises(ManifestError, match=r"loop\.csv: is a symbolic link loop"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match=r": is a folder, not a manifest file"):
        read_manifest(ct)


def test_unreadable_nifti(case):
    tmp_path, ct, label, _ = case
    ct.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(ManifestError, match=r"ct\.nii\.gz: unreadable"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_truncated_voxel_data(case):
    tmp_path, ct, label, _ = case
    raw = gzip.decompress(ct.read_bytes())
    ct.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(ManifestError, match=r"ct\.nii\.gz: unreadable"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_grids_disagree_shape(case):
    tmp_path, ct, _, _ = case
    label = _save(tmp_path / "small.nii.gz", np.zeros((15, 14, 12), np.uint8))
    with pytest.raises(ManifestError, match=r"small\.nii\.gz: label grid \(15, 14, 12\) does not match"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_grids_disagree_affine(case):
    tmp_path, ct, _, _ = case
    shifted = np.diag([2.0, 2.0, 3.0, 1.0])
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    label = _save(tmp_path / "shifted.nii.gz", np.zeros((16, 14, 12), np.uint8), shifted)
    with pytest.raises(ManifestError, match=r"shifted\.nii\.gz: label affine differs .* by 5 mm"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_pet_may_keep_its_own_grid_but_must_overlap(case):
    tmp_path, _, label, pet = case
    check_record(_one(tmp_path, pet, label, view="PET_CT").records[0], UMD13)
    far = np.diag([4.0, 4.0, 6.0, 1.0])
    far[:3, 3] = [1000.0, 0.0, 0.0]
    away = _save(tmp_path / "pet_far.nii.gz", np.ones((8, 7, 6), np.float32), far)
    with pytest.raises(ManifestError, match=r"pet_far\.nii\.gz: PET field of view does not overlap"):
        check_record(_one(tmp_path, away, label, view="PET_CT").records[0], UMD13)


def test_label_stored_in_another_orientation_on_the_same_world_grid_passes(case):
    tmp_path, ct, label, _ = case
    lab = np.asarray(nib.load(str(label)).dataobj)
    affine = nib.load(str(label)).affine
    # the same voxels stored with the second axis reversed and the axes swapped (like L,A,S vs L,P,S)
    flipped = affine @ np.array([[0, 1, 0, 0], [-1, 0, 0, lab.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    stored = np.flip(lab, axis=1).transpose(1, 0, 2).copy()
    other = _save(tmp_path / "label_las.nii.gz", stored, flipped)
    np.testing.assert_allclose(nib.affines.apply_affine(flipped, [lab.shape[1] - 1 - 5, 4, 3]),
                               nib.affines.apply_affine(affine, [4, 5, 3]))  # same voxel, same place
    check_record(_one(tmp_path, ct, other).records[0], UMD13)
    shifted = flipped.copy()
    shifted[:3, 3] += [0.0, 0.0, 6.0]
    away = _save(tmp_path / "label_away.nii.gz", stored, shifted)
    with pytest.raises(ManifestError, match=r"label_away\.nii\.gz: label affine differs from image .* by 6 mm"):
        check_record(_one(tmp_path, ct, away).records[0], UMD13)


def test_pet_in_bq_per_ml_stops_a_run_that_checks_units(case):
    tmp_path, _, label, _ = case
    bq = _save(tmp_path / "pet_bq.nii.gz", np.full((8, 7, 6), 12000.0, np.float32), np.diag([4.0, 4.0, 6.0, 1.0]))
    manifest = _one(tmp_path, bq, label, view="PET_CT")
    # not checked unless asked (check warns about it instead)
    assert validate_manifest(manifest, UMD13, raise_on_error=False) == []
    with pytest.raises(PetUnitsError, match=r"pet_bq\.nii\.gz: PET 99\.9th percentile is 1\.2e\+04: values look like "
                       r"Bq/ml, not SUV; convert it to SUV .* or pass data.pet_units=ignore"):
        validate_manifest(manifest, UMD13, raise_on_error=False, pet_units=True)


def test_nan_in_image(case):
    tmp_path, _, label, _ = case
    data = np.zeros((16, 14, 12), np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.nan
    img = _save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(ManifestError, match=r"nan\.nii\.gz: image contains 2 NaN voxel"):
        check_record(_one(tmp_path, img, label).records[0], UMD13)


def test_label_ids_outside_organ_set(case):
    tmp_path, ct, _, _ = case
    lab = np.zeros((16, 14, 12), np.uint8)
    lab[0, 0, 0], lab[1, 1, 1] = 14, 52
    label = _save(tmp_path / "foreign.nii.gz", lab)
    with pytest.raises(ManifestError, match=r"foreign\.nii\.gz: label ids \[14, 52\] are outside organ set umd13"):
        check_record(_one(tmp_path, ct, label).records[0], UMD13)


def test_4d_where_3d_expected(case):
    tmp_path, _, label, _ = case
    img = _save(tmp_path / "dyn.nii.gz", np.zeros((16, 14, 12, 3), np.float32))
    with pytest.raises(ManifestError, match=r"dyn\.nii\.gz: expected a 3D volume, got shape \(16, 14, 12, 3\)"):
        check_record(_one(tmp_path, img, label).records[0], UMD13)


def test_trailing_singleton_axis_is_3d(case):
    tmp_path, _, label, _ = case
    img = _save(tmp_path / "single.nii.gz", np.zeros((16, 14, 12, 1), np.float32))
    check_record(_one(tmp_path, img, label).records[0], UMD13)


def test_validate_collects_every_problem(case):
    tmp_path, ct, label, _ = case
    manifest = _manifest(
        tmp_path,
        [["s1", "petct", "CT", "ct.nii.gz", "label.nii.gz"], ["s2", "petct", "CT", "gone.nii.gz", "label.nii.gz"],
         ["s3", "petmri", "MRI", "also_gone.nii.gz", "label.nii.gz"]],
    )
    problems = validate_manifest(manifest, UMD13, raise_on_error=False)
    assert [p.case_id for p in problems] == ["s2_CT", "s3_MRI"]
    with pytest.raises(ManifestError, match=r"2 unusable case\(s\)[\s\S]*gone\.nii\.gz: file not found"):
        validate_manifest(manifest, UMD13)


@pytest.mark.parametrize(
    "row, message",
    [
        (["s1", "petct", "MRI", "a", "b"], "view MRI does not belong to session 'petct'"),
        (["s1", "petct", "XRAY", "a", "b"], "unknown view 'XRAY'"),
    ],
)
def test_bad_rows_name_the_row(tmp_path, row, message):
    with pytest.raises(ManifestError, match=message):
        _manifest(tmp_path, [row])


def test_missing_column_and_missing_manifest(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"subject_id": ["a"], "view": ["CT"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"m\.csv: missing column\(s\) session, image, label"):
        read_manifest(path)
    with pytest.raises(ManifestError, match=r"nope\.csv: manifest file not found"):
        read_manifest(tmp_path / "nope.csv")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32])
def test_distinct_values_equal_numpy_unique(dtype):
    """The counting path (8- and 16-bit integers, negative values, Fortran order, more than one slab)
    and the fallback give what np.unique gives, in its dtype."""
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    low, high = (int(info.min), int(info.max)) if info is not None and info.bits <= 8 else (-300, 300)
    if info is not None and info.min == 0:
        low = 0
    arr = np.asfortranarray(rng.integers(low, high + 1, (160, 160, 200)).astype(dtype))  # 5 M voxels: 2 slabs
    arr[0, 0, 0] = dtype(high)
    expected = np.unique(arr)
    got = distinct_values(arr)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
