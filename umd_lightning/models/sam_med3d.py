"""SAM-Med3D and SAM-Med3D-turbo through the ``medim`` package, prompted with simulated clicks.

Follows SAM-Med3D's own inference (its ``medim_infer.py``): volumes at 1.5 mm, intensities
z-normalised over the foreground (voxels > 0), a 128^3 crop centred on the organ's first click, the
image encoder once per crop, then the prompt encoder and mask decoder once per click round with the
previous low-resolution mask fed back. Clicks outside the crop are not sent (they are still listed
in the saved prompts). Weights load with ``torch.load(weights_only=True)``
(medim's own loader does not), so the network is built by medim without weights.

Optional extra: ``pip install 'umd_lightning[sam_med3d]'`` (the ``medim`` package); the checkpoint
(``sam_med3d.pth`` or ``sam_med3d_turbo.pth``) must be a local file.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from umd_lightning.models.adapter import load_state_dict_checked, optional_import
from umd_lightning.models.foundation import PromptedAdapter, Region, require_path
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator

__all__ = ["SamMed3DAdapter"]


class SamMed3DAdapter(PromptedAdapter):
    """SAM-Med3D(-turbo), one organ per click set (oracle point prompts).

    Args:
        checkpoint: local SAM-Med3D checkpoint (``model_state_dict`` inside, or a bare state dict).
        name: name in results tables (``sam_med3d`` or ``sam_med3d_turbo``).
        model_name: medim registry name.
        model_kwargs: architecture overrides for medim's builder (tests build a tiny one); the crop
            size is its ``image_size`` (128 by default).
        prompts: prompt simulator settings (center point, k random points, corrective clicks).
        target_spacing: spacing the model was trained at (1.5 mm isotropic).
        reported_dice: Dice its paper reports.
        intensity_range: None: SAM-Med3D z-normalises its input itself.
    """

    def __init__(
        self,
        checkpoint: str,
        name: str = "sam_med3d",
        model_name: str = "SAM-Med3D",
        model_kwargs: Mapping[str, Any] | None = None,
        prompts: PromptSimulator | Mapping[str, Any] | None = None,
        target_spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        reported_dice: Mapping[str, float] | None = None,
        intensity_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            name,
            prompts=prompts,
            prompt_kind="point",
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            intensity_range=intensity_range,
        )
        if self.simulator.boxes:
            raise ValueError("SAM-Med3D adapter: box prompts are not supported (SAM-Med3D is evaluated with clicks)")
        medim = optional_import("medim", "sam_med3d", model="SAM-Med3D")
        path = require_path(checkpoint, "SAM-Med3D checkpoint")
        with contextlib.redirect_stdout(io.StringIO()):  # medim prints on every build
            self.net = medim.create_model(model_name, pretrained=False, **dict(model_kwargs or {}))
        load_state_dict_checked(self.net, path, key="model_state_dict")
        self.net.eval()
        self.checkpoint = str(path)
        self.crop_size = int(self.net.image_encoder.img_size)

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
        """(1, C, D, H, W) -> (D, H, W) z-normalised over the foreground (SAM-Med3D's ZNormalization)."""
        vol = self.to_model_range(image)[0, 0].float()
        fg = vol > 0
        values = vol[fg] if int(fg.sum()) > 1 else vol.reshape(-1)
        return (vol - values.mean()) / values.std().clamp_min(1e-6)

    def _crop(self, shape: Sequence[int], center: Sequence[int]) -> tuple[Region, list[tuple[int, int]]]:
        """The crop of size ``crop_size`` around ``center``, kept inside the volume where it fits;
        returns the region and the (before, after) padding per axis where the volume is smaller."""
        region, pads = [], []
        s = self.crop_size
        for n, c in zip(shape, center):
            if n >= s:
                start = int(min(max(int(c) - s // 2, 0), n - s))
                region.append(slice(start, start + s))
                pads.append((0, 0))
            else:
                region.append(slice(0, n))
                pads.append(((s - n) // 2, s - n - (s - n) // 2))
        return tuple(region), pads  # type: ignore[return-value]

    def segment_organ(
        self, prepared: torch.Tensor, prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        device = self.device
        if previous is None:
            region, pads = self._crop(prepared.shape, prompts.points[0].coords)
            crop = prepared[region]
            flat_pad = [p for ax in reversed(pads) for p in ax]  # F.pad wants the last axis first
            crop = F.pad(crop, flat_pad, value=float(crop.min())) if any(flat_pad) else crop
            embedding = self.net.image_encoder(crop[None, None].to(device))
            previous = {"region": region, "pads": pads, "embedding": embedding, "low_res": None}
        region, pads = previous["region"], previous["pads"]
        coords, labels = prompts.coords_labels()
        starts = np.array([r.start for r in region]) - np.array([p[0] for p in pads])
        local = coords - starts
        inside = np.all((local >= 0) & (local < self.crop_size), axis=1)
        point_coords = torch.as_tensor(local[inside], dtype=torch.float32, device=device)[None]
        point_labels = torch.as_tensor(labels[inside], dtype=torch.int64, device=device)[None]
        low_res = previous["low_res"]
        if low_res is None:
            # the decoder's mask resolution: 4x the image embedding's
            side = [4 * int(e) for e in self.net.prompt_encoder.image_embedding_size]
            low_res = torch.zeros(1, 1, *side, device=device)
        sparse, dense = self.net.prompt_encoder(points=[point_coords, point_labels], boxes=None, masks=low_res)
        low_res, _ = self.net.mask_decoder(
            image_embeddings=previous["embedding"],
            image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        previous["low_res"] = low_res
        logits = F.interpolate(low_res, size=(self.crop_size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        unpad = tuple(slice(p[0], self.crop_size - p[1]) for p in pads)
        return region, logits[unpad].float().cpu(), previous
