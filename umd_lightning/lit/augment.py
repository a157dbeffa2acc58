"""Training augmentation on the device: random affine, brightness, gamma and noise of a patch batch.

The CPU workers only crop cached volumes; the expensive part of nnU-Net-style augmentation (the
affine resampling) runs here on the batch after it reached the GPU (``on_after_batch_transfer``),
where it costs milliseconds. The anatomical patch, its PET and the label share one random affine
per sample (the consistency loss compares them voxel by voxel); the label is resampled with nearest
neighbour. No mirroring: kidney_left and kidney_right must stay apart.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_KEYS = ("anat", "pet")
LABEL_KEY = "label"


def random_affine_matrices(
    n: int,
    *,
    rotate_deg: Sequence[float],
    scale: Sequence[float],
    translate: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random affines about the patch centre: rotations drawn uniformly in ``[-r, r]`` degrees about
    each axis, one isotropic zoom in ``scale``, and a shift of up to ``translate`` of the patch size.

    Returns:
        (n, 3, 4): a linear part mapping output voxel offsets from the centre (x, y, z = W, H, D
        order) to input offsets, and a shift as a fraction of the patch size per axis.
    """
    u = torch.rand(n, 7, device=device, generator=generator)
    angles = (u[:, :3] * 2 - 1) * torch.tensor([math.radians(float(r)) for r in rotate_deg], device=device)
    zoom = float(scale[0]) + u[:, 3] * (float(scale[1]) - float(scale[0]))
    shift = (u[:, 4:7] * 2 - 1) * float(translate)
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(n, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(n, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(n, 3, 3)
    # Sampling with 1/zoom enlarges the content by zoom.
    linear = (rz @ ry @ rx) / zoom[:, None, None]
    return torch.cat([linear, shift[:, :, None]], dim=2)


def to_normalised(theta_vox: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Affines of :func:`random_affine_matrices` (n, 3, 4) -> ``affine_grid``'s normalised
    coordinates for a (D, H, W) patch.

    ``align_corners=False`` puts x_norm = x_vox * 2 / size, so A_norm = S A_vox S^-1 with
    S = diag(2 / (W, H, D)); a translation given as a fraction of the patch becomes 2 * fraction.
    """
    d, h, w = (int(v) for v in spatial)
    half = torch.tensor([w / 2.0, h / 2.0, d / 2.0], device=theta_vox.device, dtype=theta_vox.dtype)
    linear = theta_vox[:, :, :3] * half[None, None, :] / half[None, :, None]
    shift = theta_vox[:, :, 3] * 2.0
    return torch.cat([linear, shift[:, :, None]], dim=2)


class DeviceAugment(nn.Module):
    """nnU-Net-style spatial and intensity augmentation of a paired patch batch, on its device.

    Args:
        p_affine: probability per sample of a random affine.
        rotate_deg: maximum rotation about each axis (degrees).
        scale: zoom range.
        translate: maximum shift as a fraction of the patch size.
        p_brightness: probability per image of a multiplicative brightness change.
        brightness: its range.
        p_gamma: probability per image of a gamma change (on the [0, 1] normalised intensities).
        gamma: its range.
        p_noise: probability per image of additive Gaussian noise.
        noise_std: maximum noise standard deviation (drawn uniformly up to it).
        device_types: device types on which it runs (default ``cuda`` only: on the CPU the same work
            would just take the training step's time, so it is off unless named).
    """

    def __init__(
        self,
        p_affine: float = 0.3,
        rotate_deg: Sequence[float] = (15.0, 15.0, 15.0),
        scale: Sequence[float] = (0.85, 1.25),
        translate: float = 0.0,
        p_brightness: float = 0.15,
        brightness: Sequence[float] = (0.75, 1.25),
        p_gamma: float = 0.3,
        gamma: Sequence[float] = (0.7, 1.5),
        p_noise: float = 0.1,
        noise_std: float = 0.05,
        device_types: Sequence[str] = ("cuda",),
    ) -> None:
        super().__init__()
        self.p_affine = float(p_affine)
        self.rotate_deg = tuple(float(r) for r in rotate_deg)
        self.scale = (float(scale[0]), float(scale[1]))
        self.translate = float(translate)
        self.p_brightness = float(p_brightness)
        self.brightness = (float(brightness[0]), float(brightness[1]))
        self.p_gamma = float(p_gamma)
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.p_noise = float(p_noise)
        self.noise_std = float(noise_std)
        self.device_types = tuple(device_types)

    def enabled_on(self, device: torch.device) -> bool:
        return device.type in self.device_types

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Augment ``anat``, ``pet`` (B, 1, D, H, W) float and ``label`` (B, 1, D, H, W) integer.

        Returns a new dict; other entries pass through. A batch on a device type not in
        ``device_types`` is returned unchanged.
        """
        out = dict(batch)
        keys = [k for k in IMAGE_KEYS if isinstance(out.get(k), torch.Tensor)]
        if not keys or not self.enabled_on(out[keys[0]].device):
            return out
        ref = out[keys[0]]
        n, device = ref.shape[0], ref.device
        if self.p_affine > 0:
            rows = torch.nonzero(torch.rand(n, device=device) < self.p_affine).flatten()
            if len(rows):
                out = self._affine(out, keys, rows)
        for key in keys:
            out[key] = self._intensity(out[key])
        return out

    def _affine(self, out: dict[str, Any], keys: list[str], rows: torch.Tensor) -> dict[str, Any]:
        spatial = out[keys[0]].shape[2:]
        theta = random_affine_matrices(
            len(rows), rotate_deg=self.rotate_deg, scale=self.scale, translate=self.translate, device=rows.device
        )
        grid = F.affine_grid(to_normalised(theta, spatial), [len(rows), 1, *spatial], align_corners=False)
        images = torch.cat([out[k][rows].float() for k in keys], dim=1)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for i, key in enumerate(keys):
            x = out[key].clone()
            x[rows] = warped[:, i : i + 1].to(x.dtype)
            out[key] = x
        if isinstance(out.get(LABEL_KEY), torch.Tensor):
            label = out[LABEL_KEY]
            # ids up to 2^24 are exact in float32; nearest never blends two organs
            warped_label = F.grid_sample(label[rows].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            label = label.clone()
            label[rows] = warped_label.round().to(label.dtype)
            out[LABEL_KEY] = label
        return out

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        shape = (n,) + (1,) * (x.dim() - 1)
        x = x.float()
        u = torch.rand(n, 6, device=device)
        if self.p_brightness > 0:
            lo, hi = self.brightness
            factor = torch.where(u[:, 0] < self.p_brightness, lo + u[:, 1] * (hi - lo), torch.ones_like(u[:, 1]))
            x = x * factor.view(shape)
        if self.p_gamma > 0:
            lo, hi = self.gamma
            g = torch.where(u[:, 2] < self.p_gamma, lo + u[:, 3] * (hi - lo), torch.ones_like(u[:, 3]))
            x = x.clamp(min=0).pow(g.view(shape))
        if self.p_noise > 0:
            std = torch.where(u[:, 4] < self.p_noise, u[:, 5] * self.noise_std, torch.zeros_like(u[:, 5]))
            if bool((std > 0).any()):
                x = x + torch.randn_like(x) * std.view(shape)
        return x


__all__ = ["DeviceAugment", "random_affine_matrices", "to_normalised"]
