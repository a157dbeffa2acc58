"""A random-weight TotalSegmentator weights folder, laid out the way its downloads unpack.

TotalSegmentator (``totalsegmentator.libs.download_pretrained_weights``) looks for
``$TOTALSEG_WEIGHTS_PATH/<foldername>`` with the folder names of
``totalsegmentator.map_tasks_config.TASK_ID_WEIGHTS_CONFIGS``; inside each, nnU-Net v2's results
layout: ``<Trainer>__nnUNetPlans__3d_fullres/{plans.json, dataset.json, fold_0/checkpoint_final.pth}``.

Each model here is a tiny nnU-Net ``PlainConvUNet`` (3 stages, 4-8-16 features, a 72 mm patch so that
a small test image is one window) at the spacing TotalSegmentator resamples to for that model (1.5 mm
for 291-295 and 850-851, 3 mm for 297 and 852, 6 mm for 298), so nnU-Net's own resampling is the
identity, as in the released models. ``dataset.json`` labels come from TotalSegmentator's own class
maps (``map_to_binary``). The network is built and checkpointed by nnU-Net's own trainer class (the
one TotalSegmentator names for the model: ``build_network_architecture``, ``configure_optimizers``,
``save_checkpoint``), so the file is the trainer's format; weights are nnU-Net's He init, seeded per
dataset, with the background class's output bias set per part (:data:`BACKGROUND_BIAS`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from copy import deepcopy
from pathlib import Path
from typing import Iterator, Sequence

import torch

CONFIGURATION = "3d_fullres"
#: Patch edge (voxels) per spacing (mm): 72 mm, so that a test block of about that size is one window.
PATCH = {1.5: 48, 3.0: 24, 6.0: 12}
PLANS = "nnUNetPlans"

#: Output bias of the background class: high for the parts whose classes are mostly not organs, so that,
#: as with real weights, a later part writes only where it finds its structures (TotalSegmentator merges
#: the parts in order, each overwriting the previous one where it is not background).
BACKGROUND_BIAS = {292: 6.0, 293: 6.0, 294: 6.0, 295: 6.0, 851: 6.0}
DEFAULT_BACKGROUND_BIAS = -1.0

#: Foreground intensity statistics of a CT dataset (HU) for nnU-Net's CTNormalization.
CT_INTENSITIES = {
    "max": 3071.0, "mean": 40.0, "median": 40.0, "min": -1024.0,
    "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0,
}  # fmt: skip


def _task_models(tasks: Sequence[str], fast: bool) -> dict[int, tuple[str, float, str]]:
    """``{dataset id: (trainer, spacing mm, task whose class map names its outputs)}`` that the tasks need.

    With ``roi_subset``, TotalSegmentator first runs a coarse model to crop (298 at 6 mm for CT, 852 at
    3 mm for MR), so those are included.
    """
    from totalsegmentator.map_tasks_config import TASK_CONFIGS

    out: dict[int, tuple[str, float, str]] = {}
    for task in tasks:
        modes = TASK_CONFIGS[task]["sub_modes"]
        for mode in ("default", "fast") if fast else ("default",):
            cfg = modes[mode]
            ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
            for tid in ids:
                out[tid] = (cfg["trainer"], float(cfg["resample"]), task)
        crop_cfg = modes["fast"] if task.endswith("_mr") else modes["fastest"]
        out[crop_cfg["task_id"]] = (crop_cfg["trainer"], float(crop_cfg["resample"]), task)
    return out


def _labels(tid: int, task: str) -> dict[str, int]:
    """dataset.json labels of one model: its part's class map, or the task's whole map for 297/298/852."""
    from totalsegmentator import map_to_binary as m

    part_names = {**m.map_taskid_to_partname_ct, **m.map_taskid_to_partname_mr}
    if task == "total" and tid in m.map_taskid_to_partname_ct:
        classes = m.class_map_5_parts[part_names[tid]]
    elif task == "total_mr" and tid in m.map_taskid_to_partname_mr:
        classes = m.class_map_parts_mr[part_names[tid]]
    else:
        classes = m.class_map[task]
    return {"background": 0, **{name: int(i) for i, name in sorted(classes.items())}}


def tiny_plans(dataset_name: str, spacing: float, mr: bool, features: Sequence[int] = (4, 8, 16)) -> dict:
    """nnU-Net v2 plans (the keys its ExperimentPlanner writes), one tiny 3d_fullres configuration."""
    n = len(features)
    sp = [float(spacing)] * 3
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": sp,
        "original_median_shape_after_transp": [128, 128, 128],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": f"{PLANS}_{CONFIGURATION}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [PATCH[float(spacing)]] * 3,
                "median_image_size_in_voxels": [128, 128, 128],
                "spacing": sp,
                "normalization_schemes": ["ZScoreNormalization" if mr else "CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
                },  # fmt: skip
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": n,
                        "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                        "n_conv_per_stage": [1] * n,
                        "n_conv_per_stage_decoder": [1] * (n - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0e4, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0, "percentile_99_5": 1.0e4,
                  "std": 1.0} if mr else CT_INTENSITIES,  # fmt: skip
        },
    }


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def save_model(
    folder: Path, trainer_name: str, plans: dict, dataset_json: dict, seed: int, bias_spread: float, background_bias: float
) -> Path:
    """Build the network with nnU-Net's trainer class and write ``fold_0/checkpoint_final.pth`` as it does.

    Returns the trainer folder (``<trainer>__nnUNetPlans__3d_fullres``).
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from umd_lightning.models.totalsegmentator import find_nnunet_trainer

    # nnU-Net's lookup by name, tolerant of trainer modules whose optional imports (timm) fail
    trainer_cls = find_nnunet_trainer(trainer_name)
    model_dir = folder / f"{trainer_name}__{PLANS}__{CONFIGURATION}"
    (model_dir / "fold_0").mkdir(parents=True, exist_ok=True)
    (model_dir / "plans.json").write_text(json.dumps(plans, indent=2))
    (model_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    scratch = folder / "_scratch"
    with _env(nnUNet_results=str(scratch)), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        trainer = trainer_cls(
            plans={**deepcopy(plans), "continue_training": False}, configuration=CONFIGURATION, fold=0,
            dataset_json=deepcopy(dataset_json), device=torch.device("cpu"),
        )  # fmt: skip
        # the network and optimizer part of nnUNetTrainer.initialize (the rest needs preprocessed data)
        torch.manual_seed(seed)
        n_in = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager, dataset_json)
        trainer.network = trainer.build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, n_in,
            trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision,
        )  # fmt: skip
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        trainer.was_initialized = True
        # nnU-Net's init leaves the output biases at zero (logits ~ N(0, 1) here): background gets its
        # own bias; bias_spread > 0 also spreads the others (seeded like the weights)
        with torch.no_grad():
            for head in trainer.network.decoder.seg_layers:
                head.bias.normal_(0.0, bias_spread)
                head.bias[0] = background_bias
        trainer.save_checkpoint(str(model_dir / "fold_0" / "checkpoint_final.pth"))
    shutil.rmtree(scratch, ignore_errors=True)
    return model_dir


def make_totalseg_weights(tmp: Path, tasks: Sequence[str] = ("total",), fast: bool = False, *, seed: int = 0,
                          bias_spread: float = 0.0, features: Sequence[int] = (4, 8, 16)) -> Path:  # fmt: skip
    """A ``TOTALSEG_WEIGHTS_PATH`` folder with random-weight models for the tasks, as downloads unpack.

    Args:
        tmp: folder to create it in (``tmp/totalseg_weights``).
        tasks: ``total`` (datasets 291-295) and/or ``total_mr`` (850-851); the coarse model that
            ``roi_subset`` crops with comes along (298, resp. 852).
        fast: also the 3 mm models (297; 852 for MR).
        seed: torch seed; dataset ``d`` is initialised with ``seed + d``.
        bias_spread: std of the non-background output biases (0: nnU-Net's zeros).
        features: features per stage of the U-Nets.

    Returns:
        The weights folder.
    """
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    root = Path(tmp) / "totalseg_weights"
    for tid, (trainer, spacing, task) in sorted(_task_models(tasks, fast).items()):
        name = TASK_ID_WEIGHTS_CONFIGS[tid]["foldername"]
        mr = task.endswith("_mr")
        dataset_json = {
            "channel_names": {"0": "MRI" if mr else "CT"},
            "labels": _labels(tid, task),
            "numTraining": 0,
            "file_ending": ".nii.gz",
            "name": name,
        }
        bg = BACKGROUND_BIAS.get(tid, DEFAULT_BACKGROUND_BIAS)
        plans = tiny_plans(name, spacing, mr, features)
        save_model(root / name, trainer, plans, dataset_json, seed + tid, bias_spread, bg)
    return root
