"""VISTA3D (``monai.networks.nets.vista3d``) with class prompts or simulated point prompts.

Class prompts (automatic, not oracle): every organ the VISTA3D vocabulary names is asked for by its
class id(s) (``labelmaps/vista3d.yaml``; the lung as its five lobes); the per-class logits are merged
per organ by their maximum and a voxel is background where every organ's logit is <= 0, as VISTA3D's
own post-processing does. The volume goes through the streamed sliding window.

Point prompts (oracle): one simulated click per organ (plus random/corrective clicks, see
:mod:`~umd_lightning.models.prompts`), run with MONAI's ``point_based_window_inferer`` on windows
centred on the clicks, class-agnostic (VISTA3D's point head) unless the organ is one VISTA3D class.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from umd_lightning.models.adapter import Prediction, load_state_dict_checked
from umd_lightning.models.foundation import PromptedAdapter, Region
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator
from umd_lightning.organs import OrganSet

__all__ = ["Vista3DAdapter", "build_vista3d"]

#: VISTA3D's own CT preprocessing: HU window scaled to [0, 1] (MONAI model-zoo bundle vista3d).
VISTA3D_HU_WINDOW = (-963.8, 1053.7)
_NINF = -9999.0


def build_vista3d(
    encoder_embed_dim: int = 48,
    in_channels: int = 1,
    blocks_down: Sequence[int] = (1, 2, 2, 4, 4),
    n_classes: int = 512,
    last_supported: int = 132,
) -> nn.Module:
    """A VISTA3D network; the defaults are exactly ``monai.networks.nets.vista3d132``.

    Smaller ``encoder_embed_dim`` and ``blocks_down`` give the tiny variants the tests use.
    """
    from monai.networks.nets.segresnet_ds import SegResNetDS2
    from monai.networks.nets.vista3d import VISTA3D, ClassMappingClassify, PointMappingSAM

    encoder = SegResNetDS2(
        in_channels=in_channels,
        blocks_down=tuple(int(b) for b in blocks_down),
        norm="instance",
        out_channels=encoder_embed_dim,
        init_filters=encoder_embed_dim,
        dsdepth=1,
    )
    point_head = PointMappingSAM(feature_size=encoder_embed_dim, n_classes=n_classes, last_supported=last_supported)
    class_head = ClassMappingClassify(n_classes=n_classes, feature_size=encoder_embed_dim, use_mlp=True)
    return VISTA3D(image_encoder=encoder, class_head=class_head, point_head=point_head)


class _ClassPredictor(nn.Module):
    """Windows (B, C, *roi) -> organ-set logits (B, K, *roi): channel 0 is the background threshold 0,
    an organ's channel is the max over its VISTA3D classes, organs VISTA3D cannot name stay at -inf.
    """

    def __init__(self, net: nn.Module, class_ids: Sequence[int], channel_of_class: Sequence[int], num_channels: int):
        super().__init__()
        self.net = net
        self.register_buffer("class_vector", torch.tensor(list(class_ids), dtype=torch.long)[:, None], persistent=False)
        self.channel_of_class = list(channel_of_class)
        self.num_channels = int(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x, class_vector=self.class_vector, transpose=True)  # (B, N, *roi)
        out = torch.full((x.shape[0], self.num_channels, *x.shape[2:]), _NINF, dtype=logits.dtype, device=x.device)
        out[:, 0] = 0.0
        for j, ch in enumerate(self.channel_of_class):
            out[:, ch] = torch.maximum(out[:, ch], logits[:, j])
        return out


class Vista3DAdapter(PromptedAdapter):
    """VISTA3D on the organ set.

    Args:
        net: the VISTA3D network (``build_vista3d`` or ``monai.networks.nets.vista3d132``), built by Hydra.
        name: name in results tables.
        checkpoint: weights (the bundle's ``models/model.pt``), loaded with ``weights_only=True``.
        prompt: ``class`` (automatic, class prompts) or ``point`` (simulated clicks, oracle).
        prompts: the prompt simulator's settings (point mode).
        roi_size: window size (D, H, W).
        sw_batch_size: windows per call in class mode.
        overlap: window overlap in class mode.
        mode: sliding-window blending.
        target_spacing: spacing (mm) VISTA3D was trained at (1.5 mm isotropic).
        reported_dice: Dice its paper reports.
        intensity_range: input range of the network ([0, 1]).
        hu_window: VISTA3D's CT window (-963.8, 1053.7) HU.
        label_map: VISTA3D class ids -> organ names.
        autocast: ``bf16`` / ``fp16`` on a GPU.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str = "vista3d",
        checkpoint: str | None = None,
        prompt: Literal["class", "point"] = "class",
        prompts: PromptSimulator | Mapping[str, Any] | None = None,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 1,
        overlap: float = 0.5,
        mode: Literal["gaussian", "constant"] = "gaussian",
        target_spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        reported_dice: Mapping[str, float] | None = None,
        intensity_range: Sequence[float] | None = (0.0, 1.0),
        hu_window: Sequence[float] | None = VISTA3D_HU_WINDOW,
        label_map: str = "vista3d",
        autocast: str | None = None,
    ) -> None:
        if prompt not in ("class", "point"):
            raise ValueError(f"VISTA3D prompt must be 'class' or 'point', got {prompt!r}")
        super().__init__(
            name,
            prompts=prompts,
            prompt_kind="class" if prompt == "class" else "point",
            oracle=prompt == "point",  # class prompts never look at the reference
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            intensity_range=intensity_range,
            hu_window=hu_window,
            label_map=label_map,
        )
        self.net = net
        self.prompt = prompt
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        if self.checkpoint is not None:
            load_state_dict_checked(self.net, self.checkpoint)
        self.net.eval()
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.autocast = autocast

    def organs_predicted(self, organ_set: OrganSet) -> tuple[str, ...]:
        """Class prompts: the organs VISTA3D's vocabulary names. Points: every organ (class-agnostic)."""
        return organ_set.organs if self.prompt == "point" else super().organs_predicted(organ_set)

    def class_prompts(self, organ_set: OrganSet) -> list[dict[str, Any]]:
        """The class prompts sent for ``organ_set`` (saved with the results)."""
        return [
            {"kind": "class", "organ": o, "label": organ_set.ids[o], "class_ids": [int(k) for k in self.source_keys(o)]}
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
        if self.prompt == "point":
            return super().predict_volume(image, meta, organ_set, reference)
        from umd_lightning.models.inference import sliding_window_labels

        prompts = self.class_prompts(organ_set)
        class_ids = [c for p in prompts for c in p["class_ids"]]
        channels = [p["label"] for p in prompts for _ in p["class_ids"]]
        if not class_ids:
            return Prediction(labels=torch.zeros(image.shape[-3:], dtype=torch.uint8), prompts=prompts)
        predictor = _ClassPredictor(self.net, class_ids, channels, organ_set.num_classes).to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.autocast))
        labels = sliding_window_labels(
            self.to_model_range(image),
            predictor,
            self.roi_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
            device=self.device,
            autocast=dtype if (dtype is not None and self.device.type == "cuda") else False,
        )
        return Prediction(labels=labels.to(torch.uint8), prompts=prompts)

    # ---------------------------------------------------------------- point prompts
    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
        return self.to_model_range(image).float()

    def segment_organ(
        self, prepared: torch.Tensor, prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        from monai.apps.vista3d.inferer import point_based_window_inferer

        coords, labels = prompts.coords_labels()
        keys = self.source_keys(prompts.organ) if self.label_map is not None else []
        prompt_class = torch.tensor([int(keys[0])], device=self.device) if len(keys) == 1 else None
        out = point_based_window_inferer(
            prepared.to(self.device),
            self.roi_size,
            self.net,
            point_coords=torch.as_tensor(coords, device=self.device)[None].float(),
            point_labels=torch.as_tensor(labels, device=self.device)[None],
            prompt_class=prompt_class,
            transpose=True,
        )
        # (1, 1, D, H, W); voxels outside every window are NaN and never win
        return None, torch.as_tensor(out)[0, 0].float().cpu(), None
