"""26-connected components by runs (metrics/_components.py) against scipy.ndimage.label."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from umd_lightning.metrics._components import label26

FULL = np.ones((3, 3, 3), dtype=bool)


@pytest.mark.parametrize("seed", range(8))
def test_label26_equals_scipy_label(seed):
    """The same numbers voxel for voxel, on random masks from sparse specks to one blob, any layout."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 24, 3))
    mask = rng.random(shape) < rng.uniform(0.02, 0.6)
    if seed % 2:
        mask = np.asfortranarray(mask)[:, ::-1]  # neither C- nor F-contiguous
    got, n = label26(mask)
    want, n_want = ndimage.label(mask, structure=FULL)
    assert n == n_want
    np.testing.assert_array_equal(got, want)


def test_diagonal_touches_join_and_gaps_do_not():
    """Runs meeting only at a corner, in the row before or the plane before, are one component; one
    empty voxel between them is not."""
    mask = np.zeros((3, 4, 8), dtype=bool)
    mask[0, 0, 0:2] = True
    mask[1, 1, 2:4] = True  # corner of the run above: one
    mask[1, 1, 5] = True  # one voxel past that run's end in its own row: a second
    mask[2, 3, 7] = True  # two rows away from anything: a third
    labels, n = label26(mask)
    assert n == 3
    assert labels[0, 0, 0] == labels[1, 1, 3] == 1 and labels[1, 1, 5] == 2 and labels[2, 3, 7] == 3


def test_dtype_follows_the_count():
    assert label26(np.zeros((2, 2, 2), dtype=bool))[1] == 0
    specks = np.zeros((90, 90, 30), dtype=bool)
    specks[::2, ::2, ::2] = True  # 45 * 45 * 15 = 30 375 isolated voxels
    labels, n = label26(specks)
    assert n == 30375 and labels.dtype == np.uint16
    many = np.zeros((130, 130, 18), dtype=bool)
    many[::2, ::2, ::2] = True  # 65 * 65 * 9 = 38 025 ... doubled below
    many = np.concatenate([many, many], axis=2)  # 76 050 > 65 535
    labels, n = label26(many)
    assert n == 76050 and labels.dtype == np.int32 and labels.max() == n
