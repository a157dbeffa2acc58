"""Label harmonisation on the real scans: TotalSegmentator CT/MR ids -> umd13, VISTA3D ids, text names.

Real scans: ../shared/data/real (wasserth/TotalSegmentator, tests/reference_files, Apache-2.0).
Expected counts are hand counts on the source ids (np.isin), never the label map itself.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from umd_lightning.models.foundation import FoundationAdapter, label_map_from_names, normalise_name
from umd_lightning.organs import UMD13, LabelMap, get_organ_set, load_label_map

# Source ids per UMD organ, written out from the README of ../shared/data/real (not from the YAMLs).
TOTAL_IDS = {
    "spleen": [1], "kidney_right": [2], "kidney_left": [3], "liver": [5], "stomach": [6], "pancreas": [7],
    "lung": [10, 11, 12, 13, 14], "esophagus": [15], "colon": [20], "urinary_bladder": [21], "heart": [51],
    "aorta": [52], "brain": [90],
}
TOTAL_MR_IDS = {
    "spleen": [1], "kidney_right": [2], "kidney_left": [3], "liver": [5], "stomach": [6], "pancreas": [7],
    "lung": [10, 11], "esophagus": [12], "colon": [15], "urinary_bladder": [16], "heart": [22], "aorta": [23],
    "brain": [50],
}


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


@pytest.mark.parametrize(
    "seg_file, map_name, ids",
    [("example_seg.nii.gz", "total", TOTAL_IDS), ("example_seg_mr.nii.gz", "total_mr", TOTAL_MR_IDS)],
)
def test_totalsegmentator_ids_to_umd13_on_real_scans(real_data_dir, seg_file, map_name, ids):
    seg = _load(real_data_dir / seg_file)
    out = load_label_map(map_name).apply(seg, UMD13)
    assert out.shape == seg.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, *UMD13.labels}
    for organ, src in ids.items():
        expected = np.isin(seg, src)
        np.testing.assert_array_equal(out == UMD13.ids[organ], expected, err_msg=organ)
    # everything the organ set does not hold (vertebrae, gallbladder, ...) is background
    np.testing.assert_array_equal(out == 0, ~np.isin(seg, [i for v in ids.values() for i in v]))


def test_real_scans_exercise_merges_and_sides(real_data_dir):
    """The test above is only meaningful if the scans hold several lobes and both kidneys."""
    ct = _load(real_data_dir / "example_seg.nii.gz")
    mr = _load(real_data_dir / "example_seg_mr.nii.gz")
    assert sum(np.isin(ct, [i]).any() for i in TOTAL_IDS["lung"]) >= 2
    assert (ct == 2).any() and (ct == 3).any()
    assert (mr == 2).any() and (mr == 3).any()
    out = load_label_map("total").apply(ct, UMD13)
    # left and right kidneys stay apart: no voxel of the right kidney becomes left
    assert not ((out == UMD13.ids["kidney_left"]) & (ct == 2)).any()


def test_merge_into_an_organ_set_without_sides():
    """An organ set with one 'kidney' gets nothing from side-specific ids unless a map says so."""
    seg = np.array([[[0, 2, 3, 10, 11]]])
    merged = get_organ_set({1: "kidney", 2: "lung"})
    out = load_label_map("total").apply(seg, merged)
    assert out.tolist() == [[[0, 0, 0, 2, 2]]]
    assert load_label_map("total").organs_covered(merged) == ("lung",)


def test_vista3d_map_lobes_and_sides():
    vista = load_label_map("vista3d")
    seg = np.array([[[0, 28, 29, 30, 31, 32, 5, 14, 2, 20, 115, 22, 62, 15]]])
    out = vista.apply(seg, UMD13)
    lung, kr, kl = UMD13.ids["lung"], UMD13.ids["kidney_right"], UMD13.ids["kidney_left"]
    assert out.tolist() == [[[0, lung, lung, lung, lung, lung, kr, kl, 0, 0, UMD13.ids["heart"],
                              UMD13.ids["brain"], UMD13.ids["colon"], UMD13.ids["urinary_bladder"]]]]
    assert vista.organs_covered(UMD13) == UMD13.organs


def test_text_names_from_a_dataset_json():
    names = {0: "background", 1: "kidney_left", 2: "Kidney-Right", 3: "lung_upper_lobe_left", 4: "lung lower lobe right",
             5: "kidney", 6: "gallbladder", 7: "Urinary Bladder"}
    lm = label_map_from_names(names, name="ds", source="dataset.json")
    assert lm.mapping == {1: "kidney_left", 2: "kidney_right", 3: "lung", 4: "lung", 7: "urinary_bladder"}
    assert set(lm.organs_covered(UMD13)) == {"kidney_left", "kidney_right", "lung", "urinary_bladder"}
    assert normalise_name("  Lung__Upper-lobe  LEFT ") == "lung upper lobe left"


@pytest.mark.parametrize("name", ["segvol_text", "sat_text", "text_names", "vista3d", "total", "total_mr"])
def test_every_shipped_map_targets_umd13_names(name):
    lm = load_label_map(name)
    assert set(lm.mapping.values()) <= set(UMD13.organs), name


def test_an_organ_the_vocabulary_cannot_name_is_not_predicted():
    no_brain = LabelMap("partial", "test", {1: "liver", 2: "spleen"})
    adapter = FoundationAdapter("partial", label_map=no_brain)
    assert adapter.organs_predicted(UMD13) == ("liver", "spleen")
    assert adapter.info.vocabulary == "partial"
    # ids the map does not know become background, never another organ
    out = adapter.harmonise(torch.tensor([[[0, 1, 2, 3]]]), UMD13)
    assert out.tolist() == [[[0, UMD13.ids["liver"], UMD13.ids["spleen"], 0]]]
