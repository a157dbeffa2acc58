"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict


def config_dir() -> Path:
    """``conf/`` shipped inside the wheel, else the repository's top-level ``conf/`` (editable installs)."""
    packaged = Path(str(resources.files("umd_lightning"))) / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged
    repo = Path(__file__).resolve().parents[1] / "conf"
    if (repo / "config.yaml").is_file():
        return repo
    raise FileNotFoundError(f"no Hydra config folder: looked in {packaged} and {repo}")


def package_file(relative: str) -> str:
    """Absolute path of a file shipped inside the package (e.g. the reference checkpoint)."""
    return str(Path(str(resources.files("umd_lightning"))) / relative)


def num_classes(organ_set: str) -> int:
    from umd_lightning.organs import get_organ_set

    return get_organ_set(organ_set).num_classes


class ConfigError(ValueError):
    """A user's mistake in the composed config (a value left out); the message is one line."""


def apply_per_model(cfg: DictConfig) -> dict[str, Any]:
    """Merge ``per_model.<model name>`` into ``model``: the settings of one model in a sweep over models.

    A sweep over ``model=a,b,...`` cannot pass ``model.checkpoint=...`` to one model only (the other
    models have no such key); ``per_model.a.checkpoint=...`` reaches model ``a`` alone. Null values are
    left out, so a model whose weights are not given keeps its mandatory ``???``.

    Returns:
        The values merged.
    """
    name = OmegaConf.select(cfg, "model.name")
    given = OmegaConf.select(cfg, f"per_model.{name}") if name else None
    if not given:
        return {}
    values = {k: v for k, v in given.items() if v is not None}
    with open_dict(cfg.model):
        for key, value in values.items():
            OmegaConf.update(cfg.model, str(key), value, merge=True, force_add=True)
    return {str(k): OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in values.items()}


def missing_values(cfg: DictConfig) -> list[str]:
    """Mandatory values (``???``) the config still lacks, as dotted keys (Hydra's own settings aside).

    Interpolations are not resolved (``OmegaConf.missing_keys`` raises on one that points at a missing
    value): the key the user sets (``data.root``) is named, not the internal one that refers to it.
    """
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        keys = range(len(node)) if OmegaConf.is_list(node) else node.keys()
        for key in keys:
            dotted = f"{prefix}{key}" if OmegaConf.is_dict(node) else f"{prefix.rstrip('.')}[{key}]"
            if OmegaConf.is_missing(node, key):
                found.append(dotted)
                continue
            child = node._get_node(key)
            if OmegaConf.is_config(child) and not OmegaConf.is_interpolation(node, key):
                walk(child, dotted + ".")

    walk(cfg, "")
    return sorted(k for k in found if not k.startswith("hydra."))


def register_resolvers() -> None:
    for name, fn in {"umd.package_file": package_file, "umd.num_classes": num_classes}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
