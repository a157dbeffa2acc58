"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    for name, fn in {"umd.package_file": package_file, "umd.num_classes": num_classes}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
