"""umd_lightning.grids.resample against MONAI's SpatialResample (the reference it replaces), on small volumes.

The affines use spacings and origins with no round ratios, so that no nearest-neighbour coordinate lies
within float32 rounding of a half (where MONAI's float32 grid and our float64 one may choose either
neighbour; real scanner affines are as irregular)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing, SpatialResample

from umd_lightning import grids
from umd_lightning.grids import resample, spacing_grid
from umd_lightning.models.resample import labels_to_grid, to_spacing

SRC = np.array([[2.0, 0, 0, -10.0], [0, -1.5, 0, 20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
ROTATED = np.eye(4)
ROTATED[:3, :3] = 1.1 * np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
ROTATED[:3, 3] = [-8.3, 15.1, 2.2]
GRIDS = {
    # finer and partly outside the source (zeros there, a partial weight at the edge)
    "upsampled": (np.array([[0.913, 0, 0, -12.17], [0, -0.7071, 0, 21.3], [0, 0, 1.3137, 3.11], [0, 0, 0, 1]]), (55, 40, 47)),
    # coarser, flipped on two axes (another orientation)
    "flipped": (np.array([[-4.1234, 0, 0, 40.03], [0, 3.3317, 0, -5.07], [0, 0, 5.2111, 6.13], [0, 0, 0, 1]]), (12, 9, 13)),
    # the array axes in another order (a sagittal file against an axial one)
    "permuted": (np.array([[0, 2.0313, 0, -9.17], [1.2171, 0, 0, -6.07], [0, 0, 2.5123, 2.11], [0, 0, 0, 1]]), (20, 25, 21)),
    "oblique": (ROTATED, (30, 28, 26)),
}


def _monai(image: torch.Tensor, dst: np.ndarray, shape, mode: str, padding: str = "zeros") -> torch.Tensor:
    src = MetaTensor(image.float(), affine=torch.as_tensor(SRC))
    op = SpatialResample(mode="bilinear" if mode == "linear" else "nearest", padding_mode=padding)
    return op(src, dst_affine=torch.as_tensor(dst), spatial_size=shape).as_tensor()


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("name", list(GRIDS))
def test_resample_equals_monai(name, padding):
    dst, shape = GRIDS[name]
    gen = torch.Generator().manual_seed(0)
    image = torch.randn((2, 23, 17, 19), generator=gen)
    ours = resample(image, SRC, dst, shape, "linear", padding)
    assert ours.dtype == torch.float32 and ours.shape == (2, *shape)
    torch.testing.assert_close(ours, _monai(image, dst, shape, "linear", padding), atol=2e-5, rtol=1e-5)
    labels = torch.randint(1, 14, (1, 23, 17, 19), generator=gen, dtype=torch.uint8)
    ours = resample(labels, SRC, dst, shape, "nearest", padding)
    assert ours.dtype == torch.uint8  # the label's own dtype, never a float copy
    assert torch.equal(ours, _monai(labels, dst, shape, "nearest", padding).to(torch.uint8))


def test_comparison_can_fail():
    """Half a voxel off (the align_corners mix-up the separable path could make) is caught."""
    dst, shape = GRIDS["upsampled"]
    image = torch.randn((1, 23, 17, 19), generator=torch.Generator().manual_seed(1))
    shifted = SRC.copy()
    shifted[:3, 3] += SRC[:3, :3] @ np.full(3, 0.5)
    assert not torch.allclose(resample(image, shifted, dst, shape), _monai(image, dst, shape, "linear"), atol=1e-3)


def test_slabs_and_integer_source(monkeypatch):
    """Slabs of one output row give the same volume; an int16 CT is read as it is, output float32."""
    dst, shape = GRIDS["flipped"]
    ct = torch.randint(-1000, 1500, (1, 23, 17, 19), dtype=torch.int16, generator=torch.Generator().manual_seed(2))
    whole = resample(ct, SRC, dst, shape)
    monkeypatch.setattr(grids, "_SLAB_VOXELS", 1)
    torch.testing.assert_close(resample(ct, SRC, dst, shape), whole)
    torch.testing.assert_close(whole, _monai(ct, dst, shape, "linear"), atol=1e-3, rtol=1e-5)


def test_model_grid_is_monais_spacing_grid():
    """to_spacing lands on the grid MONAI's Spacing chooses, with its values (the border value past the
    edge, Spacing's padding); labels come back in their dtype."""
    image = MetaTensor(torch.randn((1, 31, 22, 27), generator=torch.Generator().manual_seed(3)), affine=torch.as_tensor(SRC))
    target = (4.37, 3.91, 5.23)
    expected = Spacing(pixdim=target, mode="bilinear")(image)
    ours = to_spacing(image, target)
    affine, shape = spacing_grid(SRC, image.shape[1:], target)
    assert tuple(ours.shape[1:]) == shape == tuple(expected.shape[1:])
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(expected.affine), atol=1e-9)
    np.testing.assert_allclose(affine, np.asarray(expected.affine), atol=1e-9)
    torch.testing.assert_close(ours.as_tensor(), expected.as_tensor(), atol=2e-5, rtol=1e-5)
    labels = torch.randint(0, 5, shape, dtype=torch.uint8)
    back = labels_to_grid(labels, affine, SRC, image.shape[1:])
    assert back.dtype == torch.uint8 and back.shape == image.shape[1:]


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        resample(torch.zeros(1, 2, 2, 2), np.eye(4), np.eye(4), (2, 2, 2), "cubic")
    with pytest.raises(ValueError, match="padding"):
        resample(torch.zeros(1, 2, 2, 2), np.eye(4), np.eye(4), (2, 2, 2), padding="reflection")
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        resample(torch.zeros(2, 2, 2), np.eye(4), np.eye(4), (2, 2, 2))
    with pytest.raises(ValueError, match="not invertible"):
        resample(torch.zeros(1, 2, 2, 2), np.zeros((4, 4)), np.eye(4), (2, 2, 2))
