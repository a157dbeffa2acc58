"""Per-view intensity normalisation and the MONAI pipelines for training patches and evaluation volumes.

The array transform :class:`ViewIntensity` does the work; :class:`ViewIntensityd` only picks the view of
each key. Every case is put on one orientation (RAS) and a PET is resampled onto its label's grid, so
that the anatomical scan, its PET and the label share voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatch,
    SpatialPadd,
    Spacingd,
    Transform,
)

from umd_lightning.organs import check_view

ORIENTATION = "RAS"
# Stated explicitly: MONAI is changing the default meaning of axis letters.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


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


class ViewIntensity(Transform):
    """Normalise one image by its view: CT HU window, MRI percentiles, PET SUV clip-and-scale.

    Args:
        config: the per-modality ranges.
    """

    def __init__(self, config: IntensityConfig | Mapping | None = None) -> None:
        if config is None:
            config = IntensityConfig()
        elif not isinstance(config, IntensityConfig):
            config = IntensityConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.items()})
        self.config = config

    def __call__(self, img: torch.Tensor, view: str) -> torch.Tensor:
        """img: (C, D, H, W) raw intensities -> float32 of the same shape."""
        check_view(view)
        img = img.float() if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img), dtype=torch.float32)
        if view == "CT":
            lo, hi = self.config.ct_window
        elif view == "MRI":
            q = torch.tensor([p / 100.0 for p in self.config.mri_percentiles])
            flat = img.reshape(-1)
            # quantile() refuses huge tensors; a strided sample estimates percentiles to well under a grey level.
            sample = flat[:: max(1, flat.numel() // 2_000_000)]
            lo, hi = (float(v) for v in torch.quantile(sample, q))
        else:
            lo, hi = 0.0, float(self.config.pet_suv_max)
        scale = 1.0 / max(hi - lo, 1e-6)
        return ((img - lo) * scale).clamp_(0.0, 1.0)


class ViewIntensityd(MapTransform):
    """Dictionary version: ``view_keys[key]`` names the item that holds each key's view."""

    def __init__(
        self,
        keys: KeysCollection,
        view_keys: Mapping[Hashable, str] | str = "view",
        config: IntensityConfig | Mapping | None = None,
    ) -> None:
        super().__init__(keys)
        self.view_keys = view_keys
        self.op = ViewIntensity(config)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            view_key = self.view_keys if isinstance(self.view_keys, str) else self.view_keys[key]
            d[key] = self.op(d[key], d[view_key])
        return d


class ResampleToLabeld(MapTransform):
    """Resample images onto ``key_dst``'s grid in world coordinates; a no-op where grids already agree.

    A PET keeps its own coarse grid on disk; evaluation and paired training need it on the label grid.
    """

    def __init__(self, keys: KeysCollection, key_dst: str = "label", mode: str = "bilinear") -> None:
        super().__init__(keys)
        self.key_dst = key_dst
        self.op = ResampleToMatch(mode=mode, padding_mode="zeros")

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        dst = d[self.key_dst]
        for key in self.key_iterator(d):
            src = d[key]
            same = tuple(src.shape[1:]) == tuple(dst.shape[1:]) and torch.allclose(
                torch.as_tensor(src.affine, dtype=torch.float64), torch.as_tensor(dst.affine, dtype=torch.float64),
                atol=1e-3,
            )
            if not same:
                d[key] = self.op(src, img_dst=dst)
        return d


def eval_transforms(intensity: IntensityConfig | Mapping | None = None) -> Compose:
    """Whole-volume pipeline: ``{"image", "label", "view", ...}`` paths -> tensors on the RAS label grid.

    Output: ``image`` (1, D, H, W) float, ``label`` (1, D, H, W) integer, both MetaTensors with the label's
    affine (re-oriented to RAS).
    """
    return Compose(
        [
            LoadImaged(keys=["image", "label"], reader="NibabelReader", ensure_channel_first=True, image_only=True),
            ResampleToLabeld(keys="image", key_dst="label"),
            Orientationd(keys=["image", "label"], axcodes=ORIENTATION, labels=RAS_LABELS),
            ViewIntensityd(keys="image", view_keys="view", config=intensity),
            EnsureTyped(keys="label", dtype=torch.int64),
        ]
    )


def paired_load_transforms(
    intensity: IntensityConfig | Mapping | None = None, spacing: Sequence[float] | None = None
) -> Compose:
    """Deterministic part of the training pipeline for one session (cached once per run).

    ``{"anat", "pet", "label", "view_of_anat", "view_of_pet"}`` paths -> the anatomical scan, its PET resampled
    onto the label grid, and the label, all RAS and (optionally) resampled to ``spacing`` mm.
    """
    keys = ["anat", "pet", "label"]
    steps: list = [
        LoadImaged(keys=keys, reader="NibabelReader", ensure_channel_first=True, image_only=True),
        ResampleToLabeld(keys=["anat", "pet"], key_dst="label"),
        Orientationd(keys=keys, axcodes=ORIENTATION, labels=RAS_LABELS),
    ]
    if spacing is not None:
        steps.append(Spacingd(keys=keys, pixdim=tuple(spacing), mode=("bilinear", "bilinear", "nearest")))
    steps += [
        ViewIntensityd(keys=["anat", "pet"], view_keys={"anat": "view_of_anat", "pet": "view_of_pet"}, config=intensity),
        EnsureTyped(keys=["anat", "pet"], dtype=torch.float32, track_meta=False),
        EnsureTyped(keys="label", dtype=torch.int64, track_meta=False),
    ]
    return Compose(steps)


def paired_patch_transforms(
    patch_size: Sequence[int], samples_per_volume: int = 4, pos: float = 2.0, neg: float = 1.0
) -> Compose:
    """Random part: the same crop of the anatomical scan, its PET and the label (no left/right flips:
    kidney_left and kidney_right must stay apart)."""
    keys = ["anat", "pet", "label"]
    return Compose(
        [
            SpatialPadd(keys=keys, spatial_size=tuple(patch_size)),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=tuple(patch_size),
                pos=pos,
                neg=neg,
                num_samples=samples_per_volume,
            ),
            RandScaleIntensityd(keys=["anat", "pet"], factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=["anat", "pet"], offsets=0.05, prob=0.5),
        ]
    )



__all__ = [
    "IntensityConfig",
    "ViewIntensity",
    "ViewIntensityd",
    "ResampleToLabeld",
    "eval_transforms",
    "paired_load_transforms",
    "paired_patch_transforms",
]
