"""The adapter protocol: every model, trained here or a foundation model, answers the same question.

Given one whole volume (on the evaluation grid) with its meta and the organ set, return a label map on the
organ set's ids on the same grid. An adapter also says how it was prompted and whether its prompts used
the reference label (oracle information); both go into every results row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

import torch

from umd_lightning.organs import OrganSet

PromptKind = Literal["automatic", "class", "text", "point", "box"]


@dataclass
class Prediction:
    """What an adapter returns for one case.

    Attributes:
        labels: (D, H, W) integer label map on the organ set's ids, on the input grid, on the CPU.
        prompts: the prompts the model was given (JSON-serialisable), saved with the results.
    """

    labels: torch.Tensor
    prompts: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class AdapterInfo:
    """What a model expects and how it is prompted; stated in every results table."""

    name: str
    prompt_kind: PromptKind = "automatic"
    oracle: bool = False
    #: Voxel spacing (mm, x/y/z of the RAS-oriented volume) the model was trained at; None = any.
    target_spacing: tuple[float, float, float] | None = None
    #: Dice its own paper reports, per view or "overall": used for the generalisation-gap statistic.
    reported_dice: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class SegmentationAdapter(Protocol):
    """A model that segments whole volumes onto an organ set.

    ``image`` is (1, C, D, H, W) float on the CPU, intensity-normalised for its view and resampled to
    ``info.target_spacing`` when that is set. ``reference`` (D, H, W) is passed only to adapters whose
    ``info.oracle`` is True (they simulate prompts from it).
    """

    info: AdapterInfo

    def organs_predicted(self, organ_set: OrganSet) -> tuple[str, ...]:
        """Organs this model can name; the others are reported as ``not_predicted``, never as Dice 0."""
        ...

    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction: ...


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not fit the network; the message names the file and the keys."""


def load_state_dict_checked(module: torch.nn.Module, path: str | Path, *, key: str | None = None) -> None:
    """Load weights with ``torch.load(weights_only=True)`` and fail clearly on any mismatch.

    Lightning checkpoints (``state_dict`` with ``net.`` or ``model.net.`` prefixes) and bare state dicts
    both load.

    Raises:
        CheckpointError: the file is missing or unreadable, or keys are missing or unexpected.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    state = obj.get(key or "state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state dict inside (found {type(state).__name__})")
    own = set(module.state_dict())
    for prefix in ("", "model.net.", "net.", "model.", "module."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and own <= set(stripped):
            state = {k: v for k, v in stripped.items() if k in own}
            break
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {type(module).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: checkpoint does not fit {type(module).__name__}: {exc}") from exc
