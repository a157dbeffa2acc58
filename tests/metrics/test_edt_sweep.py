"""The distance-transform sweep (metrics/_edt.py) against all-pairs distances and scipy's EDT."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from umd_lightning.metrics._edt import nearest_distances


def _points(rng: np.random.Generator, n: int, lo, hi) -> np.ndarray:
    return np.stack([rng.integers(a, b, n) for a, b in zip(lo, hi)], axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_sweep_equals_all_pairs_distances(seed):
    """Random sets, anisotropic spacing, queries outside the set's box, repeated points, any order."""
    rng = np.random.default_rng(seed)
    shape = rng.integers(1, 25, 3)
    spacing = rng.uniform(0.3, 4.0, 3)
    dst = _points(rng, int(rng.integers(1, 80)), (0, 0, 0), shape)
    src = _points(rng, int(rng.integers(1, 300)), -shape // 2, shape + shape // 2)  # unsorted, repeats
    want = cdist(src * spacing, dst * spacing).min(axis=1)
    for workers in (1, 3):
        got = nearest_distances(src, dst, spacing, workers=workers)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-12)


def test_sweep_equals_scipy_edt_on_a_volume():
    """Every voxel of a grid as a query: scipy's exact EDT of the set's complement."""
    rng = np.random.default_rng(11)
    smooth = ndimage.gaussian_filter(rng.standard_normal((30, 41, 23)), 3)
    field = smooth > np.quantile(smooth, 0.97)  # a few blobs
    spacing = np.array([2.0, 0.8, 1.3])
    want = ndimage.distance_transform_edt(~field, sampling=spacing)
    got = nearest_distances(np.argwhere(np.ones_like(field)), np.argwhere(field), spacing, workers=2)
    np.testing.assert_allclose(got.reshape(field.shape), want, rtol=1e-13, atol=1e-12)


def test_single_points_and_empty_sets():
    spacing = np.array([1.0, 2.0, 3.0])
    assert nearest_distances(np.array([[0, 0, 0]]), np.array([[1, 1, 1]]), spacing)[0] == pytest.approx(np.sqrt(14.0))
    assert nearest_distances(np.array([[4, 5, 6]]), np.array([[4, 5, 6]]), spacing)[0] == 0.0
    assert nearest_distances(np.zeros((0, 3), int), np.array([[1, 1, 1]]), spacing).shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        nearest_distances(np.array([[0, 0, 0]]), np.zeros((0, 3), int), spacing)


def test_warm_kernels_loads_every_compiled_kernel():
    """The evaluation's warm-up thread leaves the sweep, the labelling and the boxes ready to call."""
    from umd_lightning.metrics import _boxes, _components, _edt
    from umd_lightning.metrics.functional import warm_kernels

    thread = warm_kernels()
    thread.join(timeout=300)
    assert not thread.is_alive()
    for kernel in (_edt._sweep, _components._runs, _components._label_runs, _components._paint, _boxes._extents):
        assert kernel.signatures, kernel
