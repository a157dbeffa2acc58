"""VISTA3D (``monai.networks.nets.vista3d``) with class prompts or simulated point prompts.

The adapter runs VISTA3D's own inference pipeline (Project-MONAI/VISTA ``vista3d/configs/infer.yaml``
and ``scripts/infer.py``, built from MONAI components) on the physical-unit volume it is handed:

1. ``ScaleIntensityRanged`` -963.82..1053.68 -> 0..1, clipped (the same window for every modality: a
   PET or MRI enters as it is, as a user running VISTA3D on it would);
2. ``Spacingd`` to 1.5 mm isotropic (bilinear, ``align_corners=True``); the input is RAS already, so
   the upstream's ``Orientationd("RAS")`` is the identity here;
3. class prompts: ``sliding_window_inference`` with 128³ windows, overlap 0.625, Gaussian blending,
   the VISTA3D class ids of every organ the vocabulary names (``labelmaps/vista3d.yaml``; the lung as
   its five lobes); point prompts: MONAI's ``point_based_window_inferer`` on windows centred on the
   simulated clicks, then the connected components that hold a positive click
   (``keep_components_with_positive_points``), as the bundle's post-processing does;
4. ``VistaPostTransformd`` (argmax over the prompted classes, background where every logit <= 0, the
   channel index mapped back to the class id) and ``Invertd`` (nearest) back onto the input grid;
5. VISTA3D class ids -> organ-set ids through the label map (the lobes merge into the lung).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from umd_lightning.extras import require_extra
from umd_lightning.models.adapter import Prediction, load_state_dict_checked
from umd_lightning.models.foundation import PromptedAdapter, Region
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator
from umd_lightning.organs import OrganSet

__all__ = ["VISTA3D_INTENSITY_RANGE", "VISTA3D_PREPROCESSING", "Vista3DAdapter", "build_vista3d"]

#: VISTA3D's ``ScaleIntensityRanged`` a_min / a_max (HU mapped onto [0, 1]; infer.yaml's exact values).
VISTA3D_INTENSITY_RANGE = (-963.8247715525971, 1053.678477684517)
VISTA3D_PREPROCESSING = (
    "VISTA3D's own (Project-MONAI/VISTA configs/infer.yaml): intensities -963.8..1053.7 scaled to [0, 1] "
    "and clipped, RAS, resampled to 1.5 mm (bilinear, align_corners), 128^3 Gaussian sliding window with "
    "overlap 0.625, argmax over the prompted classes (background where every logit <= 0), inverted back "
    "onto the input grid (nearest)"
)


def build_vista3d(
    encoder_embed_dim: int = 48,
    in_channels: int = 1,
    blocks_down: Sequence[int] = (1, 2, 2, 4, 4),
    n_classes: int = 512,
    last_supported: int = 132,
) -> nn.Module:
    """A VISTA3D network; the defaults are exactly ``monai.networks.nets.vista3d132``.

    ``build_vista3d(encoder_embed_dim=E)`` equals ``vista3d132(encoder_embed_dim=E)`` (the tiny
    variants the agreement tests build); smaller ``blocks_down`` give still smaller ones.
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


class Vista3DAdapter(PromptedAdapter):
    """VISTA3D on the organ set, through VISTA3D's own preprocessing and post-processing.

    Args:
        net: the VISTA3D network (``build_vista3d`` or ``monai.networks.nets.vista3d132``), built by Hydra.
        name: name in results tables.
        checkpoint: weights (the bundle's ``models/model.pt``, a plain state dict), loaded with
            ``weights_only=True``.
        prompt: ``class`` (automatic, class prompts) or ``point`` (simulated clicks, oracle).
        prompts: the prompt simulator's settings (point mode).
        roi_size: window size (128³ upstream).
        sw_batch_size: windows per forward pass.
        overlap: window overlap (0.625 upstream).
        mode: sliding-window blending (``gaussian`` upstream).
        target_spacing: the spacing (mm) VISTA3D resamples to, inside the adapter (1.5 mm isotropic
            upstream); None keeps the input grid. The Lightning module never resamples for this model.
        intensity_range: VISTA3D's ``ScaleIntensityRanged`` window (a_min, a_max), mapped onto [0, 1].
        reported_dice: Dice its paper reports.
        label_map: VISTA3D class ids -> organ names.
        autocast: ``fp16`` (upstream's ``amp: true``) or ``bf16`` on a GPU; ignored on the CPU.
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
        overlap: float = 0.625,
        mode: Literal["gaussian", "constant"] = "gaussian",
        target_spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        intensity_range: Sequence[float] = VISTA3D_INTENSITY_RANGE,
        reported_dice: Mapping[str, float] | None = None,
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
            target_spacing=None,  # VISTA3D resamples itself (Spacingd inside the adapter)
            reported_dice=reported_dice,
            label_map=label_map,
            preprocessing=VISTA3D_PREPROCESSING,
        )
        self.net = net
        self.prompt = prompt
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        if self.checkpoint is not None:
            # a plain state dict (model.pt as released); {"model": ...} as the bundle's CheckpointLoader also reads
            load_state_dict_checked(self.net, self.checkpoint, key="model")
        self.net.eval()
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.spacing = None if target_spacing is None else tuple(float(s) for s in target_spacing)
        lo, hi = (float(v) for v in intensity_range)
        self.intensity_range = (lo, hi)
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

    # ---------------------------------------------------------------- VISTA3D's pipeline
    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.autocast))
        if dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=dtype)

    def _preprocessing(self) -> Any:
        """infer.yaml's ``transforms_infer`` after loading: scale, (orientation: identity), spacing, cast."""
        from monai.transforms import CastToTyped, Compose, ScaleIntensityRanged, Spacingd

        lo, hi = self.intensity_range
        steps: list = [ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
        if self.spacing is not None:
            steps.append(Spacingd(keys="image", pixdim=self.spacing, mode="bilinear", align_corners=True))
        steps.append(CastToTyped(keys="image", dtype=torch.float32))
        return Compose(steps)

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, Any]:
        """(1, 1, D, H, W) physical units on the RAS input grid -> VISTA3D's input, with its transform trace."""
        from monai.data import MetaTensor

        if image.shape[1] != 1:
            raise ValueError(f"{self.info.name}: VISTA3D takes one channel, got {image.shape[1]}")
        affine = meta.get("affine")
        if affine is None:  # a bare volume: its spacing (or 1 mm) along the array axes
            affine = np.diag([*(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0))), 1.0])
        x = MetaTensor(
            image[0].detach().cpu().float().as_subclass(torch.Tensor),
            affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64),
        )
        pre = self._preprocessing()
        data = pre({"image": x})
        data["_transform"] = pre
        data["input_affine"] = np.asarray(affine, dtype=np.float64)
        return data

    def _invert(self, prepared: dict[str, Any], pred: torch.Tensor) -> torch.Tensor:
        """A (C, *model grid) map -> (C, *input grid), as the upstream's ``Invertd(nearest_interp=True)``."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        image = prepared["image"]
        if not image.applied_operations:  # no resampling: the model grid is the input grid
            return torch.as_tensor(pred).cpu().as_subclass(torch.Tensor)
        pred = MetaTensor(torch.as_tensor(pred).cpu().as_subclass(torch.Tensor), meta=dict(image.meta))
        data = {"image": image, "pred": pred}
        invert = Invertd(
            keys="pred", transform=prepared["_transform"], orig_keys="image", nearest_interp=True, to_tensor=True
        )
        out = invert(data)
        return torch.as_tensor(out["pred"]).as_subclass(torch.Tensor)

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
        from monai.apps.vista3d.transforms import VistaPostTransformd
        from monai.inferers import sliding_window_inference

        prompts = self.class_prompts(organ_set)
        class_ids = [c for p in prompts for c in p["class_ids"]]
        if not class_ids:
            return Prediction(labels=torch.zeros(image.shape[-3:], dtype=torch.uint8), prompts=prompts)
        prepared = self.prepare(image, meta)
        class_vector = torch.tensor(class_ids, device=self.device)

        def predictor(window: torch.Tensor, **_: Any) -> torch.Tensor:
            # infer.py's infer_wrapper: the model's (N, 1, *roi) output as (1, N, *roi)
            return self.net(window, class_vector=class_vector, transpose=True)

        with self._autocast():
            logits = sliding_window_inference(
                prepared["image"][None],
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=predictor,
                overlap=self.overlap,
                mode=self.mode,
                sw_device=self.device,
                device=torch.device("cpu"),
            )
        post = VistaPostTransformd(keys="pred")({"pred": logits[0].float(), "label_prompt": torch.tensor(class_ids)})
        vista_ids = self._invert(prepared, post["pred"])[0]
        labels = self.harmonise(torch.round(vista_ids).clamp_min(0).long(), organ_set)
        return Prediction(labels=labels.to(torch.uint8), prompts=prompts)

    # ---------------------------------------------------------------- point prompts
    def segment_organ(
        self, prepared: dict[str, Any], prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        from monai.apps.vista3d.inferer import point_based_window_inferer
        from monai.transforms.utils import keep_components_with_positive_points

        # the bundle's point post-processing labels connected components with scikit-image
        require_extra("skimage.measure", "vista3d", needed_by="VISTA3D point prompts")
        coords, labels = prompts.coords_labels()
        image = prepared["image"]
        # clicks on the input grid -> the model grid (infer.py's transform_points: world coordinates between)
        src = np.asarray(prepared["input_affine"], dtype=np.float64)
        dst = np.asarray(image.affine, dtype=np.float64)
        idx = (np.linalg.inv(dst) @ src @ np.c_[coords, np.ones(len(coords))].T)[:3].T
        keys = self.source_keys(prompts.organ) if self.label_map is not None else []
        prompt_class = torch.tensor([int(keys[0])], device=self.device) if len(keys) == 1 else None
        point_coords = torch.as_tensor(idx, dtype=torch.float32, device=self.device)[None]
        point_labels = torch.as_tensor(labels, device=self.device)[None]
        with self._autocast():
            out = point_based_window_inferer(
                image[None].to(self.device),
                self.roi_size,
                self.net,
                point_coords=point_coords,
                point_labels=point_labels,
                prompt_class=prompt_class,
                transpose=True,
            )
        out = torch.as_tensor(out).float()  # (1, 1, *model grid); NaN outside every window
        out = keep_components_with_positive_points(out, point_coords=point_coords, point_labels=point_labels)
        scores = self._invert(prepared, out[0].cpu())[0]
        return None, scores.float(), None
