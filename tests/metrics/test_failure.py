"""Failure-mode columns on analytic shapes: components counted by hand, distances known exactly or
brute-forced over every voxel pair, SUV means of constant regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from umd_lightning.metrics.failure import case_metrics_and_failure, failure_columns
from umd_lightning.metrics.functional import ROW_KEYS, case_metrics
from umd_lightning.results import FAILURE_COLUMNS

SPACING = (2.0, 1.0, 0.5)
LABELS = {1: "liver", 2: "spleen"}


def _grid(shape=(30, 24, 20)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def test_two_cubes_at_a_known_distance():
    ref, pred = _grid(), _grid()
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1  # overlaps the reference
    pred[16:18, 2:4, 2:4] = 1  # apart along axis 0: first voxel 16, reference's last 5
    cols = failure_columns(pred, ref, SPACING, LABELS)["liver"]
    assert cols["n_components"] == 2
    assert cols["farthest_component_mm"] == (16 - 5) * SPACING[0]


def test_a_component_apart_on_the_diagonal():
    ref, pred = _grid(), _grid()
    ref[2:5, 2:5, 2:5] = 1
    pred[10:12, 10:12, 10:12] = 1  # nearest pair (4,4,4) - (10,10,10)
    cols = failure_columns(pred, ref, SPACING, LABELS)["liver"]
    assert cols["n_components"] == 1
    assert cols["farthest_component_mm"] == pytest.approx(math.sqrt((6 * 2.0) ** 2 + 6**2 + (6 * 0.5) ** 2), abs=1e-12)


def test_components_counted_by_hand_with_26_connectivity():
    ref, pred = _grid(), _grid()
    ref[1:4, 1:4, 1:4] = 1
    pred[1:4, 1:4, 1:4] = 1  # 1: the organ itself
    pred[4, 4, 4] = 1  # touches it by a corner only: still component 1
    pred[10, 10, 10] = pred[11, 10, 10] = 1  # 2: a face-connected pair
    pred[20, 5, 5] = 1  # 3
    pred[20, 7, 5] = 1  # 4: one empty voxel between it and 3
    cols = failure_columns(pred, ref, SPACING, LABELS)
    assert cols["liver"]["n_components"] == 4
    assert cols["spleen"]["n_components"] == 0


def test_every_component_touching_the_reference_is_at_zero():
    ref, pred = _grid(), _grid()
    ref[2:8, 2:8, 2:8] = 1
    pred[2:4, 2:4, 2:4] = 1
    pred[6:9, 6:9, 6:9] = 1  # two blobs, both overlap the organ
    cols = failure_columns(pred, ref, SPACING, LABELS)["liver"]
    assert cols["n_components"] == 2 and cols["farthest_component_mm"] == 0.0


def _with_metrics(pred, ref, spacing, labels, suv=None):
    """The failure columns as :func:`case_metrics_and_failure` gives them, its metrics checked against case_metrics.

    Scored on two threads (organs in parallel), checked against one."""
    rows = case_metrics_and_failure(pred, ref, spacing, labels, suv=suv, workers=2)
    for row, alone in zip(rows, case_metrics(pred, ref, spacing, labels), strict=True):
        assert all(row[k] == alone[k] or (row[k] != row[k] and alone[k] != alone[k]) for k in ROW_KEYS)  # NaN == NaN
    return {r["organ"]: {k: r[k] for k in FAILURE_COLUMNS} for r in rows}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("specks", [0.02, 0.0004])  # dense noise; a few specks far apart (planes between them dropped)
@pytest.mark.parametrize("columns", [failure_columns, _with_metrics])  # alone; reusing the metrics' distances
def test_farthest_component_and_suv_match_brute_force(seed, specks, columns):
    rng = np.random.default_rng(seed)
    shape = (40, 30, 24)
    ref, pred = _grid(shape), _grid(shape)
    ref[14:21, 10:16, 8:14] = 1
    ref[ref == 1] = rng.random(int((ref == 1).sum())) < 0.8  # a ragged organ
    pred[rng.random(shape) < specks] = 1
    pred[15:19, 11:15, 9:12] = 1
    pred[2, 2, 2] = pred[2, 2, 4] = pred[3, 3, 5] = 1  # 2 components: one empty plane apart, then a corner
    suv = rng.uniform(0.5, 9.0, shape).astype(np.float32)
    comps, n = ndimage.label(pred == 1, structure=np.ones((3, 3, 3)))
    sp = np.asarray(SPACING)
    ref_pts = np.argwhere(ref == 1) * sp
    farthest = max(cdist(np.argwhere(comps == c) * sp, ref_pts).min() for c in range(1, n + 1))
    cols = columns(pred, ref, SPACING, LABELS, suv=suv)["liver"]
    assert cols["n_components"] == n
    assert cols["farthest_component_mm"] == pytest.approx(farthest, abs=1e-9)
    assert cols["suv_mean_pred"] == pytest.approx(suv[pred == 1].astype(np.float64).mean(), rel=1e-12)
    assert cols["suv_mean_ref"] == pytest.approx(suv[ref == 1].astype(np.float64).mean(), rel=1e-12)


def test_more_components_than_uint16_counts():
    """Labels go into uint16 when they fit; 91 125 isolated voxels (every other voxel on each axis:
    never neighbours, even by a corner) take the int32 path and are all counted."""
    pred, ref = _grid((90, 90, 90)), _grid((90, 90, 90))
    pred[::2, ::2, ::2] = 1
    ref[0, 0, 0] = 1
    cols = failure_columns(pred, ref, (1.0, 1.0, 1.0), {1: "liver"})["liver"]
    assert cols["n_components"] == 45**3 > 2**16
    assert cols["farthest_component_mm"] == pytest.approx(math.sqrt(3) * 88)  # the opposite corner


def test_suv_means_of_constant_regions():
    ref, pred = _grid(), _grid()
    ref[4:8, 4:8, 4:8] = 1  # 64 voxels at SUV 3.5
    pred[4:8, 4:8, 6:10] = 1  # 32 of them inside, 32 outside at SUV 1
    suv = np.ones(ref.shape, dtype=np.float32)
    suv[ref == 1] = 3.5
    cols = failure_columns(pred, ref, SPACING, LABELS, suv=suv)
    assert cols["liver"]["suv_mean_ref"] == 3.5
    assert cols["liver"]["suv_mean_pred"] == (32 * 3.5 + 32 * 1.0) / 64
    assert math.isnan(cols["spleen"]["suv_mean_ref"]) and math.isnan(cols["spleen"]["suv_mean_pred"])


def test_undefined_values_are_nan():
    ref, pred = _grid(), _grid()
    ref[2:5, 2:5, 2:5] = 1  # liver missed
    pred[10:12, 10:12, 10:12] = 2  # spleen predicted, absent from the reference
    cols = failure_columns(pred, ref, SPACING, LABELS)
    assert set(cols["liver"]) == set(FAILURE_COLUMNS)
    assert cols["liver"]["n_components"] == 0 and math.isnan(cols["liver"]["farthest_component_mm"])
    assert cols["spleen"]["n_components"] == 1 and math.isnan(cols["spleen"]["farthest_component_mm"])
    assert all(math.isnan(c["suv_mean_pred"]) and math.isnan(c["suv_mean_ref"]) for c in cols.values())  # no PET


def test_torch_inputs_and_a_batch_shaped_pet():
    ref, pred = _grid(), _grid()
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 2:6] = 1
    suv = torch.full((1, *ref.shape), 2.0)
    cols = failure_columns(torch.from_numpy(pred).long(), torch.from_numpy(ref), SPACING, LABELS, suv=suv)["liver"]
    assert cols["n_components"] == 1 and cols["farthest_component_mm"] == 0.0 and cols["suv_mean_pred"] == 2.0


def test_a_pet_off_the_label_grid_is_refused():
    ref = _grid()
    with pytest.raises(ValueError, match="label grid"):
        failure_columns(ref, ref, SPACING, LABELS, suv=np.zeros((3, 3, 3)))
