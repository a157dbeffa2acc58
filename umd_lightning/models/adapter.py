"""The adapter protocol: every model, trained here or a foundation model, answers the same question.

Given one whole volume (on the evaluation grid) with its meta and the organ set, return a label map on the
organ set's ids on the same grid. An adapter also says how it was prompted and whether its prompts used
the reference label (oracle information); both go into every results row.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from umd_lightning.organs import OrganSet

PromptKind = Literal["automatic", "class", "text", "point", "box"]
#: CHANNEL_KINDS: what one input channel of a multi-channel model holds.
CHANNEL_KINDS = ("anatomical", "PET")
DEFAULT_MODALITY_POLICY = (
    "as is: the model's own preprocessing applied to the image as it is, as a user running the model on it would"
)


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
    #: The label map (``umd_lightning/labelmaps/<name>.yaml``) from the model's vocabulary to organ
    #: names; None = the model's output ids are the organ set's ids.
    vocabulary: str | None = None
    #: The model's own preprocessing, in words (normalisation, resampling, cropping), as its code does it.
    preprocessing: str = ""
    #: How a scan of a modality the model was not made for (a PET or MRI for a CT model) enters it.
    modality_policy: str = DEFAULT_MODALITY_POLICY
    #: Inputs of a multi-channel model, one per channel: ``anatomical`` (the session's CT or MRI) or
    #: ``PET`` (its PET on the same grid); empty = one channel, the case's own scan.
    channels: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        """The adapter's description as flat JSON-ready values, for results metadata."""
        return {
            "model": self.name,
            "prompt_kind": self.prompt_kind,
            "oracle": bool(self.oracle),
            "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
            "vocabulary": self.vocabulary,
            "reported_dice": dict(self.reported_dice),
            "preprocessing": self.preprocessing,
            "modality_policy": self.modality_policy,
            "channels": list(self.channels),
        }


@runtime_checkable
class SegmentationAdapter(Protocol):
    """A model that segments whole volumes onto an organ set.

    ``image`` is (1, C, D, H, W) float32 on the CPU in physical units (CT in HU, MRI as stored, PET in
    SUV), RAS-oriented on the label's grid, resampled to ``info.target_spacing`` when that is set;
    ``meta`` holds the case's ``view``, ``spacing`` (mm per array axis) and ``affine``. Preprocessing
    belongs to the model: each adapter applies its upstream's own normalisation. ``reference`` (D, H, W) is passed only to adapters whose
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


def check_channels(channels: Any) -> tuple[str, ...]:
    """A multi-channel model's channel kinds as a tuple, each one of :data:`CHANNEL_KINDS`."""
    out = tuple(str(c) for c in (channels or ()))
    bad = [c for c in out if c not in CHANNEL_KINDS]
    if bad:
        raise ValueError(f"input channels must each be one of {CHANNEL_KINDS}, got {list(out)}")
    return out


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not fit the network; the message names the file and the keys."""


def _numpy_safe_globals() -> list[Any]:
    """numpy scalar and dtype types that trainers (nnU-Net, SAM-Med3D) leave in their checkpoints' logs."""
    allowed: list[Any] = [np.dtype]
    for name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(importlib.import_module(name).scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def load_checkpoint_file(path: str | Path, *, allow_numpy: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors that name the file.

    Args:
        path: the checkpoint file.
        allow_numpy: also accept numpy scalars and dtypes (plain data that training logs hold); no code
            object is ever unpickled.

    Raises:
        CheckpointError: the file is missing or cannot be read with ``weights_only=True``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ctx = torch.serialization.safe_globals(_numpy_safe_globals()) if allow_numpy else contextlib.nullcontext()
        with ctx:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot load checkpoint with weights_only=True ({type(exc).__name__}: {first})") from exc


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force ``torch.load(weights_only=True)`` inside third-party code (nnU-Net, TotalSegmentator).

    Those packages call ``torch.load(..., weights_only=False)``; within this context every call is
    made with ``weights_only=True`` (numpy scalars allowed), so no checkpoint can run code.
    """
    original = torch.load

    def _load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return original(*args, **kwargs)

    torch.load = _load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def _short(keys: list[str], n: int = 5) -> str:
    return f"{keys[:n]}{f' (+{len(keys) - n} more)' if len(keys) > n else ''}"


def load_state_dict_checked(module: torch.nn.Module, path: str | Path, *, key: str | None = None) -> None:
    """Load weights with ``torch.load(weights_only=True)`` and fail clearly on any mismatch.

    Lightning checkpoints (``state_dict`` with ``net.`` or ``model.net.`` prefixes) and bare state dicts
    both load.

    Args:
        module: the network to load into.
        path: the checkpoint file.
        key: the entry of a checkpoint dict that holds the state dict (default ``state_dict`` when
            present, else the dict itself); e.g. ``model_state_dict`` for SAM-Med3D.

    Raises:
        CheckpointError: the file is missing or unreadable, or keys are missing, unexpected or of
            another shape. The message is one line naming the file.
    """
    path = Path(path).expanduser()
    obj = load_checkpoint_file(path)
    if isinstance(obj, dict) and key is not None and key not in obj:
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):  # a bare state dict is fine too
            raise CheckpointError(f"{path}: no entry {key!r} in the checkpoint (entries: {_short(sorted(map(str, obj)))})")
        key = None
    state = obj.get(key or "state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state dict inside (found {type(state).__name__})")
    own = module.state_dict()
    # the prefix that makes the most keys match (Lightning, DDP and wrapper prefixes)
    best: dict[str, Any] = state
    best_hits = len(set(state) & set(own))
    for prefix in ("model.net.", "net.", "model.", "module."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(set(stripped) & set(own))
        if hits > best_hits:
            best, best_hits = stripped, hits
    if best is not state:
        best = {k: v for k, v in best.items() if k in own} if set(own) <= set(best) else best
    state = best
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {type(module).__name__}: "
            f"missing keys {_short(missing)}, unexpected keys {_short(unexpected)}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {type(module).__name__}: "
            f"shape mismatch (checkpoint vs network) {_short(wrong, 3)}"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: checkpoint does not fit {type(module).__name__}: {first}") from exc
