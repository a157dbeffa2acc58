"""nnU-Net v2 trained-model folders through nnunetv2's Python API.

:class:`NnUNetAdapter` takes a local trained-model folder (``dataset.json``, ``plans.json``,
``fold_X/checkpoint_final.pth``). It rebuilds the network the way
``nnUNetPredictor.initialize_from_trained_model_folder`` does, but reads the checkpoints itself with
``torch.load(weights_only=True)``, then predicts with ``predict_single_npy_array`` (nnU-Net's own
normalisation, resampling, sliding window and mirroring). The vocabulary is the folder's
``dataset.json`` labels, harmonised through ``labelmaps/text_names.yaml``, unless a label map is named.

Axis order: our volumes are (x, y, z) of the RAS-oriented image; nnU-Net's arrays are (z, y, x) as
SimpleITK reads the same file, so the volume is transposed on the way in and back on the way out.

Optional extra: ``umd_lightning[nnunet]`` (nnunetv2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.models.adapter import (
    CheckpointError,
    Prediction,
    load_checkpoint_file,
    optional_import,
)
from umd_lightning.models.foundation import FoundationAdapter, label_map_from_names, require_path
from umd_lightning.organs import LabelMap, OrganSet, load_label_map

__all__ = ["NnUNetAdapter", "read_nnunet_labels"]


def read_nnunet_labels(model_folder: str | Path) -> dict[int, str]:
    """``{label id: name}`` of an nnU-Net v2 ``dataset.json`` (region-based entries are skipped)."""
    path = require_path(Path(model_folder) / "dataset.json", "nnU-Net dataset.json")
    labels = json.loads(path.read_text()).get("labels", {})
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) or str(v).isdigit()}


def _to_nnunet(image: torch.Tensor) -> np.ndarray:
    """(1, C, x, y, z) -> (C, z, y, x) float32, nnU-Net's (SimpleITK) axis order."""
    return np.ascontiguousarray(image[0].cpu().numpy().transpose(0, 3, 2, 1).astype(np.float32))


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
        target_spacing: None: nnU-Net resamples to its plans' spacing itself.
        reported_dice: Dice the model's paper reports.
        intensity_range: where [0, 1] intensities are mapped (CT models expect HU, e.g. (-1000, 1000)).
        hu_window: the data module's CT window that makes the mapping restore HU.
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
        intensity_range: Sequence[float] | None = (-1000.0, 1000.0),
        hu_window: Sequence[float] | None = (-1000.0, 1000.0),
    ) -> None:
        optional_import("nnunetv2", "nnunet", model="nnU-Net v2")
        folder = require_path(model_folder, "nnU-Net trained-model folder", is_dir=True)
        if label_map is None:
            label_map = label_map_from_names(read_nnunet_labels(folder), name=f"{name}_labels", source=str(folder / "dataset.json"))
        elif not isinstance(label_map, LabelMap):
            label_map = load_label_map(str(label_map))
        super().__init__(
            name,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            intensity_range=intensity_range,
            hu_window=hu_window,
            label_map=label_map,
        )
        self.model_folder = str(folder)
        self.folds = tuple(folds)
        self.checkpoint_name = checkpoint_name
        self.tile_step_size = float(tile_step_size)
        self.use_mirroring = bool(use_mirroring)
        # read (and so check) every checkpoint now: a missing fold fails at config time, not mid-run
        self._checkpoints = [
            load_checkpoint_file(require_path(folder / f"fold_{f}" / checkpoint_name, f"nnU-Net fold {f} checkpoint"))
            for f in self.folds
        ]
        for f, ckpt in zip(self.folds, self._checkpoints):
            missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in ckpt]
            if missing:
                raise CheckpointError(f"{folder / f'fold_{f}' / checkpoint_name}: not an nnU-Net v2 checkpoint (missing {missing})")
        self._predictor: Any = None
        self._predictor_device: torch.device | None = None

    def _build_predictor(self) -> Any:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        folder = Path(self.model_folder)
        dataset_json = json.loads((folder / "dataset.json").read_text())
        plans = json.loads(require_path(folder / "plans.json", "nnU-Net plans.json").read_text())
        plans_manager = PlansManager(plans)
        first = self._checkpoints[0]
        trainer_name = first["trainer_name"]
        configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
        mirror_axes = first.get("inference_allowed_mirroring_axes")
        num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        trainer_class = _find_trainer(trainer_name)
        network = trainer_class.build_network_architecture(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
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
        predictor.manual_initialization(
            network,
            plans_manager,
            configuration_manager,
            [c["network_weights"] for c in self._checkpoints],
            dataset_json,
            trainer_name,
            mirror_axes,
        )
        return predictor

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        if self._predictor is None or self._predictor_device != self.device:
            self._predictor, self._predictor_device = self._build_predictor(), self.device
        spacing = self.info.target_spacing or tuple(float(s) for s in meta["spacing"])
        props = {"spacing": [float(s) for s in reversed(spacing)]}
        seg = self._predictor.predict_single_npy_array(_to_nnunet(self.to_model_range(image)), props, None, None, False)
        labels = np.asarray(seg).transpose(2, 1, 0)
        return Prediction(labels=self.harmonise(labels, organ_set))


def _find_trainer(trainer_name: str) -> Any:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), trainer_name, "nnunetv2.training.nnUNetTrainer"
    )
    if cls is None:
        raise CheckpointError(f"nnU-Net trainer class {trainer_name!r} not found in nnunetv2 (a custom trainer?)")
    return cls
