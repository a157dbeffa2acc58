"""A random-weight nnInteractive model folder, laid out the way the released ``nnInteractive_v1.0`` is.

The released folder holds ``plans.json``, ``dataset.json``, ``inference_session_class.json`` and
``fold_0/checkpoint_final.pth`` (a dict with ``network_weights``, ``init_args``, ``trainer_name`` =
``nnInteractiveTrainer_stub`` after the package's own ``cleanse_checkpoint_for_release``, and nnU-Net's
training bookkeeping). The network here is built by the package's own trainer class
(``nnInteractiveTrainer_stub.build_network_architecture``, i.e. nnU-Net's ``get_network_from_plans``)
from tiny ResEnc plans in the released format (3 stages, 32^3 patch, 2 outputs, one image channel plus
the 7 interaction channels of the v1 capability defaults); weights are nnU-Net's He init, seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONFIGURATION = "3d_fullres_ps96x64x64_bs2"
TRAINER = "nnInteractiveTrainer_stub"
#: v1 checkpoints: interaction channels prev_seg, bbox +/-, points +/-, scribble +/- (legacy capability).
N_INTERACTION_CHANNELS = 7


def tiny_plans(patch_size: tuple[int, int, int] = (96, 64, 64), features: tuple[int, ...] = (4, 8, 16)) -> dict:
    """nnU-Net ResEnc plans in the layout of nnInteractive's released ``plans.json``, shrunk."""
    n = len(features)
    return {
        "dataset_name": "Dataset999_umdTinyInteractive",
        "plans_name": "nnUNetResEncUNetLPlans_noResampling",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch_size),
                "median_image_size_in_voxels": [64, 64, 64],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                    "arch_kwargs": {
                        "n_stages": n,
                        "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                        "n_blocks_per_stage": [1] * n,
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
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "nnUNetPlannerResEncL",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3000.0, "mean": 50.0, "median": 40.0, "min": -1000.0,
                  "percentile_00_5": -900.0, "percentile_99_5": 1500.0, "std": 300.0}
        },
    }


def make_nninteractive_model_folder(tmp: Path, seed: int = 0, foreground_bias: float = 0.0) -> Path:
    """Write ``tmp/nnInteractive_tiny`` (plans, dataset.json, session settings, fold_0 checkpoint).

    Args:
        tmp: parent folder.
        seed: torch seed of the network's initialisation.

    Returns:
        The model folder (what ``initialize_from_trained_model_folder`` takes).
    """
    from nnInteractive.trainer.nnInteractiveTrainer import nnInteractiveTrainer_stub
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(tmp) / "nnInteractive_tiny"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = tiny_plans()
    dataset = {
        "channel_names": {"0": "any"},
        "labels": {"background": 0, "target": 1},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    # the v1 release's settings file (the package reads it as legacy capability metadata)
    settings = {"point_radius": 4, "preferred_scribble_thickness": [2, 2, 2], "interaction_decay": 0.9}
    (folder / "inference_session_class.json").write_text(json.dumps(settings, indent=2))
    (folder / "LICENSE").write_text("Apache-2.0\nrandom weights for umd_lightning's tests\n")

    pm = PlansManager(plans)
    cm = pm.get_configuration(CONFIGURATION)
    torch.manual_seed(seed)
    net = nnInteractiveTrainer_stub.build_network_architecture(
        pm, cm, 1 + N_INTERACTION_CHANNELS, 2, enable_deep_supervision=False
    )
    with torch.no_grad():  # the output layer's bias sets how much of a patch the random net calls foreground
        net.decoder.seg_layers[-1].bias[1] += float(foreground_bias)
    checkpoint = {
        "network_weights": net.state_dict(),
        "grad_scaler_state": None,
        "logging": {"train_losses": [np.float64(-0.5)], "val_losses": [np.float64(-0.4)], "lrs": [1e-3]},
        "_best_ema": None,
        "current_epoch": 1,
        # cleanse_checkpoint_for_release drops optimizer_state and init_args["dataset_json"]
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": 0, "device": torch.device("cpu")},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder
