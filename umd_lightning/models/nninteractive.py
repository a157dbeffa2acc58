"""nnInteractive through its package's own inference session, prompted with simulated clicks (or 2D boxes).

The session API of the ``nninteractive`` package, driven as its README drives it: ``set_image`` once
per volume (the image raw: the session z-scores it itself over the image's nonzero bounding box; no
window, no resampling), ``set_target_buffer``, then per organ ``reset_interactions`` and one
``add_bbox_interaction`` / ``add_point_interaction`` per prompt; the organ's mask is the session's
target buffer. Corrective clicks are added to the same session one at a time, as a user would.

Axes: nnInteractive's README reads a file with SimpleITK and hands the session
``GetArrayFromImage(image)[None]``: the file's voxels in storage order, axes reversed (z, y, x), never
reoriented. Our volumes are RAS on the label's grid, so the adapter puts them back into the label
file's storage order (from ``meta["label_path"]``'s header and ``meta["affine"]``) and reverses the
axes; prompts go the same way and the mask comes back. Without a readable label file the RAS volume
is handed over as (z, y, x), which is what SimpleITK gives for a RAS-stored file.

Boxes: the released model takes only 2D boxes (one axis of width 1); box prompts are simulated on
one slice, by default the axial slice through the organ's centre point (``box_slice_axis: 2``).

The checkpoint is read with ``torch.load(weights_only=True)`` (the package itself asks for
``weights_only=False``); nothing is downloaded: the model folder (the released ``nnInteractive_v1.0``
folder: ``plans.json``, ``dataset.json``, ``inference_session_class.json``, ``fold_0``) must be local.

Optional extra: ``pip install 'umd_lightning[nninteractive]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.extras import require_extra
from umd_lightning.models.adapter import CheckpointError, weights_only_loading
from umd_lightning.models.file_axes import SessionAxes
from umd_lightning.models.foundation import PromptedAdapter, Region, require_path
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator

__all__ = ["NnInteractiveAdapter"]

PREPROCESSING = (
    "nnInteractive's own: the image raw, in the file's storage order as its README reads it with SimpleITK; "
    "the session z-scores it over its nonzero bounding box and works on the image's own grid (no resampling)"
)


class NnInteractiveAdapter(PromptedAdapter):
    """nnInteractive (oracle point or 2D box prompts) through ``nnInteractiveInferenceSession``.

    Args:
        model_folder: local nnInteractive model folder (the one holding ``plans.json`` and ``fold_0``).
        name: name in results tables.
        prompts: prompt simulator settings; boxes are 2D (``box_slice_axis`` 2, axial, unless set).
        target_spacing: None: nnInteractive works on the image's own grid.
        reported_dice: Dice its paper reports.
        do_autozoom: the session's AutoZoom (on in nnInteractive's README).
        torch_n_threads: threads the session sets for torch (it calls ``torch.set_num_threads``);
            None = torch's current setting, so the run's setting is kept.
        quiet: swallow the session's progress prints.
    """

    def __init__(
        self,
        model_folder: str,
        name: str = "nninteractive",
        prompts: PromptSimulator | Mapping[str, Any] | None = None,
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        do_autozoom: bool = True,
        torch_n_threads: int | None = None,
        quiet: bool = True,
    ) -> None:
        simulator = prompts if isinstance(prompts, PromptSimulator) else PromptSimulator(**dict(prompts or {}))
        if simulator.boxes and simulator.box_slice_axis is None:
            # the released checkpoint rejects 3D boxes; a user draws the box on one (axial) slice
            simulator = dataclasses.replace(simulator, box_slice_axis=2)
        super().__init__(
            name,
            prompts=simulator,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            preprocessing=PREPROCESSING,
        )
        require_extra("nnInteractive.inference.inference_session", "nninteractive", needed_by="nnInteractive")
        self.model_folder = str(require_path(model_folder, "nnInteractive model folder", is_dir=True))
        if not (Path(self.model_folder) / "plans.json").is_file():
            raise CheckpointError(f"{self.model_folder}: no plans.json (not an nnInteractive model folder)")
        self.do_autozoom = bool(do_autozoom)
        self.torch_n_threads = torch_n_threads
        self.quiet = bool(quiet)
        self._session: Any = None
        self._axes = SessionAxes()

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        if not self.quiet:
            yield
            return
        with contextlib.redirect_stdout(io.StringIO()):
            yield

    def _make_session(self) -> Any:
        module = require_extra("nnInteractive.inference.inference_session", "nninteractive", needed_by="nnInteractive")
        with self._quiet():
            session = module.nnInteractiveInferenceSession(
                device=self.device,
                use_torch_compile=False,
                verbose=False,
                torch_n_threads=int(self.torch_n_threads or torch.get_num_threads()),
                do_autozoom=self.do_autozoom,
            )
            try:
                with weights_only_loading():
                    session.initialize_from_trained_model_folder(self.model_folder)
            except Exception as exc:  # noqa: BLE001 - a missing file, a key, a pickle the allow-list refuses
                first = (str(exc).strip().splitlines() or [""])[0]
                raise CheckpointError(
                    f"{self.model_folder}: cannot load the nnInteractive model ({type(exc).__name__}: {first})"
                ) from exc
        return session

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> Any:
        if image.shape[1] != 1:
            raise ValueError(f"{self.info.name} takes one image channel, got {image.shape[1]}")
        if self._session is None:
            self._session = self._make_session()
        self._axes = SessionAxes.from_meta(meta, image.shape[-3:])
        volume = self._axes.to_session(image[0, 0].cpu().numpy().astype(np.float32, copy=False))
        with self._quiet():
            self._session.set_image(volume[None])
            target = torch.zeros(volume.shape, dtype=torch.uint8)
            self._session.set_target_buffer(target)
        return target

    def segment_organ(
        self, prepared: torch.Tensor, prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        session, axes = self._session, self._axes
        sent = 0 if previous is None else int(previous)
        with self._quiet():
            if previous is None:
                session.reset_interactions()
                if prompts.box is not None:
                    session.add_bbox_interaction(axes.box(prompts.box.lo, prompts.box.hi), include_interaction=True)
            for p in prompts.points[sent:]:
                session.add_point_interaction(axes.point(p.coords), include_interaction=bool(p.positive))
        mask = torch.from_numpy(axes.from_session(session.target_buffer.numpy()))
        # a binary mask as scores: inside +0.5, outside -0.5
        return None, mask.float() - 0.5, len(prompts.points)
