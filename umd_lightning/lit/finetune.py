"""Fine-tuning helpers: initialise a network from part of a checkpoint, and freeze parts of it.

A fine-tuning recipe starts from scratch, from a whole checkpoint of the same network (the CT
reference: ``model.checkpoint``, loaded strictly by the adapter), or from the encoder of another
model (``module.init_checkpoint``: the keys whose names, after ``init_rename``, and shapes match).
``module.freeze`` then keeps parameters fixed by name prefix, or ``encoder`` for the networks whose
encoder this module knows.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from umd_lightning.models.adapter import CheckpointError, load_checkpoint_file

log = logging.getLogger(__name__)

#: ``freeze: [encoder]`` resolves to these parameter-name rules, by network class name.
_UNET_DECODER = re.compile(r"^model\.(1\.submodule\.)*2\.")
ENCODER_RULES: dict[str, Callable[[str], bool]] = {
    # MONAI UNet nests (down, SkipConnection(...), up) Sequentials: the up layers are the "2." entries.
    "UNet": lambda name: _UNET_DECODER.match(name) is None,
    "DynUNet": lambda name: name.startswith(("input_block.", "downsamples.", "bottleneck.")),
    "SegResNet": lambda name: name.startswith(("convInit.", "down_layers.")),
    "SwinUNETR": lambda name: name.startswith(
        ("swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.")
    ),
    "BasicUNet": lambda name: name.startswith(("conv_0.", "down_1.", "down_2.", "down_3.", "down_4.")),
}


def encoder_parameter_names(net: nn.Module) -> list[str]:
    """Names of the encoder's parameters of a known MONAI network.

    Args:
        net: a MONAI ``UNet``, ``DynUNet``, ``SegResNet``, ``SwinUNETR`` or ``BasicUNet``.

    Raises:
        ValueError: the network's encoder is not known here (freeze it by name prefixes instead).
    """
    rule = ENCODER_RULES.get(type(net).__name__)
    if rule is None:
        raise ValueError(
            f"freeze: 'encoder' is not known for {type(net).__name__}; "
            f"give parameter-name prefixes (known networks: {', '.join(ENCODER_RULES)})"
        )
    return [name for name, _ in net.named_parameters() if rule(name)]


def freeze_parameters(net: nn.Module, freeze: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``freeze`` names.

    Args:
        net: the network.
        freeze: parameter-name prefixes, or ``encoder`` (see :func:`encoder_parameter_names`).

    Returns:
        The frozen parameters' names.

    Raises:
        ValueError: a prefix matches no parameter (a typo must not silently train everything).
    """
    names = dict(net.named_parameters())
    frozen: list[str] = []
    for entry in freeze:
        hit = encoder_parameter_names(net) if entry == "encoder" else [n for n in names if n.startswith(entry)]
        if not hit:
            raise ValueError(f"freeze: {entry!r} matches no parameter of {type(net).__name__} (e.g. {next(iter(names), '')!r})")
        frozen += [n for n in hit if n not in frozen]
    for name in frozen:
        names[name].requires_grad_(False)
    if frozen:
        n_frozen = sum(names[n].numel() for n in frozen)
        n_all = sum(p.numel() for p in names.values())
        log.info("froze %d of %d parameters (%d tensors)", n_frozen, n_all, len(frozen))
    return frozen


def frozen_modules(net: nn.Module) -> list[nn.Module]:
    """Modules whose parameters are all frozen and that keep running statistics (batch norm):
    they stay in eval mode during fit, so fine-tuning does not drift their statistics."""
    out = []
    for module in net.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params) and getattr(module, "track_running_stats", False):
            out.append(module)
    return out


def load_matching(
    net: nn.Module,
    path: str | Path,
    *,
    key: str | None = None,
    rename: Mapping[str, str] | None = None,
    strict: bool = False,
) -> dict[str, list[str]]:
    """Initialise ``net`` from the matching entries of a checkpoint (``torch.load(weights_only=True)``).

    Args:
        net: the network to initialise.
        path: the checkpoint: a state dict, or a dict holding one under ``key`` (default
            ``state_dict`` when present).
        key: the entry that holds the state dict.
        rename: ``{source_prefix: target_prefix}`` applied to the checkpoint's names first, e.g.
            ``{"module.": "swinViT."}`` for the self-supervised Swin UNETR encoder.
        strict: every parameter of ``net`` must be loaded.

    Returns:
        ``{"loaded": [...], "skipped": [...], "missing": [...]}``: loaded names, checkpoint entries left
        out (no such name or another shape), and network entries not in the checkpoint.

    Raises:
        CheckpointError: the file is unreadable, nothing matches, or ``strict`` and entries are missing.
    """
    state = load_checkpoint_file(path)
    if isinstance(state, Mapping):
        entry = key or ("state_dict" if "state_dict" in state else None)
        if entry is not None:
            if entry not in state:
                raise CheckpointError(f"{path}: no entry {entry!r} (has {sorted(state)[:8]})")
            state = state[entry]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    renamed: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        for src, dst in (rename or {}).items():
            if name.startswith(src):
                name = dst + name[len(src) :]
                break
        renamed[name] = value
    own = net.state_dict()
    loaded = [n for n, v in renamed.items() if n in own and torch.is_tensor(v) and tuple(v.shape) == tuple(own[n].shape)]
    skipped = [n for n in renamed if n not in loaded]
    # A network may list one tensor under two names (DynUNet's skip_layers alias its downsamples).
    loaded_storage = {own[n].data_ptr() for n in loaded}
    missing = [n for n in own if n not in loaded and own[n].data_ptr() not in loaded_storage]
    if not loaded:
        raise CheckpointError(
            f"{path}: no entry matches {type(net).__name__} by name and shape "
            f"(checkpoint has e.g. {list(renamed)[:3]}, the network {list(own)[:3]}); set init_rename"
        )
    if strict and missing:
        raise CheckpointError(f"{path}: {len(missing)} network entries not in the checkpoint, e.g. {missing[:5]}")
    net.load_state_dict({n: renamed[n].to(own[n].dtype) for n in loaded}, strict=False)
    log.info("initialised %d of %d entries from %s (%d checkpoint entries skipped)", len(loaded), len(own), path, len(skipped))
    return {"loaded": loaded, "skipped": skipped, "missing": missing}


__all__ = ["ENCODER_RULES", "encoder_parameter_names", "freeze_parameters", "frozen_modules", "load_matching"]
