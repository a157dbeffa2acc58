"""Per-view intensity normalisation of networks trained here: the one definition data and models share.

The data module hands every adapter physical units (CT in HU, MRI as stored, PET in SUV); each model
applies its own preprocessing. The networks this project trains (the reference UNet and every MONAI
network) were trained on this normalisation, so both the training pipeline
(:class:`~umd_lightning.data.transforms.ViewIntensity`) and their adapter
(:class:`~umd_lightning.models.networks.MonaiNetworkAdapter`) call :func:`normalise_view`.

Like ``organs.py`` this module depends on nothing else in the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

VIEW_KINDS = {"CT": "CT", "MRI": "MRI", "PET_CT": "PET", "PET_MRI": "PET"}


@dataclass(frozen=True)
class IntensityConfig:
    """How each modality is mapped to the network's input range (about [0, 1]).

    Args:
        ct_window: HU range mapped linearly to [0, 1], clipped.
        mri_percentiles: lower/upper percentiles of the scan mapped to [0, 1] (MRI has no absolute units).
        pet_suv_max: SUV mapped to 1; uptake is clipped to [0, pet_suv_max].
    """

    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    pet_suv_max: float = 20.0

    @classmethod
    def of(cls, config: IntensityConfig | Mapping[str, Any] | None) -> IntensityConfig:
        """The config itself, the defaults for None, or one built from a mapping (Hydra's)."""
        if config is None:
            return cls()
        if isinstance(config, IntensityConfig):
            return config
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(config).items()})

    def as_dict(self) -> dict[str, Any]:
        return {"ct_window": list(self.ct_window), "mri_percentiles": list(self.mri_percentiles), "pet_suv_max": self.pet_suv_max}


def normalise_view(img: torch.Tensor | np.ndarray, view: str, config: IntensityConfig | Mapping[str, Any] | None = None) -> torch.Tensor:
    """Physical units -> about [0, 1]: CT HU window, MRI percentiles of the scan, PET SUV clip-and-scale.

    Args:
        img: (C, ...) or any shape, in physical units.
        view: ``CT``, ``PET_CT``, ``MRI`` or ``PET_MRI``.
        config: the per-modality ranges (defaults when None).

    Returns:
        float32 tensor of the same shape, clipped to [0, 1].
    """
    kind = VIEW_KINDS.get(str(view))
    if kind is None:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEW_KINDS)}")
    cfg = IntensityConfig.of(config)
    img = img.float() if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img), dtype=torch.float32)
    if kind == "CT":
        lo, hi = cfg.ct_window
    elif kind == "MRI":
        q = torch.tensor([p / 100.0 for p in cfg.mri_percentiles])
        flat = img.reshape(-1)
        # quantile() refuses huge tensors; a strided sample estimates percentiles to well under a grey level.
        sample = flat[:: max(1, flat.numel() // 2_000_000)]
        lo, hi = (float(v) for v in torch.quantile(sample, q))
    else:
        lo, hi = 0.0, float(cfg.pet_suv_max)
    scale = 1.0 / max(hi - lo, 1e-6)
    return ((img - lo) * scale).clamp_(0.0, 1.0)


__all__ = ["IntensityConfig", "normalise_view"]
