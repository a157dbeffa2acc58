"""Instance norms switched to the group-norm kernel: same numbers, same weights, same training path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from umd_lightning.models.fast_norm import use_group_norm_kernel


def _unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 5, (4, 8, 16), (2, 2), num_res_units=1, norm=("instance", {"affine": True})).eval()


def test_switched_unet_gives_the_same_logits_and_keeps_its_state_dict():
    ref = _unet()
    with torch.no_grad():  # affine weights away from 1 and 0, so a dropped affine would show
        for m in ref.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    fast = copy.deepcopy(ref)
    n_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in ref.modules())
    assert use_group_norm_kernel(fast) == n_norms > 0
    assert all(isinstance(m, nn.InstanceNorm3d) for m in fast.modules() if "InstanceNorm" in type(m).__name__)
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 1, 24, 20, 28) * 3 + 5
    with torch.inference_mode():
        expected = ref.double()(x.double())
        got = fast(x)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
    assert use_group_norm_kernel(fast) == 0  # already switched


def test_training_and_channels_last_keep_pytorchs_path(monkeypatch):
    fast = _unet()
    use_group_norm_kernel(fast)
    calls = []
    group_norm = torch.nn.functional.group_norm
    monkeypatch.setattr(torch.nn.functional, "group_norm", lambda *a, **k: calls.append(1) or group_norm(*a, **k))
    x = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    fast(x).sum().backward()  # autograd on: instance_norm
    assert not calls and x.grad is not None
    with torch.no_grad():
        fast(x)
    assert calls
    calls.clear()
    norm = nn.InstanceNorm3d(4)
    use_group_norm_kernel(norm)
    y = torch.randn(2, 4, 6, 7, 8)
    with torch.no_grad():
        torch.testing.assert_close(norm(y.contiguous(memory_format=torch.channels_last_3d)), norm(y))
    assert len(calls) == 1  # the contiguous one


def test_running_stats_and_subclasses_are_left_alone():
    class Custom(nn.InstanceNorm3d):
        pass

    net = nn.Sequential(nn.InstanceNorm3d(2, track_running_stats=True), Custom(2), nn.InstanceNorm2d(2))
    assert use_group_norm_kernel(net) == 1
    assert type(net[0]) is nn.InstanceNorm3d and type(net[1]) is Custom
    with torch.no_grad():
        y = torch.randn(3, 2, 5, 6)
        torch.testing.assert_close(net[2](y), nn.functional.instance_norm(y))


def test_switched_network_pickles():
    fast = _unet()
    use_group_norm_kernel(fast)
    back = pickle.loads(pickle.dumps(fast))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), fast(x))
    assert type(back.model[0].conv.unit0.adn.N) is type(fast.model[0].conv.unit0.adn.N)


@pytest.mark.parametrize(
    ("norm", "shape"),
    [(nn.InstanceNorm1d(16), (2, 16, 12)), (nn.InstanceNorm3d(16), (16, 12, 10, 8))],  # 1d; unbatched 3d
)
def test_other_ranks_and_unbatched_inputs(norm, shape):
    use_group_norm_kernel(norm)
    x = torch.randn(*shape)
    batched = x if len(shape) == 3 else x.unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(norm(x), nn.functional.instance_norm(batched).reshape(shape))
