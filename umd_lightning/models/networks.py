"""MONAI networks as adapters: a network trained on the organ set, run by streamed sliding window."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from umd_lightning.intensity import IntensityConfig, normalise_view
from umd_lightning.models.adapter import AdapterInfo, Prediction, load_state_dict_checked
from umd_lightning.models.fast_norm import use_group_norm_kernel
from umd_lightning.organs import LabelMap, OrganSet, load_label_map


class MonaiNetworkAdapter(nn.Module):
    """Wraps a MONAI network whose output channels are the organ set's ids (channel 0 = background).

    Args:
        net: the network, e.g. ``monai.networks.nets.UNet``; built by Hydra from ``_target_``.
        name: the model's name in results tables.
        checkpoint: optional weights, loaded with ``torch.load(weights_only=True)``; a missing file or
            mismatched keys raise :class:`~umd_lightning.models.adapter.CheckpointError`.
        roi_size: sliding-window size in voxels (D, H, W of the RAS-oriented volume).
        sw_batch_size: windows per network call.
        overlap: window overlap fraction.
        mode: blending, ``gaussian`` or ``constant``.
        target_spacing: spacing (mm) the network was trained at; volumes are resampled to it first.
        reported_dice: Dice reported in the model's paper, per view or ``overall``.
        tta: average axis-flip predictions (nnU-Net mirroring).
        autocast: run the network under autocast on a GPU (``bf16`` or ``fp16``); ignored on the CPU.
        label_map: for a network trained on another vocabulary (a BTCV or TotalSegmentator
            checkpoint): the label map (name or YAML path) from its output channels to organ names.
            None = the output channels are the organ set's ids.
        intensity: the network's own preprocessing: the per-view normalisation it was trained on
            (:class:`~umd_lightning.intensity.IntensityConfig`; CT HU window, MRI percentiles, PET SUV
            range), applied to the physical units the data module hands over. A bundle trained with
            ``ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True)`` on CT is ``ct_window: [a_min, a_max]``.
    """

    def __init__(
        self,
        net: nn.Module,
        name: str = "monai_net",
        checkpoint: str | Path | None = None,
        roi_size: Sequence[int] = (96, 96, 96),
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        mode: str = "gaussian",
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        tta: bool = False,
        autocast: str | None = None,
        label_map: str | LabelMap | None = None,
        intensity: IntensityConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.label_map: LabelMap | None = (
            label_map if isinstance(label_map, LabelMap) or label_map is None else load_label_map(str(label_map))
        )
        self.net = net
        use_group_norm_kernel(self.net)  # CPU inference: same numbers, a 4x faster kernel
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        if self.checkpoint is not None:
            load_state_dict_checked(self.net, self.checkpoint)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.tta = tta
        self.autocast = autocast
        self.intensity = IntensityConfig.of(intensity)
        self.info = AdapterInfo(
            name=name,
            prompt_kind="automatic",
            oracle=False,
            target_spacing=None if target_spacing is None else tuple(float(s) for s in target_spacing),
            reported_dice=dict(reported_dice or {}),
            vocabulary=None if self.label_map is None else self.label_map.name,
            preprocessing=_describe(self.intensity, target_spacing),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *spatial) for a patch batch (B, C, *spatial): the training path."""
        return self.net(x)

    def organs_predicted(self, organ_set: OrganSet) -> tuple[str, ...]:
        """All organs when the channels are the organ set's ids, else those the label map names."""
        return organ_set.organs if self.label_map is None else self.label_map.organs_covered(organ_set)

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        from umd_lightning.models.inference import sliding_window_labels

        device = next(self.net.parameters()).device
        image = normalise_view(image, str(meta["view"]), self.intensity)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.autocast), None)
        labels = sliding_window_labels(
            image,
            self.net,
            self.roi_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
            device=device,
            autocast=dtype if (dtype is not None and device.type == "cuda") else False,
            tta=self.tta,
        )
        if self.label_map is not None:
            labels = torch.as_tensor(self.label_map.apply(labels.cpu().numpy(), organ_set))
        return Prediction(labels=labels)


def _describe(intensity: IntensityConfig, target_spacing: Sequence[float] | None) -> str:
    spacing = "the label grid" if target_spacing is None else "x".join(f"{float(s):g}" for s in target_spacing) + " mm"
    lo, hi = intensity.ct_window
    plo, phi = intensity.mri_percentiles
    return (
        f"resampled to {spacing}; CT window {lo:g}..{hi:g} HU, MRI {plo:g}-{phi:g} percentiles of the scan, "
        f"PET SUV 0..{intensity.pet_suv_max:g}, each mapped to [0, 1] and clipped"
    )
