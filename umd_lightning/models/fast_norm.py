"""Instance normalisation through PyTorch's group-norm kernel for CPU inference.

An instance norm without running statistics is a group norm with one group per channel: the same
mean and variance per sample and channel over the spatial axes, the same affine. On the CPU,
PyTorch's group-norm kernel is about 4x faster than its instance-norm kernel (measured on 2 cores
for a (2, 16, 96, 96, 96) float32 tensor: 15 ms against 59 ms, within 1e-6 of each other and of a
float64 reference), which is a tenth of a MONAI UNet's forward pass. Training, GPUs and instance
norms with running statistics keep PyTorch's own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["use_group_norm_kernel"]


class _GroupNormKernel:
    """Mixin over an ``nn.InstanceNorm*d``: the group-norm kernel where it gives the same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and x.dim() == self._get_no_batch_dim() + 1  # batched; group_norm needs the batch axis
            and x.is_contiguous()  # channels-last group norm sums in float32: ~1e-3 off
        ):
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return super().forward(x)


class InstanceNorm1d(_GroupNormKernel, nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_GroupNormKernel, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_GroupNormKernel, nn.InstanceNorm3d):
    pass


# Named classes, not ones made on the fly: a switched network still pickles (ddp_spawn, deepcopy).
_SWAPPED: dict[type, type] = {
    nn.InstanceNorm1d: InstanceNorm1d,
    nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d,
}


def use_group_norm_kernel(net: nn.Module) -> int:
    """Switch ``net``'s instance norms without running statistics to the group-norm kernel, in place.

    Parameters, state-dict keys and ``isinstance`` checks are unchanged (each module's class becomes
    a subclass of its own class); only CPU inference without autograd takes the new path. Subclasses
    of PyTorch's instance norms are left alone: they may have a forward of their own.

    Returns:
        The number of modules switched.
    """
    switched = 0
    for module in net.modules():
        fast = _SWAPPED.get(type(module))  # exact type: a user's own subclass keeps its forward
        if fast is not None and not module.track_running_stats:
            module.__class__ = fast
            switched += 1
    return switched
