"""The CUDA paths for real: streamed inference through pinned memory and the side stream, autocast,
and the device augmentation. Skipped where no GPU is present (CI); the CPU tests of the same code
drive the pipeline's bookkeeping with stand-ins (tests/models/test_inference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from conftest import assert_same_labels, paired_batch, small_net
from umd_lightning.lit.augment import DeviceAugment
from umd_lightning.models.inference import sliding_window_labels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


def monai_scores(image: torch.Tensor, net: torch.nn.Module, roi, overlap: float, sw_batch_size: int) -> torch.Tensor:
    """MONAI aggregating on the GPU: the reference the streamed labels must equal."""
    with torch.no_grad():
        return sliding_window_inference(image.to(CUDA), roi, sw_batch_size, net, overlap, "gaussian")[0].cpu()


@pytest.mark.parametrize("size, roi, overlap", [((37, 41, 29), (16, 16, 16), 0.25), ((23, 9, 50), (8, 24, 12), 0.5),
                                                ((70, 64, 66), (32, 32, 32), 0.25)])
def test_streamed_labels_on_cuda_match_monai(size, roi, overlap):
    torch.manual_seed(1)
    image = torch.randn(1, 2, *size)
    net = small_net().to(CUDA)
    ours = sliding_window_labels(image, net, roi, sw_batch_size=3, overlap=overlap)
    assert ours.device.type == "cpu" and ours.dtype == torch.uint8
    assert_same_labels(ours, monai_scores(image, net, roi, overlap, 3))


def test_cuda_probabilities_equal_the_cpu_paths(tmp_path):
    torch.manual_seed(2)
    image = torch.randn(1, 2, 30, 26, 34)
    net = small_net(classes=4)
    on_cpu = sliding_window_labels(image, net, 12, overlap=0.5, save_probabilities=tmp_path / "cpu.npy")
    on_gpu = sliding_window_labels(image, net.to(CUDA), 12, overlap=0.5, save_probabilities=tmp_path / "gpu.npy")
    np.testing.assert_allclose(np.load(tmp_path / "gpu.npy"), np.load(tmp_path / "cpu.npy"), atol=1e-5)
    assert (on_gpu != on_cpu).float().mean().item() <= 1e-4


def test_autocast_on_cuda_matches_monai_under_the_same_autocast():
    torch.manual_seed(7)
    image = torch.randn(1, 2, 40, 36, 44)
    net = small_net().to(CUDA)
    ours = sliding_window_labels(image, net, 16, autocast=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        scores = monai_scores(image, net, 16, 0.25, 4).float()
    top2 = scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 0.02 * (1 + top2[0].abs())  # away from bf16 rounding
    assert clear.float().mean() > 0.5
    assert torch.equal(ours.long()[clear], scores.argmax(0)[clear])


def test_device_augment_on_cuda_equals_the_same_draws_on_the_cpu():
    # The random draws are made on the host, so one seed gives the same warp and intensity changes
    # on either device; only grid_sample's float rounding may differ.
    batch = paired_batch(4, 24)
    kwargs = dict(p_affine=1.0, p_brightness=1.0, p_gamma=1.0, p_noise=0.0)
    torch.manual_seed(3)
    on_gpu = DeviceAugment(**kwargs)({k: v.to(CUDA) for k, v in batch.items()})
    torch.manual_seed(3)
    on_cpu = DeviceAugment(device_types=("cpu",), **kwargs)(batch)
    assert on_gpu["anat"].device.type == "cuda"
    assert not torch.equal(on_cpu["label"], batch["label"])  # it did warp
    assert (on_gpu["label"].cpu() != on_cpu["label"]).float().mean().item() <= 1e-3
    torch.testing.assert_close(on_gpu["anat"].cpu(), on_cpu["anat"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(on_gpu["pet"].cpu(), on_cpu["pet"], atol=1e-3, rtol=1e-3)
