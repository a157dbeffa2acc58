"""A real nnU-Net v2 trained-model folder, made by nnU-Net's own code, with random weights.

:func:`make_nnunet_model_folder` writes a tiny raw dataset from the synthetic cohort (nnU-Net raw format),
runs nnU-Net's fingerprint extraction and experiment planning on it (``plan_and_preprocess --no_pp``
through the Python API), shrinks the planned network (fewer stages and features, as an edited plans.json
may), builds it with ``nnUNetTrainer.initialize()`` (seeded, nnU-Net's own weight init) and saves it with
``nnUNetTrainer.save_checkpoint`` as ``fold_0/checkpoint_final.pth``, next to ``dataset.json`` and
``plans.json`` as training leaves them: the folder looks like a downloaded model.

The dataset.json label ids are the organ set's in reverse order (``urinary_bladder`` 1 .. ``brain`` 13), so
that a comparison with our labels goes through the adapter's label map rather than by coincidence.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence

import nibabel as nib
import numpy as np
import torch

from umd_lightning.data.manifest import Manifest, read_manifest
from umd_lightning.data.nnunet_export import write_on_label_grid
from umd_lightning.organs import UMD13, VIEW_SESSION

#: nnU-Net channel name of each view (``CT`` selects nnU-Net's CT normalisation, the others z-score).
CHANNEL_NAME = {"CT": "CT", "MRI": "MRI", "PET_CT": "PET", "PET_MRI": "PET"}
#: Seconds each nnU-Net planning took (reported by the tests).
PLANNING_SECONDS: list[float] = []
#: Foreground intensities the fingerprint draws (nnU-Net: 10^8; see :func:`fingerprint_extractor_class`).
FINGERPRINT_SAMPLES = 100_000
ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextlib.contextmanager
def nnunet_env(root: Path) -> Iterator[dict[str, Path]]:
    """nnU-Net's three folders under ``root``, set in the environment for the duration (nnunetv2 reads it per call)."""
    paths = {name: root / name for name in ENV}
    old = {name: os.environ.get(name) for name in ENV}
    for name, p in paths.items():
        p.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(p)
    try:
        yield paths
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reversed_labels() -> dict[str, int]:
    """dataset.json labels: background 0, then the umd13 organs with ids in reverse order."""
    n = max(UMD13.labels)
    return {"background": 0, **{UMD13.labels[i]: n + 1 - i for i in sorted(UMD13.labels, reverse=True)}}


def raw_dataset_folder(tmp: Path, dataset_id: int) -> Path:
    """The raw dataset :func:`make_nnunet_model_folder` wrote for ``dataset_id`` (images on the label grid)."""
    return next((tmp / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"))


def write_raw_dataset(
    raw: Path, manifest: Manifest, views: Sequence[str], dataset_id: int, subjects: Sequence[str] | None = None
) -> Path:
    """``raw/DatasetXXX_Syn/`` with one case per subject: its ``views`` as channels, on the label grid."""
    folder = raw / f"Dataset{dataset_id:03d}_Syn{''.join(v.replace('_', '') for v in views)}"
    by_key = {(r.subject_id, r.view): r for r in manifest}
    subjects = sorted(subjects or {r.subject_id for r in manifest})
    n = max(UMD13.labels)
    for subject in subjects:
        recs = [by_key[(subject, v)] for v in views]
        label = Path(recs[0].label)
        case = f"{subject}_{VIEW_SESSION[views[0]]}"
        for ch, rec in enumerate(recs):
            write_on_label_grid(Path(rec.image), label, folder / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        ref = nib.load(str(label))
        ids = np.asarray(ref.dataobj).astype(np.uint8)
        relabelled = np.where(ids > 0, n + 1 - ids, 0).astype(np.uint8)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(relabelled, ref.affine, ref.header), str(folder / "labelsTr" / f"{case}.nii.gz"))
    dataset_json = {
        "channel_names": {str(i): CHANNEL_NAME[v] for i, v in enumerate(views)},
        "labels": reversed_labels(),
        "numTraining": len(subjects),
        "file_ending": ".nii.gz",
        "name": folder.name,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def shrink_plans(plans: dict, configuration: str, features: Sequence[int]) -> dict:
    """Keep the first ``len(features)`` stages of the planned U-Net with these widths (patch size stays divisible)."""
    arch = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    n = min(len(features), int(arch["n_stages"]))
    arch["n_stages"] = n
    arch["features_per_stage"] = [int(f) for f in features[:n]]
    for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
        arch[key] = list(arch[key])[:n]
    arch["n_conv_per_stage_decoder"] = list(arch["n_conv_per_stage_decoder"])[: n - 1]
    return plans


def fingerprint_extractor_class(samples: int = FINGERPRINT_SAMPLES) -> type:
    """nnU-Net's DatasetFingerprintExtractor drawing ``samples`` foreground intensities in all instead of 1e8.

    nnU-Net's default draws 10^8 intensities per channel whatever the dataset size (about a minute on two
    cores); the percentiles, mean and std it derives from 10^5 differ in the third digit. Fingerprint
    extractors are nnU-Net's own extension point (``nnUNetv2_plan_and_preprocess -fpe NAME``).
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    class FewSamplesFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = int(samples)

    return FewSamplesFingerprintExtractor


def plan_dataset(
    dataset_id: int, *, verbose: bool = False, samples: int = FINGERPRINT_SAMPLES, check_integrity: bool = False
) -> Path:
    """nnU-Net's fingerprint extraction and planning (``nnUNetv2_plan_and_preprocess --no_pp``, with
    ``--verify_dataset_integrity`` when ``check_integrity``); the plans file."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiment_dataset

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        extract_fingerprint_dataset(dataset_id, fingerprint_extractor_class(samples), num_processes=1,
                                    check_dataset_integrity=check_integrity, clean=True, verbose=False, show_progress_bar=False)
        _, plans_identifier = plan_experiment_dataset(dataset_id)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    return Path(os.environ["nnUNet_preprocessed"]) / convert_id_to_dataset_name(dataset_id) / f"{plans_identifier}.json"


def make_nnunet_model_folder(
    tmp: Path,
    manifest: str | Path | Manifest,
    *,
    views: Sequence[str] = ("CT",),
    dataset_id: int = 990,
    subjects: Sequence[str] | None = None,
    features: Sequence[int] = (4, 8, 16),
    configuration: str = "3d_fullres",
    seed: int = 0,
    fold: int = 0,
    verbose: bool = False,
) -> Path:
    """A trained-model folder ``tmp/nnUNet_results/DatasetXXX_.../nnUNetTrainer__nnUNetPlans__3d_fullres``.

    Args:
        tmp: where nnU-Net's raw, preprocessed and results folders go.
        manifest: the cohort (a manifest file, e.g. the ``tiny_cohort`` fixture, or a Manifest).
        views: the model's input channels, one view each (``("CT",)``, ``("PET_CT",)``, ``("CT", "PET_CT")``:
            dataset.json channel names CT / PET; a PET is written on its label grid, as nnU-Net needs).
        dataset_id: nnU-Net dataset id (one per model in one ``tmp``).
        subjects: the training cases (default: every subject).
        features: widths of the stages kept from the planned network (its depth is cut to their number).
        configuration: the planned configuration to build.
        seed: torch seed of nnU-Net's weight init.
        fold: the fold folder written.
        verbose: show nnU-Net's planning output.

    Returns:
        The model folder (``dataset.json``, ``plans.json``, ``fold_<fold>/checkpoint_final.pth``); the raw
        dataset is :func:`raw_dataset_folder` ``(tmp, dataset_id)``.
    """
    tmp = Path(tmp)
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    with nnunet_env(tmp) as paths:
        raw = write_raw_dataset(paths["nnUNet_raw"], manifest, views, dataset_id, subjects)
        t0 = time.perf_counter()
        plans_file = plan_dataset(dataset_id, verbose=verbose)
        PLANNING_SECONDS.append(time.perf_counter() - t0)
        return model_folder_from_plans(plans_file, raw, configuration=configuration, features=features, seed=seed,
                                       fold=fold, verbose=verbose)


def model_folder_from_plans(
    plans_file: Path,
    raw_dataset: Path,
    *,
    configuration: str = "3d_fullres",
    features: Sequence[int] = (4, 8, 16),
    seed: int = 0,
    fold: int = 0,
    verbose: bool = False,
) -> Path:
    """The random-weight model folder of a planned dataset (nnU-Net's env folders set, see :func:`nnunet_env`).

    The plans are shrunk (:func:`shrink_plans`, written back), the network is built and saved by
    ``nnUNetTrainer`` (seeded) as ``fold_<fold>/checkpoint_final.pth`` with plans.json, dataset.json and
    the fingerprint beside it, as training leaves them.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans = shrink_plans(json.loads(plans_file.read_text()), configuration, features)
    plans_file.write_text(json.dumps(plans, indent=2))
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    torch.manual_seed(seed)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        plans["continue_training"] = False  # as nnunetv2.run.run_training.get_trainer_from_args sets it
        trainer = nnUNetTrainer(plans, configuration, fold, dataset_json, device=torch.device("cpu"))
        # the network and optimizer as trainer.initialize() makes them (initialize() itself also wants
        # preprocessed training data, which --no_pp does not write)
        trainer.num_input_channels = determine_num_input_channels(
            trainer.plans_manager, trainer.configuration_manager, dataset_json
        )
        trainer.network = trainer.build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision,
        ).to(trainer.device)
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirroring axes
        folder = Path(trainer.output_folder_base)
        # what nnUNetTrainer.on_train_start leaves beside the folds
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(trainer.plans_manager.plans, indent=2))
        (folder / "dataset.json").write_text(json.dumps(trainer.dataset_json, indent=2))
        shutil.copyfile(plans_file.parent / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
        trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    return folder


__all__ = ["make_nnunet_model_folder", "model_folder_from_plans", "nnunet_env", "raw_dataset_folder", "reversed_labels", "plan_dataset", "shrink_plans"]
