"""TotalSegmentator through its Python API on local weights only.

:class:`TotalSegmentatorAdapter` runs ``totalsegmentator.python_api.totalsegmentator`` on local
weights only: the weights folder is checked first and TotalSegmentator's downloader is replaced by
an error for the run, so nothing downloads; every ``torch.load`` inside runs with ``weights_only=True``.

Optional extra: ``umd_lightning[totalsegmentator]``.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.models.adapter import CheckpointError, Prediction, optional_import, weights_only_loading
from umd_lightning.models.foundation import FoundationAdapter, require_path
from umd_lightning.organs import OrganSet

__all__ = ["TotalSegmentatorAdapter"]


class TotalSegmentatorAdapter(FoundationAdapter):
    """TotalSegmentator (CT task ``total`` or MR task ``total_mr``) through its Python API, local weights.

    Args:
        weights_dir: the local nnU-Net results folder holding TotalSegmentator's ``DatasetXXX_*``
            folders (what ``TOTALSEG_WEIGHTS_PATH`` points to).
        name: name in results tables.
        task: ``total`` (CT) or ``total_mr`` (MR); picks the label map of the same name.
        fast: the 3 mm models.
        reported_dice: Dice its paper reports.
        intensity_range: TotalSegmentator takes CT in HU; MR intensities as they are.
        hu_window: the data module's CT window that makes the mapping restore HU.
        target_spacing: None: TotalSegmentator resamples itself.
    """

    def __init__(
        self,
        weights_dir: str,
        name: str = "totalsegmentator",
        task: Literal["total", "total_mr"] = "total",
        fast: bool = False,
        reported_dice: Mapping[str, float] | None = None,
        intensity_range: Sequence[float] | None = (-1000.0, 1000.0),
        hu_window: Sequence[float] | None = (-1000.0, 1000.0),
        target_spacing: Sequence[float] | None = None,
    ) -> None:
        if task not in ("total", "total_mr"):
            raise ValueError(f"TotalSegmentator task must be 'total' or 'total_mr', got {task!r}")
        optional_import("totalsegmentator.python_api", "totalsegmentator", model="TotalSegmentator")
        self.weights_dir = str(require_path(weights_dir, "TotalSegmentator weights folder", is_dir=True))
        super().__init__(
            name,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            intensity_range=intensity_range,
            hu_window=hu_window,
            label_map=task,
        )
        self.task = task
        self.fast = bool(fast)

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        import nibabel as nib

        affine = np.asarray(meta.get("affine", np.diag([*meta.get("spacing", (1.0, 1.0, 1.0)), 1.0])), dtype=np.float64)
        volume = self.to_model_range(image)[0, 0].cpu().numpy().astype(np.float32)
        img = nib.Nifti1Image(volume, affine)
        os.environ["TOTALSEG_WEIGHTS_PATH"] = self.weights_dir
        api = optional_import("totalsegmentator.python_api", "totalsegmentator", model="TotalSegmentator")
        libs = optional_import("totalsegmentator.libs", "totalsegmentator", model="TotalSegmentator")
        weights_dir = self.weights_dir

        def _no_download(task_id: Any, *args: Any, **kwargs: Any) -> None:
            raise CheckpointError(
                f"TotalSegmentator weights for dataset {task_id} are not in {weights_dir}; nothing is downloaded: "
                "place the weights folder there"
            )

        saved = {m: getattr(m, "download_pretrained_weights", None) for m in (api, libs)}
        try:
            for m in saved:
                if saved[m] is not None:
                    m.download_pretrained_weights = _no_download
            with weights_only_loading():
                out = api.totalsegmentator(
                    img,
                    None,
                    task=self.task,
                    fast=self.fast,
                    ml=True,
                    quiet=True,
                    device="gpu" if self.device.type == "cuda" else "cpu",
                    skip_saving=True,
                )
        finally:
            for m, fn in saved.items():
                if fn is not None:
                    m.download_pretrained_weights = fn
        labels = np.asarray(out.dataobj).astype(np.int64)
        return Prediction(labels=self.harmonise(labels, organ_set))
