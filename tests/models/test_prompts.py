"""Prompt simulation: determinism, points inside organs, boxes around them, corrective clicks, oracle flag."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from umd_lightning.models.foundation import PromptedAdapter
from umd_lightning.models.prompts import (
    PromptSimulator,
    bounding_box,
    center_point,
    corrective_click,
    prompts_to_records,
    random_points,
)
from umd_lightning.organs import UMD13, load_label_map


@pytest.fixture(scope="module")
def real_reference(real_data_dir) -> np.ndarray:
    """example_seg (TotalSegmentator v2 "total" ids, wasserth/TotalSegmentator tests, Apache-2.0) on umd13."""
    seg = np.asarray(nib.load(str(real_data_dir / "example_seg.nii.gz")).dataobj).astype(np.int64)
    return load_label_map("total").apply(seg, UMD13)


def _box_volume() -> np.ndarray:
    ref = np.zeros((40, 36, 30), dtype=np.uint8)
    ref[4:15, 6:17, 8:19] = UMD13.ids["liver"]  # 11^3 cube, centre (9, 11, 13)
    ref[30:33, 30:33, 2:5] = UMD13.ids["liver"]  # a small second component
    ref[20:38, 2:12, 20:28] = UMD13.ids["spleen"]
    return ref


def test_center_point_is_the_centre_of_the_largest_component():
    ref = _box_volume()
    assert center_point(ref == UMD13.ids["liver"]) == (9, 11, 13)
    assert center_point(np.zeros((4, 4, 4), bool)) is None


def _brute_depth_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) of every mask voxel to the nearest voxel outside it (the volume's edge counts)."""
    padded = np.pad(mask, 1)
    fg = np.argwhere(padded) * np.asarray(spacing)
    bg = np.argwhere(~padded) * np.asarray(spacing)
    d = np.sqrt(((fg[:, None, :] - bg[None, :, :]) ** 2).sum(-1)).min(1)
    out = np.zeros(padded.shape)
    out[tuple(np.argwhere(padded).T)] = d
    return out[1:-1, 1:-1, 1:-1]


def test_center_point_measures_distance_in_mm():
    mask = np.ones((12, 12, 6), bool)
    spacing = (1.0, 1.0, 3.0)
    depth = _brute_depth_mm(mask, spacing)
    in_mm = center_point(mask, spacing=spacing)
    in_voxels = center_point(mask)
    assert depth[in_mm] == pytest.approx(depth.max()) == pytest.approx(6.0)
    # measured in voxels, the thin z axis dominates and the point is nearer the x/y walls
    assert depth[in_voxels] < depth.max()


def test_prompts_are_deterministic_and_seeded():
    ref = _box_volume()
    sim = PromptSimulator(seed=3, k_random=4, boxes=True, box_jitter=0.3)
    a = prompts_to_records(sim.simulate(ref, UMD13, case_id="s01_petct_CT"))
    b = prompts_to_records(PromptSimulator(seed=3, k_random=4, boxes=True, box_jitter=0.3).simulate(
        torch.as_tensor(ref), UMD13, case_id="s01_petct_CT"))
    assert a == b
    c = prompts_to_records(PromptSimulator(seed=4, k_random=4, boxes=True, box_jitter=0.3).simulate(
        ref, UMD13, case_id="s01_petct_CT"))
    d = prompts_to_records(sim.simulate(ref, UMD13, case_id="s02_petct_CT"))
    assert a != c and a != d
    # the centre point does not depend on the seed, only the random ones do
    centre = [r for r in a if r.get("source") == "center"]
    assert centre == [r for r in c if r.get("source") == "center"]
    json.dumps(a)  # saved with the results


def test_prompts_do_not_depend_on_the_other_organs():
    ref = _box_volume()
    sim = PromptSimulator(seed=1, k_random=3)
    both = sim.simulate(ref, UMD13, case_id="x")
    only_spleen = sim.simulate(ref, UMD13, case_id="x", organs=["spleen"])
    assert list(only_spleen) == ["spleen"]
    assert only_spleen["spleen"].records() == both["spleen"].records()


def test_real_scan_points_inside_and_boxes_around_each_organ(real_reference):
    ref = real_reference
    sim = PromptSimulator(seed=0, k_random=5, boxes=True, box_jitter=0.0)
    prompts = sim.simulate(ref, UMD13, case_id="example", spacing=(3.0, 3.0, 3.0))
    present = [o for o in UMD13.organs if (ref == UMD13.ids[o]).any()]
    assert present and list(prompts) == present
    for organ, op in prompts.items():
        mask = ref == op.label
        assert len(op.points) == 1 + min(5, int(mask.sum()))
        for p in op.points:
            assert mask[p.coords], (organ, p)
        # a tight box is exactly the organ's extent (hand count with np.nonzero)
        idx = np.nonzero(mask)
        assert op.box.lo == tuple(int(i.min()) for i in idx)
        assert op.box.hi == tuple(int(i.max()) for i in idx)


def test_jittered_boxes_still_contain_the_organ(real_reference):
    ref = real_reference
    for seed in range(3):
        prompts = PromptSimulator(seed=seed, boxes=True, box_jitter=0.25).simulate(ref, UMD13, case_id="e")
        for op in prompts.values():
            mask = ref == op.label
            inside = np.zeros_like(mask)
            inside[op.box.slices()] = True
            assert mask[~inside].sum() == 0
            assert all(0 <= lo <= hi < n for lo, hi, n in zip(op.box.lo, op.box.hi, ref.shape))


def test_box_jitter_only_loosens():
    mask = np.zeros((50, 50, 50), bool)
    mask[20:30, 20:30, 20:30] = True
    rng = np.random.default_rng(0)
    boxes = [bounding_box(mask, jitter=0.5, rng=rng) for _ in range(20)]
    assert all(lo[a] <= 20 and hi[a] >= 29 for lo, hi in boxes for a in range(3))
    assert any(lo != (20, 20, 20) or hi != (29, 29, 29) for lo, hi in boxes)


def test_random_points_are_distinct_and_inside():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True
    pts = random_points(mask, 8, np.random.default_rng(0))
    assert len(set(pts)) == 8
    # margin 1: never on the organ's surface
    assert all(6 <= c <= 13 for p in pts for c in p)


def test_corrective_click_positive_in_missed_region_negative_in_extra():
    ref = np.zeros((30, 30, 30), bool)
    ref[5:25, 5:25, 5:25] = True
    missed = ref.copy()
    missed[5:25, 5:25, 15:25] = False  # the upper half missed -> centre of the missed slab
    coords, positive = corrective_click(missed, ref)
    assert positive and ref[coords] and not missed[coords]
    assert coords[2] in (19, 20)
    extra = ref.copy()
    extra[26:30, 0:30, 0:30] = True  # over-segmentation away from the organ
    coords, positive = corrective_click(extra, ref)
    assert not positive and extra[coords] and not ref[coords]
    assert corrective_click(ref, ref) is None


def test_simulator_correct_appends_numbered_clicks():
    ref = _box_volume()
    sim = PromptSimulator(corrective_clicks=2)
    op = sim.simulate(ref, UMD13, case_id="c")["liver"]
    empty = np.zeros(ref.shape, bool)
    first = sim.correct(op, empty, ref)
    assert first.source == "corrective" and first.iteration == 1 and first.positive
    assert (ref == op.label)[first.coords]
    assert sim.correct(op, ref == op.label, ref) is None
    assert [p.source for p in op.points] == ["center", "corrective"]


class _OracleEcho(PromptedAdapter):
    """Predicts a ball of radius 2 around the first click: enough to run the prompted loop."""

    def segment_organ(self, prepared, prompts, previous):
        grid = np.indices(prepared.shape[-3:])
        pts = [p for p in prompts.points if p.positive]
        scores = -np.ones(prepared.shape[-3:], np.float32)
        for p in pts:
            d2 = sum((g - c) ** 2 for g, c in zip(grid, p.coords))
            scores[d2 <= 4] = 1.0
        return None, torch.as_tensor(scores), None


def test_prompted_adapter_records_oracle_flag_and_prompts():
    ref = torch.as_tensor(_box_volume())
    adapter = _OracleEcho("echo", prompts={"seed": 0, "corrective_clicks": 2})
    assert adapter.info.oracle is True and adapter.info.prompt_kind == "point"
    row = adapter.info.as_row()
    assert row["oracle"] is True and row["prompt_kind"] == "point"
    image = torch.zeros(1, 1, *ref.shape)
    pred = adapter.predict_volume(image, {"case_id": "c"}, UMD13, reference=ref)
    assert pred.labels.shape == ref.shape and pred.labels.dtype == torch.uint8
    assert set(pred.labels.unique().tolist()) == {0, UMD13.ids["liver"], UMD13.ids["spleen"]}
    # every organ got its centre click plus two corrections (the ball never covers a whole organ)
    kinds = [(r["organ"], r["source"]) for r in pred.prompts]
    assert kinds.count(("liver", "corrective")) == 2 and kinds.count(("spleen", "center")) == 1
    json.dumps(pred.prompts)
    with pytest.raises(ValueError, match="oracle"):
        adapter.predict_volume(image, {"case_id": "c"}, UMD13, reference=None)
