"""Real scans (TotalSegmentator tests/reference_files, Apache-2.0): a CT stored RAS and an MR stored LPS.

Both must come out of the evaluation pipeline in RAS, with world coordinates unchanged, labels intact and
intensities normalised per view.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from umd_lightning.data.transforms import eval_transforms
from umd_lightning.organs import UMD13, load_label_map


@pytest.fixture()
def real_cases(real_data_dir, tmp_path):
    """The real label maps mapped onto umd13 (written beside the test, never into the project)."""
    out = {}
    for view, image, seg, vocab in [
        ("CT", "example_ct_sm.nii.gz", "example_seg.nii.gz", "total"),
        ("MRI", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr"),
    ]:
        src = nib.load(str(real_data_dir / seg))
        mapped = load_label_map(vocab).apply(np.asanyarray(src.dataobj), UMD13)
        path = tmp_path / f"{view}_label.nii.gz"
        nib.save(nib.Nifti1Image(mapped, src.affine), str(path))
        out[view] = (real_data_dir / image, path)
    return out


@pytest.mark.parametrize("view, stored_codes", [("CT", ("R", "A", "S")), ("MRI", ("L", "P", "S"))])
def test_real_scans_are_reoriented_to_ras(real_cases, view, stored_codes):
    image_path, label_path = real_cases[view]
    raw = nib.load(str(image_path))
    assert nib.aff2axcodes(raw.affine) == stored_codes
    data = eval_transforms()({"image": str(image_path), "label": str(label_path), "view": view})
    image, label = data["image"], data["label"]
    assert nib.aff2axcodes(np.asarray(image.affine)) == ("R", "A", "S")
    assert image.shape[1:] == label.shape[1:]

    # The same voxel holds the same world point before and after: compare the raw array read through
    # nibabel's own reorientation with what the pipeline produced.
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(raw.affine), nib.orientations.axcodes2ornt("RAS")
    )
    expected_labels = nib.orientations.apply_orientation(np.asanyarray(nib.load(str(label_path)).dataobj), ornt)
    np.testing.assert_array_equal(label[0].numpy(), expected_labels)
    expected_affine = raw.affine @ nib.orientations.inv_ornt_aff(ornt, raw.shape)
    np.testing.assert_allclose(np.asarray(image.affine), expected_affine, atol=1e-4)

    # LPS -> RAS flips the first two axes; RAS stays as it is.
    flipped = stored_codes != ("R", "A", "S")
    raw_labels = np.asanyarray(nib.load(str(label_path)).dataobj)
    np.testing.assert_array_equal(label[0].numpy(), raw_labels[::-1, ::-1, :] if flipped else raw_labels)

    # Intensities stay in the file's physical units (preprocessing belongs to the model): the stored
    # values, scaled as nibabel scales them, only reoriented.
    expected_image = nib.orientations.apply_orientation(raw.get_fdata(dtype=np.float32), ornt)
    np.testing.assert_allclose(image[0].numpy(), expected_image, rtol=0, atol=1e-3)


def test_world_centroid_of_liver_is_unchanged(real_cases):
    for view, (image_path, label_path) in real_cases.items():
        lab_img = nib.load(str(label_path))
        liver = UMD13.ids["liver"]
        ijk = np.argwhere(np.asanyarray(lab_img.dataobj) == liver).mean(0)
        before = nib.affines.apply_affine(lab_img.affine, ijk)
        data = eval_transforms()({"image": str(image_path), "label": str(label_path), "view": view})
        ijk2 = np.argwhere(data["label"][0].numpy() == liver).mean(0)
        after = nib.affines.apply_affine(np.asarray(data["label"].affine), ijk2)
        np.testing.assert_allclose(after, before, atol=1e-3)


def test_totalsegmentator_vocabularies_map_onto_umd13(real_data_dir):
    ct = np.asanyarray(nib.load(str(real_data_dir / "example_seg.nii.gz")).dataobj)
    mr = np.asanyarray(nib.load(str(real_data_dir / "example_seg_mr.nii.gz")).dataobj)
    ct_mapped = load_label_map("total").apply(ct, UMD13)
    mr_mapped = load_label_map("total_mr").apply(mr, UMD13)
    ids = UMD13.ids
    # Lobes merge into one lung: a hand count of the five lobe ids present in the file.
    lobes = np.isin(ct, [10, 11, 12, 13, 14]).sum()
    assert lobes > 0 and (ct_mapped == ids["lung"]).sum() == lobes
    # Left and right stay apart: total id 2 = kidney_right, 3 = kidney_left.
    assert (ct_mapped == ids["kidney_right"]).sum() == (ct == 2).sum() > 0
    assert (ct_mapped == ids["kidney_left"]).sum() == (ct == 3).sum() > 0
    assert (mr_mapped == ids["kidney_left"]).sum() == (mr == 3).sum() > 0
    # Structures outside the organ set (vertebrae, gallbladder...) become background.
    assert (ct_mapped == 0).sum() == np.isin(ct, list(load_label_map("total").mapping), invert=True).sum()
    assert set(np.unique(ct_mapped)) <= {0, *UMD13.labels}
    assert (mr_mapped == ids["liver"]).sum() == (mr == 5).sum() > 0
