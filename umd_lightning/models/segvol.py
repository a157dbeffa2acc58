"""SegVol (text prompts) from a local checkpoint folder, where ``transformers`` is installed.

SegVol ships as a Hugging Face model with its own code inside the checkpoint folder
(``trust_remote_code``): the folder (``config.json``, weights, ``model_segvol_single.py``, the CLIP
tokenizer files) must be local; nothing downloads (``local_files_only=True``). Each organ is asked
for by its text names (``labelmaps/segvol_text.yaml``; several names merge into one organ) through
SegVol's ``forward_test`` with zoom-out-zoom-in on the whole volume.

SegVol's own preprocessing: foreground-clipped z-normalisation of CT in HU, volumes in (z, y, x)
order, zoom-out view resized to (32, 256, 256). This adapter reproduces those steps; it is
untested against the released weights here (no checkpoint in the test environment): check one
case against SegVol's demo before reporting numbers.

Optional extra: ``pip install 'umd_lightning[segvol]'`` (transformers).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from umd_lightning.models.adapter import Prediction, optional_import
from umd_lightning.models.foundation import FoundationAdapter, ScoreAccumulator, require_path
from umd_lightning.organs import OrganSet

__all__ = ["SegVolAdapter"]


class SegVolAdapter(FoundationAdapter):
    """SegVol with text prompts (automatic from the text names, not oracle).

    Args:
        checkpoint: local SegVol checkpoint folder (Hugging Face layout).
        name: name in results tables.
        label_map: text prompts -> organ names.
        zoom_size: SegVol's zoom-out input size (z, y, x).
        target_spacing: None: SegVol resizes itself.
        reported_dice: Dice its paper reports.
        intensity_range: SegVol expects CT in HU.
        hu_window: the data module's CT window that makes the mapping restore HU.
    """

    def __init__(
        self,
        checkpoint: str,
        name: str = "segvol",
        label_map: str = "segvol_text",
        zoom_size: Sequence[int] = (32, 256, 256),
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        intensity_range: Sequence[float] | None = (-1000.0, 1000.0),
        hu_window: Sequence[float] | None = (-1000.0, 1000.0),
    ) -> None:
        hint = "SegVol's model code comes inside its checkpoint folder (trust_remote_code)."
        transformers = optional_import("transformers", "segvol", model="SegVol", hint=hint)
        folder = require_path(checkpoint, "SegVol checkpoint folder", is_dir=True)
        require_path(folder / "config.json", "SegVol config.json")
        super().__init__(
            name,
            prompt_kind="text",
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            intensity_range=intensity_range,
            hu_window=hu_window,
            label_map=label_map,
        )
        self.checkpoint = str(folder)
        self.zoom_size = tuple(int(z) for z in zoom_size)
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
        config.test_mode = True
        self.model = transformers.AutoModel.from_pretrained(
            str(folder), config=config, trust_remote_code=True, local_files_only=True
        )
        self.model.model.text_encoder.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        )
        self.model.eval()

    @staticmethod
    def _normalise(volume: torch.Tensor) -> torch.Tensor:
        """SegVol's ForegroundNormalization: clip to the foreground's 0.05-99.95 percentiles, z-score."""
        fg = volume[volume > volume.mean()]
        fg = fg if fg.numel() > 1 else volume.reshape(-1)
        sample = fg[:: max(1, fg.numel() // 2_000_000)]
        lo, hi = torch.quantile(sample, torch.tensor([0.0005, 0.9995]))
        fg_clip = sample.clamp(lo, hi)
        return (volume.clamp(lo, hi) - fg_clip.mean()) / fg_clip.std().clamp_min(1e-6)

    def text_prompts(self, organ_set: OrganSet) -> list[dict[str, Any]]:
        return [
            {"kind": "text", "organ": o, "label": organ_set.ids[o], "texts": [str(t) for t in self.source_keys(o)]}
            for o in self.organs_predicted(organ_set)
        ]

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        # (x, y, z) RAS -> SegVol's (z, y, x)
        vol = self._normalise(self.to_model_range(image)[0, 0].float()).permute(2, 1, 0).contiguous()
        img = vol[None, None].to(self.device)
        zoomed = F.interpolate(img, size=self.zoom_size, mode="trilinear", align_corners=False)
        prompts = self.text_prompts(organ_set)
        acc = ScoreAccumulator(vol.shape)
        for p in prompts:
            for text in p["texts"]:
                logits = self.model.forward_test(image=img, zoomed_image=zoomed, text_prompt=[text], use_zoom=True)
                acc.add(p["label"], torch.as_tensor(logits)[0, 0].float().cpu())
        labels = acc.labels.permute(2, 1, 0).contiguous()
        return Prediction(labels=labels, prompts=prompts)
