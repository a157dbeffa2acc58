"""nnU-Net v2 trained-model folders through nnunetv2's own predictor.

:class:`NnUNetAdapter` takes a local trained-model folder (``dataset.json``, ``plans.json``,
``fold_X/checkpoint_final.pth``) and builds its predictor with nnunetv2's own
``nnUNetPredictor.initialize_from_trained_model_folder`` (the trainer class named in the checkpoint
builds the network from the plans), with every ``torch.load`` forced to ``weights_only=True``; then
``predict_single_npy_array`` applies nnU-Net's own preprocessing (crop to nonzero, its plans' per-channel
normalisation of the raw values, resampling to its plans' spacing), sliding window, mirroring and
resampling back. The vocabulary is the folder's ``dataset.json`` labels, harmonised through
``labelmaps/text_names.yaml``, unless a label map is named.

Input: physical units as the data module gives them (CT in HU, MRI as stored, PET in SUV). Axis order:
nnU-Net models are trained on files as SimpleITK reads them, the voxels in storage order with axes
reversed, never reoriented, and nnU-Net is not orientation-invariant. Our volumes are RAS on the
label's grid, so the adapter puts each channel back into the label file's storage order
(:class:`~umd_lightning.models.file_axes.SessionAxes`, from ``meta["label_path"]``'s header),
reverses the axes, gives the spacing in that order, and maps the labels back: for a given file our
labels are the ones ``nnUNetPredictor.predict_from_files`` writes for it.

Multi-channel models: ``dataset.json`` ``channel_names`` such as ``{"0": "CT", "1": "PET"}`` (AutoPET)
make :attr:`NnUNetAdapter.channels` ``("anatomical", "PET")``: the image then holds the session's
anatomical scan and its PET (on the label grid), stacked in that order.

Optional extra: ``umd_lightning[nnunet]`` (nnunetv2).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.extras import require_extra
from umd_lightning.models.adapter import (
    CheckpointError,
    Prediction,
    load_checkpoint_file,
    weights_only_loading,
)
from umd_lightning.models.foundation import FoundationAdapter, label_map_from_names, require_path
from umd_lightning.models.file_axes import SessionAxes
from umd_lightning.organs import LabelMap, OrganSet, load_label_map

__all__ = ["NnUNetAdapter", "channel_kinds", "read_nnunet_labels"]

PREPROCESSING = (
    "nnU-Net's own, from the model's plans.json: the raw image in the file's storage order (as SimpleITK "
    "reads it), cropped to its nonzero region, each channel normalised by its plans scheme (CT: clip to the "
    "training foreground's 0.5-99.5 percentiles and z-score with its mean and std; other channels: z-score "
    "per image), resampled to the plans' spacing; sliding window with mirroring; labels resampled back"
)


def read_nnunet_labels(model_folder: str | Path) -> dict[int, str]:
    """``{label id: name}`` of an nnU-Net v2 ``dataset.json`` (region-based entries are skipped)."""
    path = require_path(Path(model_folder) / "dataset.json", "nnU-Net dataset.json")
    labels = _read_json(path).get("labels", {})
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) or str(v).isdigit()}


def channel_kinds(channel_names: Mapping[str, str]) -> tuple[str, ...]:
    """dataset.json ``channel_names`` -> ``PET`` (a name containing PET, any case) or ``anatomical``, in order."""
    ordered = sorted(channel_names.items(), key=lambda kv: int(kv[0]))
    return tuple("PET" if re.search("pet", str(name), re.IGNORECASE) else "anatomical" for _, name in ordered)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from exc


class NnUNetAdapter(FoundationAdapter):
    """An nnU-Net v2 trained-model folder (automatic).

    Args:
        model_folder: ``.../nnUNet_results/DatasetXXX/Trainer__Plans__Configuration``.
        name: name in results tables.
        folds: folds to ensemble (their ``fold_X`` folders must exist).
        checkpoint_name: checkpoint file inside each fold folder.
        label_map: name or path of a label map for the dataset's ids; None = from ``dataset.json``.
        tile_step_size: nnU-Net's sliding-window step (0.5 as nnU-Net).
        use_mirroring: nnU-Net's test-time mirroring.
        target_spacing: None (nnU-Net resamples to its plans' spacing itself).
        reported_dice: Dice the model's paper reports.

    Raises:
        CheckpointError: the folder, ``dataset.json``, ``plans.json`` or a fold's checkpoint is missing,
            a checkpoint is not an nnU-Net v2 checkpoint or does not load with ``weights_only=True``, or
            names a trainer or configuration this nnunetv2 does not have. One line naming the file.
    """

    def __init__(
        self,
        model_folder: str,
        name: str = "nnunet",
        folds: Sequence[int | str] = (0,),
        checkpoint_name: str = "checkpoint_final.pth",
        label_map: str | LabelMap | None = None,
        tile_step_size: float = 0.5,
        use_mirroring: bool = True,
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
    ) -> None:
        require_extra("nnunetv2", "nnunet", needed_by="nnU-Net v2")
        folder = require_path(model_folder, "nnU-Net trained-model folder", is_dir=True)
        dataset_json = _read_json(require_path(folder / "dataset.json", "nnU-Net dataset.json"))
        plans = _read_json(require_path(folder / "plans.json", "nnU-Net plans.json"))
        names = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "image"}
        kinds = channel_kinds(names)
        #: Input channels (``anatomical`` / ``PET``, dataset.json order); None for a one-channel model.
        self.channels: tuple[str, ...] | None = kinds if len(kinds) > 1 else None
        if label_map is None:
            label_map = label_map_from_names(read_nnunet_labels(folder), name=f"{name}_labels", source=str(folder / "dataset.json"))
        elif not isinstance(label_map, LabelMap):
            label_map = load_label_map(str(label_map))
        super().__init__(
            name,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            label_map=label_map,
            preprocessing=PREPROCESSING,
            channels=self.channels or (),
        )
        self.model_folder = str(folder)
        self.folds = tuple(folds)
        self.checkpoint_name = checkpoint_name
        self.tile_step_size = float(tile_step_size)
        self.use_mirroring = bool(use_mirroring)
        self.channel_names = tuple(str(n) for _, n in sorted(names.items(), key=lambda kv: int(kv[0])))
        self._check_folds(folder, plans)
        self._predictor: Any = None
        self._predictor_device: torch.device | None = None

    def _check_folds(self, folder: Path, plans: Mapping[str, Any]) -> None:
        """Read every checkpoint once now (weights_only): a missing fold or foreign file fails at config time."""
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        if not self.folds:
            raise CheckpointError(f"{folder}: no folds given")
        for f in self.folds:
            path = require_path(folder / f"fold_{f}" / self.checkpoint_name, f"nnU-Net fold {f} checkpoint")
            ckpt = load_checkpoint_file(path)
            if not isinstance(ckpt, dict):
                raise CheckpointError(f"{path}: not an nnU-Net v2 checkpoint (a {type(ckpt).__name__}, not a dict)")
            missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in ckpt]
            if missing:
                raise CheckpointError(f"{path}: not an nnU-Net v2 checkpoint (missing {missing})")
            configuration = (ckpt.get("init_args") or {}).get("configuration")
            if configuration not in plans.get("configurations", {}):
                raise CheckpointError(
                    f"{path}: configuration {configuration!r} is not in {folder / 'plans.json'} "
                    f"({sorted(plans.get('configurations', {}))})"
                )
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    recursive_find_trainer_class_by_name(str(ckpt["trainer_name"]))
            except (RuntimeError, AssertionError) as exc:
                raise CheckpointError(
                    f"{path}: nnU-Net trainer class {ckpt['trainer_name']!r} not found in nnunetv2 (a custom trainer? "
                    "set nnUNet_extTrainer)"
                ) from exc
            del ckpt

    def _build_predictor(self) -> Any:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(
            tile_step_size=self.tile_step_size,
            use_gaussian=True,
            use_mirroring=self.use_mirroring,
            perform_everything_on_device=self.device.type == "cuda",
            device=self.device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        try:
            # nnunetv2's own loader (it picks the trainer's build_network_architecture signature), with
            # its torch.load calls made weights_only=True
            with weights_only_loading():
                predictor.initialize_from_trained_model_folder(self.model_folder, self.folds, self.checkpoint_name)
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.model_folder}: nnU-Net cannot build the model from this folder ({first})") from exc
        return predictor

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        expected = len(self.channels or (None,))
        if image.ndim != 5 or image.shape[0] != 1 or image.shape[1] != expected:
            raise ValueError(
                f"{self.info.name}: the model takes {expected} channel(s) {list(self.channel_names)}, "
                f"got an image of shape {tuple(image.shape)} (expected (1, {expected}, X, Y, Z))"
            )
        if self._predictor is None or self._predictor_device != self.device:
            self._predictor, self._predictor_device = self._build_predictor(), self.device
        volume = image[0].detach().cpu().float().numpy()
        # the label file's storage order, axes reversed: what SimpleITK gives nnU-Net for that file
        shape = tuple(int(s) for s in volume.shape[1:])
        # (resampled to target_spacing the volume is no longer on the file's grid: then RAS, axes reversed)
        axes = SessionAxes(shape=shape) if self.info.target_spacing else SessionAxes.from_meta(meta, shape)  # type: ignore[arg-type]
        data = np.stack([axes.to_session(channel) for channel in volume]).astype(np.float32, copy=False)
        ras_spacing = self.info.target_spacing or tuple(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0)))
        file_spacing = [float(ras_spacing[p]) for p in axes.perm]
        props = {"spacing": file_spacing[::-1]}
        seg = self._predictor.predict_single_npy_array(data, props, None, None, False)
        labels = axes.from_session(np.asarray(seg))
        return Prediction(labels=self.harmonise(labels, organ_set))
