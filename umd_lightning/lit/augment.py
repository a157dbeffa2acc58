"""Training augmentation on the device: random affine, brightness, gamma and noise of a patch batch.

The CPU workers only crop cached volumes; the expensive part of nnU-Net-style augmentation (the
affine resampling) runs here on the batch after it reached the GPU (``on_after_batch_transfer``),
where it costs milliseconds. The anatomical patch, its PET and the label share one random affine
per sample (the consistency loss compares them voxel by voxel); the label is resampled with nearest
neighbour. No mirroring: kidney_left and kidney_right must stay apart.

Every random decision (which samples, which parameters) is drawn on the host, as nnU-Net's workers
do, and only the few resulting numbers travel to the device, asynchronously from pinned memory: a
decision read back from the GPU (``nonzero``, ``bool(tensor)``) or a blocking copy would make the
host wait for the previous step every step, and the GPU would then idle while the host queues the next.
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
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random affines about the patch centre, on the host: rotations drawn uniformly in ``[-r, r]``
    degrees about each axis, one isotropic zoom in ``scale``, and a shift of up to ``translate`` of
    the patch size.

    Returns:
        (n, 3, 4) float32 on the CPU: a linear part mapping output voxel offsets from the centre
        (x, y, z = W, H, D order) to input offsets, and a shift as a fraction of the patch size per axis.
    """
    u = torch.rand(n, 7, generator=generator, dtype=torch.float64)
    angles = (u[:, :3] * 2 - 1) * torch.tensor([math.radians(float(r)) for r in rotate_deg], dtype=torch.float64)
    zoom = float(scale[0]) + u[:, 3] * (float(scale[1]) - float(scale[0]))
    shift = (u[:, 4:7] * 2 - 1) * float(translate)
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(n, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(n, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(n, 3, 3)
    # Sampling with 1/zoom enlarges the content by zoom.
    linear = (rz @ ry @ rx) / zoom[:, None, None]
    return torch.cat([linear, shift[:, :, None]], dim=2).float()


def to_normalised(theta_vox: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Affines of :func:`random_affine_matrices` (n, 3, 4) -> ``affine_grid``'s normalised
    coordinates for a (D, H, W) patch (same device and dtype as ``theta_vox``).

    ``align_corners=False`` puts x_norm = x_vox * 2 / size, so A_norm = S A_vox S^-1 with
    S = diag(2 / (W, H, D)); a translation given as a fraction of the patch becomes 2 * fraction.
    """
    d, h, w = (int(v) for v in spatial)
    half = theta_vox.new_tensor([w / 2.0, h / 2.0, d / 2.0])  # DeviceAugment calls this on the host
    linear = theta_vox[:, :, :3] * half[None, None, :] / half[None, :, None]
    shift = theta_vox[:, :, 3] * 2.0
    return torch.cat([linear, shift[:, :, None]], dim=2)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without making the host wait: from pinned memory, non-blocking."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


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
        ``device_types`` is returned unchanged. Random numbers come from the host's global torch
        generator (seeded by ``seed_everything``).
        """
        out = dict(batch)
        keys = [k for k in IMAGE_KEYS if isinstance(out.get(k), torch.Tensor)]
        if not keys or not self.enabled_on(out[keys[0]].device):
            return out
        n = out[keys[0]].shape[0]
        if self.p_affine > 0:
            rows = torch.nonzero(torch.rand(n) < self.p_affine).flatten().tolist()  # host: no sync
            if rows:
                out = self._affine(out, keys, rows)
        for key in keys:
            out[key] = self._intensity(out[key])
        return out

    def _affine(self, out: dict[str, Any], keys: list[str], rows: list[int]) -> dict[str, Any]:
        ref = out[keys[0]]
        spatial, device = ref.shape[2:], ref.device
        theta = random_affine_matrices(len(rows), rotate_deg=self.rotate_deg, scale=self.scale, translate=self.translate)
        theta = to_device(to_normalised(theta, spatial), device)
        grid = F.affine_grid(theta, [len(rows), 1, *spatial], align_corners=False)
        every = rows == list(range(ref.shape[0]))
        index = None if every else to_device(torch.tensor(rows), device)

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if index is None else x.index_select(0, index)

        def put(x: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
            if index is None:
                return warped.to(x.dtype)
            return x.index_copy(0, index, warped.to(x.dtype))

        images = torch.cat([pick(out[k]).float() for k in keys], dim=1)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for i, key in enumerate(keys):
            out[key] = put(out[key], warped[:, i : i + 1])
        if isinstance(out.get(LABEL_KEY), torch.Tensor):
            label = out[LABEL_KEY]
            # ids up to 2^24 are exact in float32; nearest never blends two organs
            warped_label = F.grid_sample(pick(label).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            out[LABEL_KEY] = put(label, warped_label.round())
        return out

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        x = x.float()
        u = torch.rand(n, 6, dtype=torch.float64)  # host: the decisions never wait for the device
        factor = _per_sample(self.p_brightness, self.brightness, u[:, 0:2], neutral=1.0)
        gamma = _per_sample(self.p_gamma, self.gamma, u[:, 2:4], neutral=1.0)
        std = _per_sample(self.p_noise, (0.0, self.noise_std), u[:, 4:6], neutral=0.0)
        if factor is not None:
            x = x * to_device(factor, x.device).view(shape)
        if gamma is not None:
            x = x.clamp(min=0).pow(to_device(gamma, x.device).view(shape))
        if std is not None:
            x = x + torch.randn_like(x) * to_device(std, x.device).view(shape)
        return x


def _per_sample(p: float, value_range: Sequence[float], u: torch.Tensor, neutral: float) -> torch.Tensor | None:
    """Per-sample values (float32, host): drawn in ``value_range`` where ``u[:, 0] < p``, else ``neutral``;
    None when no sample is chosen."""
    chosen = u[:, 0] < p
    if not bool(chosen.any()):
        return None
    lo, hi = value_range
    return torch.where(chosen, lo + u[:, 1] * (hi - lo), torch.full_like(u[:, 1], neutral)).float()


__all__ = ["DeviceAugment", "random_affine_matrices", "to_device", "to_normalised"]
