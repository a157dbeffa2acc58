"""TotalSegmentator through its Python API on local weights only.

:class:`TotalSegmentatorAdapter` writes the case as a NIfTI file with the case's own affine and runs
``totalsegmentator.python_api.totalsegmentator`` on it, so TotalSegmentator applies all of its own
steps (the coarse model that crops to the requested organs, reorientation to canonical, resampling
to 1.5 mm or 3 mm, nnU-Net's normalisation and sliding window, and the way back) to the image in
physical units. Only the classes behind the organ set are asked for (``roi_subset``).

Nothing downloads: the weights folder is checked first and TotalSegmentator's download and
usage-statistics calls are replaced by errors or no-ops for the run; every ``torch.load`` inside runs
with ``weights_only=True``.

Optional extra: ``umd_lightning[totalsegmentator]``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import torch

from umd_lightning.extras import require_extra
from umd_lightning.models.adapter import CheckpointError, Prediction, weights_only_loading
from umd_lightning.models.foundation import FoundationAdapter, require_path
from umd_lightning.organs import OrganSet

__all__ = ["TotalSegmentatorAdapter", "find_nnunet_trainer", "totalseg_environment"]

PREPROCESSING = (
    "TotalSegmentator's own pipeline on the image in physical units, written as a NIfTI file with the case's "
    "affine: a coarse model (6 mm CT, 3 mm MR) crops to the 13 organs' classes (roi_subset), then canonical "
    "orientation, linear resampling to 1.5 mm (3 mm with fast) cast to integers (a PET's SUVs truncate to whole "
    "numbers), nnU-Net's normalisation (CT: clip and z-score; MR: z-score) and sliding window, nearest-neighbour "
    "back to the input grid"
)
# environment variables TotalSegmentator sets for nnU-Net and never restores
_ENV_KEYS = ("TOTALSEG_WEIGHTS_PATH", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_TRAINERS: dict[str, type] = {}


def find_nnunet_trainer(name: str) -> type:
    """nnU-Net's trainer class ``name``, skipping trainer modules whose optional imports fail.

    nnU-Net's own lookup imports every module under ``nnunetv2.training.nnUNetTrainer`` in turn and
    stops at the first ImportError; its Primus trainers import timm, which needs torchvision, so without
    torchvision every trainer outside ``nnUNetTrainer.py`` (TotalSegmentator's ``...NoMirroring``
    trainers) is unreachable. This walk finds the same class.
    """
    import nnunetv2.training.nnUNetTrainer as package

    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=lambda _: None):
        if info.ispkg:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    raise RuntimeError(f"nnU-Net has no trainer class {name!r} (searched {package.__name__})")


@contextlib.contextmanager
def totalseg_environment(
    weights_dir: str | Path | None = None, *, threads: int | None = None, in_process: bool = True
) -> Iterator[None]:
    """What a local, offline TotalSegmentator run needs around ``python_api.totalsegmentator``.

    - ``TOTALSEG_WEIGHTS_PATH`` points at ``weights_dir`` (when given); it and the nnU-Net paths that
      TotalSegmentator sets are restored afterwards.
    - Its downloaders raise :class:`CheckpointError` (nothing is fetched), and the usage statistics it
      posts after each run are not sent.
    - nnU-Net's trainer lookup falls back to :func:`find_nnunet_trainer` when an optional import fails.
    - On the CPU, TotalSegmentator sets torch's threads to ``multiprocessing.cpu_count()`` (the whole
      host); here it gets ``threads`` (default: torch's current count), restored afterwards.
    - ``in_process``: nnU-Net's ``predict_from_files`` runs as its ``predict_from_files_sequential``
      (the same preprocessing, prediction and export of each case, in this process). For one image the
      worker processes it otherwise spawns per model (a fresh interpreter importing torch, twice per
      model, four models per run with ``roi_subset``) cost more CPU than the tiny prediction itself.
    """
    import multiprocessing

    api = require_extra("totalsegmentator.python_api", "totalsegmentator", needed_by="TotalSegmentator")
    libs = require_extra("totalsegmentator.libs", "totalsegmentator", needed_by="TotalSegmentator")
    tnn = require_extra("totalsegmentator.nnunet", "totalsegmentator", needed_by="TotalSegmentator")
    where = str(weights_dir) if weights_dir is not None else "TOTALSEG_WEIGHTS_PATH"

    def no_download(*args: Any, **kwargs: Any) -> None:
        target = args[1] if len(args) > 1 else kwargs.get("config_dir", where)
        raise CheckpointError(
            f"TotalSegmentator weights missing under {target}; nothing is downloaded: place the weights folder there"
        )

    nnunet_lookup = tnn.recursive_find_trainer_class_by_name

    def trainer_lookup(name: str) -> type:
        # cached: without torchvision each failed lookup re-imports timm before failing
        if name not in _TRAINERS:
            try:
                _TRAINERS[name] = nnunet_lookup(name)
            except ImportError:
                _TRAINERS[name] = find_nnunet_trainer(name)
        return _TRAINERS[name]

    def sequential(self: Any, list_of_lists_or_source_folder: Any, output_folder_or_list_of_truncated_output_files: Any,
                   save_probabilities: bool = False, overwrite: bool = True, num_processes_preprocessing: int = 1,
                   num_processes_segmentation_export: int = 1, folder_with_segs_from_prev_stage: Any = None,
                   num_parts: int = 1, part_id: int = 0, **kwargs: Any) -> Any:  # fmt: skip
        if num_parts != 1 or part_id != 0:
            raise ValueError("TotalSegmentator in-process prediction handles one part only")
        if isinstance(list_of_lists_or_source_folder, (str, os.PathLike)):
            # nnU-Net's own listing of the input folder, without the pool of 12 processes it uses for it
            from batchgenerators.utilities.file_and_folder_operations import subfiles
            from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

            folder, ending = str(list_of_lists_or_source_folder), self.dataset_json["file_ending"]
            files = subfiles(folder, suffix=ending, join=False, sort=True)
            ids = get_identifiers_from_splitted_dataset_folder(folder, ending)
            list_of_lists_or_source_folder = [create_paths_fn(folder, files, ending, f) for f in ids]
        return self.predict_from_files_sequential(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files, save_probabilities,
            overwrite, folder_with_segs_from_prev_stage, **kwargs,
        )  # fmt: skip

    n_threads = int(threads or torch.get_num_threads())
    saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    patches = [
        (libs, "download_url_and_unpack", no_download),
        (libs, "download_model_with_license_and_unpack", no_download),
        (api, "send_usage_stats", lambda *a, **k: None),
        (tnn, "recursive_find_trainer_class_by_name", trainer_lookup),
        (multiprocessing, "cpu_count", lambda: n_threads),
    ]
    if in_process:
        patches.append((tnn.nnUNetPredictor, "predict_from_files", sequential))
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        if weights_dir is not None:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights_dir)
        for obj, attr, new in patches:
            setattr(obj, attr, new)
        with weights_only_loading():
            yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(n_threads)


class TotalSegmentatorAdapter(FoundationAdapter):
    """TotalSegmentator (CT task ``total`` or MR task ``total_mr``) through its Python API, local weights.

    Args:
        weights_dir: the local nnU-Net results folder holding TotalSegmentator's ``DatasetXXX_*``
            folders (what ``TOTALSEG_WEIGHTS_PATH`` points to).
        name: name in results tables.
        task: ``total`` (CT) or ``total_mr`` (MR); picks the label map of the same name.
        fast: the 3 mm models (297; 852 for MR).
        reported_dice: Dice its paper reports.
        target_spacing: None: TotalSegmentator resamples itself.
        threads: CPU threads for torch during the run (default: the current count).
    """

    def __init__(
        self,
        weights_dir: str,
        name: str = "totalsegmentator",
        task: Literal["total", "total_mr"] = "total",
        fast: bool = False,
        reported_dice: Mapping[str, float] | None = None,
        target_spacing: Any = None,
        threads: int | None = None,
    ) -> None:
        if task not in ("total", "total_mr"):
            raise ValueError(f"TotalSegmentator task must be 'total' or 'total_mr', got {task!r}")
        require_extra("totalsegmentator.python_api", "totalsegmentator", needed_by="TotalSegmentator")
        self.weights_dir = str(require_path(weights_dir, "TotalSegmentator weights folder", is_dir=True))
        super().__init__(
            name,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            label_map=task,
            preprocessing=PREPROCESSING,
        )
        self.task = task
        self.fast = bool(fast)
        self.threads = threads

    def required_datasets(self) -> list[str]:
        """The weights folders a run with ``roi_subset`` opens (its models and the coarse cropping model)."""
        from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS

        modes = TASK_CONFIGS[self.task]["sub_modes"]
        ids = modes["fast" if self.fast else "default"]["task_id"]
        ids = list(ids) if isinstance(ids, list) else [ids]
        ids.append(modes["fast" if self.task.endswith("_mr") else "fastest"]["task_id"])  # roi_subset's crop
        return [TASK_ID_WEIGHTS_CONFIGS[i]["foldername"] for i in dict.fromkeys(ids)]

    def roi_subset(self, organ_set: OrganSet) -> list[str]:
        """TotalSegmentator's class names behind the organ set's organs (its ``roi_subset``)."""
        from totalsegmentator.map_to_binary import class_map

        assert self.label_map is not None
        names = class_map[self.task]
        wanted = set(organ_set.organs)
        return [names[int(k)] for k, organ in self.label_map.mapping.items() if organ in wanted]

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        import nibabel as nib

        missing = [d for d in self.required_datasets() if not (Path(self.weights_dir) / d).is_dir()]
        if missing:
            raise CheckpointError(
                f"TotalSegmentator weights folder {self.weights_dir} lacks {', '.join(missing)} "
                f"(task {self.task}{', fast' if self.fast else ''}); nothing is downloaded"
            )
        shape = tuple(int(s) for s in image.shape[-3:])
        rois = self.roi_subset(organ_set)
        if not rois:
            return Prediction(labels=torch.zeros(shape, dtype=torch.uint8))
        affine = meta.get("affine")
        if affine is None:
            affine = np.diag([*(float(s) for s in meta.get("spacing", (1.0, 1.0, 1.0))), 1.0])
        affine = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
        volume = np.ascontiguousarray(image[0, 0].detach().cpu().numpy(), dtype=np.float32)
        api = require_extra("totalsegmentator.python_api", "totalsegmentator", needed_by="TotalSegmentator")
        with tempfile.TemporaryDirectory(prefix="umd_totalseg_") as tmp:
            # a file, as a user would hand it: TotalSegmentator reads the geometry from its header
            path = Path(tmp) / "image.nii"
            nib.save(nib.Nifti1Image(volume, affine), path)
            with totalseg_environment(self.weights_dir, threads=self.threads):
                out = api.totalsegmentator(
                    path,
                    None,
                    task=self.task,
                    fast=self.fast,
                    roi_subset=rois,
                    ml=True,
                    quiet=True,
                    nr_thr_saving=1,
                    device="gpu" if self.device.type == "cuda" else "cpu",
                    skip_saving=True,
                )
            labels = np.asarray(out.dataobj).astype(np.int64)
        if labels.shape != shape:
            raise RuntimeError(f"TotalSegmentator returned shape {labels.shape} for an input of shape {shape}")
        return Prediction(labels=self.harmonise(labels, organ_set))
