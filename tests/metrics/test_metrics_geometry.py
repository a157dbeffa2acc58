"""The case metrics' geometry helpers against scipy: organ bounding boxes (find_objects) and surface
voxels (a mask less its binary erosion, outside the crop as background)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from umd_lightning.metrics.functional import _boundary, _bounding_boxes


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (40, 30, 20), (3, 200, 1)])
@pytest.mark.parametrize("max_label", [1, 13, 20, 40, 70])  # 16-, 32- and 64-bit masks; find_objects itself
def test_boxes_equal_find_objects(shape, max_label):
    rng = np.random.default_rng(max_label)
    labels = ((rng.random(shape) < 0.05) * rng.integers(0, 90, shape)).astype(np.uint8)  # ids above max_label too
    assert _bounding_boxes(labels, max_label) == ndimage.find_objects(labels, max_label=max_label)


def test_boxes_of_wider_integer_maps():
    labels = np.zeros((6, 5, 4), dtype=np.int32)
    labels[1:3, 2, 0:4] = 2
    assert _bounding_boxes(labels, 3) == [None, (slice(1, 3), slice(2, 3), slice(0, 4)), None]


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 9), (2, 3, 8), (3, 4, 17), (7, 2, 33), (4, 4, 1), (9, 8, 64)])
@pytest.mark.parametrize("fill", [0.3, 0.7, 0.95])
def test_surface_is_mask_less_its_erosion(shape, fill):
    mask = np.random.default_rng(len(shape) * 31 + shape[-1]).random(shape) < fill
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    assert np.array_equal(_boundary(mask), mask & ~eroded)
