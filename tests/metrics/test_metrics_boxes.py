"""Organ bounding boxes of the case metrics: scipy's find_objects, whatever the path taken."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from umd_lightning.metrics.functional import _bounding_boxes


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
