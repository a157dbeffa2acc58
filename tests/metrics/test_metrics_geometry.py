"""The case metrics' geometry helpers against scipy: organ bounding boxes (find_objects) and surface
voxels (a mask less its binary erosion, outside the crop as background)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from umd_lightning.metrics._boxes import bounding_boxes
from umd_lightning.metrics.functional import _COMPILED_BOXES_MIN_VOXELS, _boundary, _bounding_boxes


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (40, 30, 20), (3, 200, 1)])
@pytest.mark.parametrize("max_label", [1, 13, 70])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_compiled_boxes_equal_find_objects(shape, max_label, dtype):
    rng = np.random.default_rng(max_label)
    labels = ((rng.random(shape) < 0.05) * rng.integers(0, 90, shape)).astype(dtype)  # ids above max_label too
    assert bounding_boxes(labels, max_label) == ndimage.find_objects(labels, max_label=max_label)
    assert bounding_boxes(np.asfortranarray(labels), max_label) == ndimage.find_objects(labels, max_label=max_label)


def test_a_large_map_takes_the_compiled_pass(monkeypatch):
    labels = np.zeros((100, 100, 100), dtype=np.uint8)
    assert labels.size >= _COMPILED_BOXES_MIN_VOXELS
    labels[10:20, 30:31, 5:95] = 2
    labels[99, 0, 0] = 13
    monkeypatch.setattr(ndimage, "find_objects", None)  # not called
    assert _bounding_boxes(labels, 13) == [
        None, (slice(10, 20), slice(30, 31), slice(5, 95)), *[None] * 10, (slice(99, 100), slice(0, 1), slice(0, 1))
    ]


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (2, 3, 8), (3, 4, 17), (7, 2, 33), (4, 4, 1), (9, 8, 64)])
@pytest.mark.parametrize("fill", [0.3, 0.7, 0.95])
def test_surface_is_mask_less_its_erosion(shape, fill):
    mask = np.random.default_rng(len(shape) * 31 + shape[-1]).random(shape) < fill
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    assert np.array_equal(_boundary(mask), mask & ~eroded)
