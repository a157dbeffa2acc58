"""nnInteractive through its package, prompted with simulated clicks (and optionally boxes).

The session API of the ``nninteractive`` package: ``set_image`` once per volume, then per organ
``reset_interactions`` and one ``add_point_interaction`` / ``add_bbox_interaction`` per prompt; the
organ's mask is the session's target buffer. Corrective clicks are added to the same session, one at
a time, as a user would. Every ``torch.load`` inside the package runs with ``weights_only=True``.

Optional extra: ``pip install 'umd_lightning[nninteractive]'``; the model folder (the one holding
``nnInteractive_v1.0``'s ``plans.json`` and ``fold_0``) must be local.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.models.adapter import optional_import, weights_only_loading
from umd_lightning.models.foundation import PromptedAdapter, Region, require_path
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator

__all__ = ["NnInteractiveAdapter"]


class NnInteractiveAdapter(PromptedAdapter):
    """nnInteractive (oracle point or box prompts).

    Args:
        model_folder: local nnInteractive model folder.
        name: name in results tables.
        prompts: prompt simulator settings.
        target_spacing: None: nnInteractive works on the image's own grid.
        reported_dice: Dice its paper reports.
        intensity_range: nnInteractive normalises intensities itself (None = as given).
    """

    def __init__(
        self,
        model_folder: str,
        name: str = "nninteractive",
        prompts: PromptSimulator | Mapping[str, Any] | None = None,
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        intensity_range: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            name, prompts=prompts, target_spacing=target_spacing, reported_dice=reported_dice, intensity_range=intensity_range
        )
        optional_import("nnInteractive.inference.inference_session", "nninteractive", model="nnInteractive")
        self.model_folder = str(require_path(model_folder, "nnInteractive model folder", is_dir=True))
        self._session: Any = None

    def _make_session(self) -> Any:
        module = optional_import("nnInteractive.inference.inference_session", "nninteractive", model="nnInteractive")
        session = module.nnInteractiveInferenceSession(
            device=self.device,
            use_torch_compile=False,
            verbose=False,
            torch_n_threads=os.cpu_count() or 1,
            do_autozoom=True,
            use_pinned_memory=self.device.type == "cuda",
        )
        with weights_only_loading():
            session.initialize_from_trained_model_folder(self.model_folder)
        return session

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> Any:
        if self._session is None:
            self._session = self._make_session()
        volume = self.to_model_range(image)[0].cpu().numpy().astype(np.float32)  # (1, D, H, W)
        self._session.set_image(volume)
        target = torch.zeros(volume.shape[1:], dtype=torch.uint8)
        self._session.set_target_buffer(target)
        return target

    def segment_organ(
        self, prepared: torch.Tensor, prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        session = self._session
        sent = 0 if previous is None else int(previous)
        if previous is None:
            session.reset_interactions()
            if prompts.box is not None:
                box = [[lo, hi + 1] for lo, hi in zip(prompts.box.lo, prompts.box.hi)]
                session.add_bbox_interaction(box, include_interaction=True)
        for p in prompts.points[sent:]:
            session.add_point_interaction(tuple(int(c) for c in p.coords), include_interaction=bool(p.positive))
        mask = session.target_buffer.clone().float()
        # a binary mask as scores: inside +0.5, outside -0.5
        return None, mask - 0.5, len(prompts.points)
