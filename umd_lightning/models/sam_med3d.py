"""SAM-Med3D and SAM-Med3D-turbo through the ``medim`` package, with SAM-Med3D's own inference steps.

The network comes from ``medim`` (the registry package SAM-Med3D's ``medim_val_single.py`` uses); the
steps follow the official ``utils/infer_utils.py`` (``validate_paired_img_gt``), with the same
``torchio`` transforms, once per organ:

1. ``tio.Resample(1.5)`` of image (linear) and reference label (nearest), then ``tio.ToCanonical()``;
2. ``tio.CropOrPad(128, mask_name=...)``: a 128^3 crop (zero padding where the volume is smaller)
   centred on the bounding box of the organ's reference mask (``crop_policy="mask"``, the official
   policy, which reads the reference: an oracle crop) or on the organ's simulated click
   (``crop_policy="point"``);
3. ``tio.ZNormalization`` over the crop's voxels > 0;
4. image encoder once per crop; prompt encoder and mask decoder once per click round, the previous
   32^3 low-resolution logits fed back (zeros at first, as the official code does);
5. the logits upsampled to 128^3 (trilinear), ``sigmoid > 0.5``, and the crop's mask resampled back onto
   the input grid by nearest neighbour (``tio.Resample`` onto the input image, as the official
   ``data_postprocess``); where organs overlap, the higher label id wins (the official loop writes the
   categories in increasing order, each over the previous ones).

The clicks are the study's simulated ones (:mod:`umd_lightning.models.prompts`, on the input grid),
mapped to the crop through world coordinates (rounded half up); the official script instead draws a
random voxel of the organ inside the crop. With the official mask policy, an organ whose resampled
mask misses the crop gets no prediction, as in the official code.

Weights load with ``torch.load(weights_only=True)`` allow-listing only ``argparse.Namespace`` (the
released ``sam_med3d_turbo.pth`` holds its training arguments); medim's own loader unpickles
everything and loads non-strictly, so the network is built by medim without weights.

Optional extra: ``pip install 'umd_lightning[sam_med3d]'`` (``medim`` and ``torchio``); the checkpoint
(``sam_med3d.pth`` or ``sam_med3d_turbo.pth``) must be a local file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from umd_lightning.extras import require_extra
from umd_lightning.models.adapter import Prediction, load_state_dict_checked
from umd_lightning.models.foundation import PromptedAdapter, Region, require_path
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator, center_point
from umd_lightning.organs import OrganSet

__all__ = ["CROP_POLICIES", "SamMed3DAdapter", "map_points"]

CropPolicy = Literal["mask", "point"]
#: ``mask``: the official crop, centred on the organ's reference mask; ``point``: centred on its click.
CROP_POLICIES = ("mask", "point")


def map_points(coords: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) on one grid -> the nearest voxel indices on another (world coordinates
    in between; halves round up).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    world = np.asarray(src_affine, dtype=np.float64) @ np.c_[coords, np.ones(len(coords))].T
    idx = (np.linalg.inv(np.asarray(dst_affine, dtype=np.float64)) @ world)[:3].T
    return np.floor(idx + 0.5).astype(np.int64)


class SamMed3DAdapter(PromptedAdapter):
    """SAM-Med3D(-turbo), one organ per click set, SAM-Med3D's own preprocessing.

    Args:
        checkpoint: local SAM-Med3D checkpoint (``model_state_dict`` inside, as the released file, or a
            bare state dict).
        name: name in results tables (``sam_med3d``, ``sam_med3d_turbo``, ``sam_med3d_turbo_point``).
        model_name: medim registry name.
        model_kwargs: architecture overrides for medim's builder (tests build a tiny one); the crop
            size is its ``image_size`` (128 by default, the official ``crop_size``).
        prompts: prompt simulator settings (center point, k random points, corrective clicks).
        crop_policy: ``mask`` (official: the crop centred on the organ's reference mask) or ``point``
            (centred on the organ's first click). Both read the reference (the click is simulated
            from it), so the run is oracle either way.
        spacing: the isotropic spacing the official inference resamples to (1.5 mm); the adapter
            resamples itself, so the data module's ``target_spacing`` stays None.
        reported_dice: Dice its paper reports.
    """

    def __init__(
        self,
        checkpoint: str,
        name: str = "sam_med3d",
        model_name: str = "SAM-Med3D",
        model_kwargs: Mapping[str, Any] | None = None,
        prompts: PromptSimulator | Mapping[str, Any] | None = None,
        crop_policy: CropPolicy = "mask",
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        reported_dice: Mapping[str, float] | None = None,
    ) -> None:
        if crop_policy not in CROP_POLICIES:
            raise ValueError(f"SAM-Med3D adapter: crop_policy must be one of {CROP_POLICIES}, got {crop_policy!r}")
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != 3:
            raise ValueError(f"SAM-Med3D adapter: spacing needs 3 values, got {list(spacing)}")
        centre = (
            "the bounding box of the organ's reference mask (the official oracle crop)"
            if crop_policy == "mask"
            else "the organ's simulated click (not the official crop, which is centred on the reference mask)"
        )
        sp = "x".join(f"{s:g}" for s in self.spacing)
        super().__init__(
            name,
            prompts=prompts,
            prompt_kind="point",
            oracle=True,
            target_spacing=None,
            reported_dice=reported_dice,
            preprocessing=(
                f"SAM-Med3D's own (utils/infer_utils.py, torchio): resampled to {sp} mm (linear), RAS, a 128^3 "
                f"crop (zero padding) centred on {centre}, z-score over the crop's voxels > 0; "
                "point prompts; the crop's mask (sigmoid > 0.5) resampled back by nearest neighbour; "
                f"crop_policy={crop_policy}"
            ),
        )
        if self.simulator.boxes:
            raise ValueError("SAM-Med3D adapter: box prompts are not supported (SAM-Med3D is evaluated with clicks)")
        medim = require_extra("medim", "sam_med3d", needed_by="SAM-Med3D")
        self._tio = require_extra("torchio", "sam_med3d", needed_by="SAM-Med3D")
        self.crop_policy: CropPolicy = crop_policy
        path = require_path(checkpoint, "SAM-Med3D checkpoint")
        with contextlib.redirect_stdout(io.StringIO()):  # medim prints on every build
            self.net = medim.create_model(model_name, pretrained=False, **dict(model_kwargs or {}))
        # the released checkpoint holds its training arguments (argparse.Namespace): plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            load_state_dict_checked(self.net, path, key="model_state_dict")
        self.net.eval()
        self.checkpoint = str(path)
        self.crop_size = int(self.net.image_encoder.img_size)
        self._reference: np.ndarray | None = None

    # ------------------------------------------------------------------------------------- per volume

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        # prepare() needs the reference too (the official crop is centred on its organ mask)
        ref = reference.cpu().numpy() if isinstance(reference, torch.Tensor) else reference
        self._reference = None if ref is None else np.asarray(ref)
        try:
            return super().predict_volume(image, meta, organ_set, reference)
        finally:
            self._reference = None

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The volume and its reference at 1.5 mm, RAS (official steps 1), as a torchio subject."""
        tio = self._tio
        if meta.get("affine") is None:
            raise ValueError(f"{self.info.name}: meta has no 'affine' (needed to resample to {self.spacing} mm)")
        affine = np.asarray(meta["affine"], dtype=np.float64)
        vol = image[0, :1].detach().cpu().float()  # one channel, as the official code keeps
        if bool(torch.equal(vol, torch.round(vol))) and float(vol.abs().max()) < 2**31:
            # whole numbers: a scan stored as integers (CT in HU), which the official code (torchio ->
            # SimpleITK) resamples in its integer type, the interpolated values cast back to integers
            vol = vol.to(torch.int32)
        subject = tio.Subject(image=tio.ScalarImage(tensor=vol, affine=affine))
        if self.crop_policy == "mask":
            if self._reference is None:
                raise ValueError(f"{self.info.name}: the official crop is centred on the reference mask, but none was given")
            ref = torch.as_tensor(self._reference.astype(np.int32, copy=False))[None]
            subject.add_image(tio.LabelMap(tensor=ref, affine=affine), "label")
        subject = tio.ToCanonical()(tio.Resample(target=self.spacing)(subject))
        return {
            "subject": subject,
            "affine": affine,
            "shape": tuple(int(s) for s in image.shape[-3:]),
            "reference": self._reference,
        }

    # ---------------------------------------------------------------------------------------- per organ

    def _roi(self, prepared: dict[str, Any], prompts: OrganPrompts) -> tuple[Any, torch.Tensor | None]:
        """The organ's 128^3 crop (official steps 2-3): (cropped subject, z-scored (1, 1, 128^3) image);
        the image is None where the official code predicts nothing (no reference voxel in the crop)."""
        tio = self._tio
        subject = prepared["subject"]
        # new image objects over the same tensors: CropOrPad(copy=False) then slices without copying
        # the whole resampled volume (it never writes into the tensors)
        work = tio.Subject(image=tio.ScalarImage(tensor=subject["image"].data, affine=subject["image"].affine))
        if self.crop_policy == "mask":
            organ = (subject["label"].data == prompts.label).to(torch.uint8)
            work.add_image(tio.LabelMap(tensor=organ, affine=subject["label"].affine), "label")
        else:
            # a one-voxel mask at the organ's first click, on the resampled grid
            first = np.array([prompts.points[0].coords])
            idx = map_points(first, prepared["affine"], subject["image"].affine)[0]
            idx = np.clip(idx, 0, np.array(subject["image"].spatial_shape) - 1)
            mask = torch.zeros((1, *subject["image"].spatial_shape), dtype=torch.uint8)
            mask[(0, *idx)] = 1
            work.add_image(tio.LabelMap(tensor=mask, affine=subject["image"].affine), "label")
        crop = tio.CropOrPad(mask_name="label", target_shape=(self.crop_size,) * 3, copy=False)(work)
        if self.crop_policy == "mask" and not bool(crop["label"].data.any()):
            return crop, None
        znorm = tio.ZNormalization(masking_method=lambda x: x > 0)
        roi = znorm(crop["image"].data.clone())
        return crop, roi[None, :1].float()

    def segment_organ(
        self, prepared: dict[str, Any], prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        device = self.device
        if previous is None:
            crop, roi = self._roi(prepared, prompts)
            roi_affine = np.asarray(crop["image"].affine, dtype=np.float64)
            # the crop's footprint on the input grid (nearest neighbour, as the mapping back)
            ones = torch.ones((1, *(self.crop_size,) * 3), dtype=torch.float32)
            inside = self._to_input_grid(ones, roi_affine, prepared).numpy()
            if not inside.any():  # cannot happen with the crop centred on the organ or its click
                raise ValueError(f"{self.info.name}: the 128^3 crop for {prompts.organ} misses the input grid")
            side = [4 * int(e) for e in self.net.prompt_encoder.image_embedding_size]
            previous = {
                "roi_affine": roi_affine,
                "inside": inside,
                "region": tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(inside)),
                "embedding": None if roi is None else self.net.image_encoder(roi.to(device)),
                "low_res": torch.zeros(1, 1, *side, device=device),
            }
            self._click_inside_crop(prompts, prepared, inside)
        region = previous["region"]
        shape = tuple(r.stop - r.start for r in region)
        if previous["embedding"] is None:
            return region, torch.full(shape, -1.0), previous
        coords, labels = prompts.coords_labels()
        keep = previous["inside"][tuple(coords.T)]
        # clicks outside the crop are not sent (the official clicks all lie in the crop)
        local = map_points(coords[keep], prepared["affine"], previous["roi_affine"])
        local = np.clip(local, 0, self.crop_size - 1)  # rounding at the crop's border
        point_coords = torch.as_tensor(local, dtype=torch.float32, device=device)[None]
        point_labels = torch.as_tensor(labels[keep], dtype=torch.int64, device=device)[None]
        sparse, dense = self.net.prompt_encoder(
            points=[point_coords, point_labels], boxes=None, masks=previous["low_res"]
        )
        low_res, _ = self.net.mask_decoder(
            image_embeddings=previous["embedding"],
            image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        previous["low_res"] = low_res.detach()
        logits = F.interpolate(low_res, size=(self.crop_size,) * 3, mode="trilinear", align_corners=False)
        mask = (torch.sigmoid(logits) > 0.5)[0].float().cpu()  # (1, 128, 128, 128)
        organ = self._to_input_grid(mask, previous["roi_affine"], prepared)[region]
        # scores that reproduce the official merge: the higher label id wins where organs overlap
        return region, torch.where(organ, float(prompts.label), -1.0), previous

    def _click_inside_crop(self, prompts: OrganPrompts, prepared: dict[str, Any], inside: np.ndarray) -> None:
        """The official clicks are drawn inside the crop; where none of the organ's positive clicks is (an
        organ longer than the crop, e.g. the aorta), the first click moves to the organ's deepest voxel
        inside the crop (the saved prompts record the moved click)."""
        coords, labels = prompts.coords_labels()
        if bool(np.any(inside[tuple(coords.T)] & (labels == 1))) or prepared.get("reference") is None:
            return
        organ = (prepared["reference"] == prompts.label) & inside
        spacing = tuple(float(s) for s in np.linalg.norm(prepared["affine"][:3, :3], axis=0))
        moved = center_point(organ, spacing if self.simulator.use_spacing else None)
        if moved is not None:
            prompts.points[0] = dataclasses.replace(prompts.points[0], coords=moved)

    def _to_input_grid(self, mask: torch.Tensor, roi_affine: np.ndarray, prepared: dict[str, Any]) -> torch.Tensor:
        """The crop's mask resampled onto the input grid by nearest neighbour (official ``data_postprocess``)."""
        tio = self._tio
        target = tio.ScalarImage(tensor=torch.zeros((1, *prepared["shape"]), dtype=torch.uint8), affine=prepared["affine"])
        out = tio.Resample(target=target, image_interpolation="nearest")(tio.LabelMap(tensor=mask, affine=roi_affine))
        return out.data[0] > 0
