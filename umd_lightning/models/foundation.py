"""What foundation-model adapters share: label harmonisation, the prompted loop.

A foundation model answers in its own vocabulary (TotalSegmentator ids, VISTA3D class ids, text
names); a :class:`~umd_lightning.organs.LabelMap` (a YAML file in ``umd_lightning/labelmaps``) maps
it onto organ names. Organs the vocabulary cannot name are reported by :meth:`organs_predicted` and
scored ``not_predicted``, never as Dice 0.

Prompted models segment one organ at a time; :class:`ScoreAccumulator` merges their per-organ
scores into one label map with one float and one uint8 volume of memory, whatever the organ count.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from umd_lightning.models.adapter import (
    DEFAULT_MODALITY_POLICY,
    AdapterInfo,
    CheckpointError,
    Prediction,
    PromptKind,
    check_channels,
)
from umd_lightning.models.prompts import OrganPrompts, PromptSimulator, prompts_to_records
from umd_lightning.organs import LabelMap, OrganSet, load_label_map

__all__ = [
    "FoundationAdapter",
    "PromptedAdapter",
    "ScoreAccumulator",
    "label_map_from_names",
    "normalise_name",
    "require_path",
]

Region = tuple[slice, slice, slice]


def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces: ``Kidney_Left`` -> ``kidney left``."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(name))).strip().lower()


def label_map_from_names(names: Mapping[int, str], *, name: str, source: str, synonyms: str = "text_names") -> LabelMap:
    """A label map for a model whose output ids carry names (nnU-Net ``dataset.json``, bundle metadata).

    Each name is looked up, normalised, in the ``synonyms`` label map (text -> organ); names it does
    not know (``kidney`` without a side, vertebrae, ...) map to nothing and so stay "not predicted".

    Args:
        names: ``{output id: name}``; id 0 (background) is ignored.
        name: the new map's name.
        source: where the names come from (a file path).
        synonyms: label map of text names (default ``text_names``).
    """
    table = {normalise_name(k): v for k, v in load_label_map(synonyms).mapping.items() if isinstance(k, str)}
    mapping: dict[int | str, str] = {}
    for idx, text in names.items():
        organ = table.get(normalise_name(text))
        if int(idx) != 0 and organ is not None:
            mapping[int(idx)] = organ
    return LabelMap(name=name, source=source, mapping=mapping)


def require_path(path: str | Path | None, what: str, *, is_dir: bool = False) -> Path:
    """A local file or folder a model needs, or a one-line :class:`CheckpointError` naming it."""
    if path in (None, "", "???"):
        raise CheckpointError(f"{what}: no path given (set it in the model config)")
    p = Path(str(path)).expanduser()
    ok = p.is_dir() if is_dir else p.is_file()
    if not ok:
        kind = "folder" if is_dir else "file"
        raise CheckpointError(f"{what} not found: {p} (expected a local {kind}; nothing is downloaded)")
    return p


class ScoreAccumulator:
    """Per-voxel running best score over organs; a voxel keeps the organ with the highest score above
    ``threshold`` (0 for logits), else background. NaN (voxels a window did not reach) never wins.

    Args:
        shape: (D, H, W) of the label map.
        threshold: the score a voxel must beat to leave background.
    """

    def __init__(self, shape: Sequence[int], threshold: float = 0.0) -> None:
        self.best = torch.full(tuple(int(s) for s in shape), float(threshold), dtype=torch.float32)
        self.labels = torch.zeros(tuple(int(s) for s in shape), dtype=torch.uint8)

    def add(self, label: int, scores: torch.Tensor, region: Region | None = None) -> None:
        """scores: (D', H', W') over ``region`` of the volume (the whole volume when None)."""
        region = region or (slice(None),) * 3
        best, labels = self.best[region], self.labels[region]
        s = torch.nan_to_num(scores.detach().to("cpu", torch.float32), nan=-torch.inf)
        if s.shape != best.shape:
            raise ValueError(f"scores of shape {tuple(s.shape)} do not fit the region of shape {tuple(best.shape)}")
        win = s > best
        best[win] = s[win]
        labels[win] = int(label)


class FoundationAdapter(nn.Module):
    """Base of adapters whose model has its own vocabulary; an ``nn.Module`` so Lightning moves it.

    Args:
        name: the model's name in results tables.
        prompt_kind: how it is prompted.
        oracle: whether its prompts come from the reference label.
        target_spacing: spacing (mm) the volumes are resampled to first.
        reported_dice: Dice its paper reports, per view or ``overall``.
        label_map: name or YAML path of the vocabulary -> organ map; None = the model's ids are the
            organ set's ids.
        preprocessing: the model's own preprocessing in words (stated in results metadata).
        modality_policy: how a scan of another modality than the model's enters it.
        channels: per input channel ``anatomical`` or ``PET`` (multi-channel models); empty = one.
    """

    def __init__(
        self,
        name: str,
        *,
        prompt_kind: PromptKind = "automatic",
        oracle: bool = False,
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        label_map: str | LabelMap | None = None,
        preprocessing: str = "",
        modality_policy: str = DEFAULT_MODALITY_POLICY,
        channels: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.label_map: LabelMap | None = (
            label_map if isinstance(label_map, LabelMap) or label_map is None else load_label_map(str(label_map))
        )
        self.info = AdapterInfo(
            name=name,
            prompt_kind=prompt_kind,
            oracle=oracle,
            target_spacing=None if target_spacing is None else tuple(float(s) for s in target_spacing),
            reported_dice=dict(reported_dice or {}),
            vocabulary=None if self.label_map is None else self.label_map.name,
            preprocessing=str(preprocessing),
            modality_policy=str(modality_policy),
            channels=check_channels(channels),
        )
        # follows the module's device even when the wrapped model is not a registered submodule
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def organs_predicted(self, organ_set: OrganSet) -> tuple[str, ...]:
        """Organs the vocabulary can name; the rest are ``not_predicted``."""
        return organ_set.organs if self.label_map is None else self.label_map.organs_covered(organ_set)

    def source_keys(self, organ: str) -> list[int | str]:
        """Vocabulary entries (ids or texts) that map to ``organ``, in file order (merges give several)."""
        if self.label_map is None:
            raise ValueError(f"{self.info.name}: no label map, so no vocabulary entries")
        return [k for k, v in self.label_map.mapping.items() if v == organ]

    def harmonise(self, labels: np.ndarray | torch.Tensor, organ_set: OrganSet) -> torch.Tensor:
        """Labels in the model's vocabulary ids -> (D, H, W) uint8 on the organ set's ids."""
        arr = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if self.label_map is None:
            return torch.as_tensor(arr.astype(np.uint8))
        return torch.as_tensor(self.label_map.apply(arr, organ_set))


class PromptedAdapter(FoundationAdapter):
    """Adapters that segment one prompted organ at a time (points, boxes, corrective clicks).

    Subclasses implement :meth:`prepare` (once per volume) and :meth:`segment_organ` (once per
    organ and again after each corrective click). The loop simulates the prompts from the reference,
    asks for ``prompts.corrective_clicks`` corrections inside the region the model saw, and merges
    the organs' scores with a :class:`ScoreAccumulator`.

    Args:
        prompts: a :class:`~umd_lightning.models.prompts.PromptSimulator` or its keyword arguments.
        **kwargs: see :class:`FoundationAdapter`.
    """

    def __init__(self, name: str, *, prompts: PromptSimulator | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        simulator = prompts if isinstance(prompts, PromptSimulator) else PromptSimulator(**dict(prompts or {}))
        only_boxes = simulator.boxes and not simulator.center_point and not simulator.k_random
        kwargs.setdefault("prompt_kind", "box" if only_boxes else "point")
        kwargs.setdefault("oracle", True)
        super().__init__(name, **kwargs)
        self.simulator = simulator

    def prepare(self, image: torch.Tensor, meta: Mapping[str, Any]) -> Any:
        """Per-volume work (normalisation, image embedding); image is (1, C, D, H, W) on the CPU."""
        return image

    def segment_organ(
        self, prepared: Any, prompts: OrganPrompts, previous: Any | None
    ) -> tuple[Region | None, torch.Tensor, Any]:
        """Scores for one organ.

        Args:
            prepared: what :meth:`prepare` returned.
            prompts: the organ's prompts (voxel indices on the input grid), corrective clicks included.
            previous: the state this method returned for the organ's previous call, or None.

        Returns:
            ``(region, scores, state)``: scores (logits, > 0 = organ) of shape of the region of the
            volume (None = the whole volume), and a state handed back on the next call.
        """
        raise NotImplementedError

    def grid_spacing(self, meta: Mapping[str, Any]) -> tuple[float, ...] | None:
        if self.info.target_spacing is not None:
            return tuple(self.info.target_spacing)
        sp = meta.get("spacing")
        return None if sp is None else tuple(float(s) for s in sp)

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        if reference is None:
            raise ValueError(
                f"{self.info.name} is prompted from the reference label (oracle) but no reference was given"
            )
        ref = reference.cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
        if tuple(ref.shape) != tuple(image.shape[-3:]):
            raise ValueError(f"reference shape {ref.shape} does not match the image's {tuple(image.shape[-3:])}")
        spacing = self.grid_spacing(meta)
        organs = self.organs_predicted(organ_set)
        prompts = self.simulator.simulate(
            ref, organ_set, case_id=str(meta.get("case_id", "")), spacing=spacing, organs=organs
        )
        prepared = self.prepare(image, meta)
        acc = ScoreAccumulator(image.shape[-3:])
        for organ, op in prompts.items():
            region, scores, state = self.segment_organ(prepared, op, None)
            for _ in range(self.simulator.corrective_clicks):
                full_region = region or (slice(None),) * 3
                pred = np.zeros(ref.shape, dtype=bool)
                pred[full_region] = (torch.nan_to_num(scores, nan=-1.0) > 0).cpu().numpy()
                # the model can only be corrected where it looks
                ref_mask = np.zeros(ref.shape, dtype=bool)
                ref_mask[full_region] = ref[full_region] == op.label
                if self.simulator.correct(op, pred, ref_mask, spacing=spacing) is None:
                    break
                region, scores, state = self.segment_organ(prepared, op, state)
            acc.add(op.label, scores, region)
        return Prediction(labels=acc.labels, prompts=prompts_to_records(prompts))
