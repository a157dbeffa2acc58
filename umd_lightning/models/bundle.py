"""A local MONAI bundle folder as an adapter (``configs/``, ``models/model.pt``, ``configs/metadata.json``).

The network comes from the bundle's inference config (``network_def``), the weights from
``models/model.pt`` (``weights_only=True``), the window size from its ``inferer`` when not given, and
the vocabulary from ``metadata.json``'s ``network_data_format.outputs.pred.channel_def`` (names
harmonised through ``labelmaps/text_names.yaml``) unless a label map is named. Nothing downloads:
the folder must hold everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from umd_lightning.models.adapter import CheckpointError
from umd_lightning.models.foundation import label_map_from_names, require_path
from umd_lightning.models.networks import MonaiNetworkAdapter
from umd_lightning.organs import LabelMap, load_label_map

__all__ = ["MonaiBundleAdapter", "read_bundle_channels"]

_CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")


def read_bundle_channels(bundle_dir: str | Path) -> dict[int, str]:
    """``{channel: name}`` from a bundle's ``configs/metadata.json`` (empty when it names none)."""
    meta_path = Path(bundle_dir) / "configs" / "metadata.json"
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text())
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    for out in outputs.values():
        channels = out.get("channel_def")
        if channels:
            return {int(k): str(v) for k, v in channels.items()}
    return {}


def _expressions(node: Any) -> list[str]:
    """The ``$`` expressions (Python that MONAI's ConfigParser evaluates) anywhere in a bundle config."""
    if isinstance(node, str):
        return [node] if node.startswith("$") else []
    if isinstance(node, Mapping):
        return [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, (list, tuple)):
        return [e for v in node for e in _expressions(v)]
    return []


class MonaiBundleAdapter(MonaiNetworkAdapter):
    """A MONAI bundle's network, run by the streamed sliding window.

    Args:
        bundle_dir: the local bundle folder.
        name: name in results tables.
        config_file: the inference config, relative to the bundle (default: ``configs/inference.json``
            or ``.yaml``).
        network_key: the config entry that builds the network.
        checkpoint: weights, relative to the bundle or absolute (default ``models/model.pt``).
        label_map: name or path of a label map for the output channels; None = from metadata.json.
        roi_size: window size; None = the bundle inferer's ``roi_size``.
        trust_code: run a config that holds ``$`` expressions (MONAI evaluates them as Python when the
            config is parsed); without it such a bundle stops with one line naming an expression.
        target_spacing: spacing (mm) of the bundle's preprocessing (set it from the bundle's README).
        **kwargs: the rest of :class:`~umd_lightning.models.networks.MonaiNetworkAdapter`.
    """

    def __init__(
        self,
        bundle_dir: str,
        name: str = "monai_bundle",
        config_file: str | None = None,
        network_key: str = "network_def",
        checkpoint: str | None = "models/model.pt",
        label_map: str | LabelMap | None = None,
        roi_size: Sequence[int] | None = None,
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
        trust_code: bool = False,
        **kwargs: Any,
    ) -> None:
        from monai.bundle import ConfigParser

        bundle = require_path(bundle_dir, "MONAI bundle folder", is_dir=True)
        if config_file is None:
            found = [bundle / c for c in _CONFIG_NAMES if (bundle / c).is_file()]
            if not found:
                raise CheckpointError(f"{bundle}: no inference config (looked for {', '.join(_CONFIG_NAMES)})")
            cfg_path = found[0]
        else:
            cfg_path = require_path(bundle / config_file, "bundle inference config")
        parser = ConfigParser()
        parser.read_config(str(cfg_path))
        expressions = _expressions(parser.config)
        if expressions and not trust_code:
            # MONAI evaluates "$..." entries as Python when the config is parsed: code from the bundle
            raise CheckpointError(
                f"{cfg_path}: the bundle config runs Python expressions ({len(expressions)}, e.g. "
                f"{expressions[0][:80]!r}); read them, then set model.trust_code=true to run this bundle"
            )
        parser["bundle_root"] = str(bundle)
        if network_key not in parser:
            raise CheckpointError(f"{cfg_path}: no {network_key!r} entry to build the network from")
        net = parser.get_parsed_content(network_key)
        if roi_size is None:
            try:
                roi_size = list(parser.get_parsed_content("inferer#roi_size"))
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(f"{cfg_path}: no inferer#roi_size; set roi_size in the model config") from exc
        if label_map is None:
            channels = read_bundle_channels(bundle)
            if channels:
                label_map = label_map_from_names(channels, name=f"{name}_channels", source=str(bundle / "configs" / "metadata.json"))
        elif not isinstance(label_map, LabelMap):
            label_map = load_label_map(str(label_map))
        ckpt = None
        if checkpoint not in (None, ""):
            ckpt = Path(str(checkpoint))
            ckpt = ckpt if ckpt.is_absolute() else bundle / ckpt
        super().__init__(
            net,
            name=name,
            checkpoint=None if ckpt is None else str(ckpt),
            roi_size=roi_size,
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            label_map=label_map,
            **kwargs,
        )
        self.bundle_dir = str(bundle)
