"""The layouts by name, and :func:`load_layout`, the one entry point (the datamodule and ``check`` call it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from umd_lightning.data.layouts.autopet import read_autopet
from umd_lightning.data.layouts.manifest_file import read_manifest_layout
from umd_lightning.data.layouts.nnunet import read_nnunet
from umd_lightning.data.layouts.pattern import read_pattern
from umd_lightning.data.manifest import Manifest, ManifestError

LAYOUTS: dict[str, Callable[..., Manifest]] = {
    "nnunet": read_nnunet,
    "msd": read_nnunet,
    "autopet": read_autopet,
    "pattern": read_pattern,
    "manifest": read_manifest_layout,
}


def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def load_layout(name: str, root: str | Path, **options: Any) -> Manifest:
    """Read the dataset at ``root`` with the layout ``name`` (a key of :data:`LAYOUTS`).

    Args:
        name: layout name.
        root: dataset folder (or manifest file).
        **options: the reader's keyword options (plain values or OmegaConf containers).

    Raises:
        ValueError: unknown layout name, or an option the reader does not take.
        ManifestError: the dataset cannot be read.
    """
    if name not in LAYOUTS:
        raise ValueError(f"unknown data layout {name!r}; known: {', '.join(sorted(LAYOUTS))}")
    if root is None or str(root) in ("", "???"):
        raise ManifestError(f"layout {name}: no root folder given (set data.root=DIR)")
    reader = LAYOUTS[name]
    opts = {k: _plain(v) for k, v in _plain(options).items()}
    try:
        return reader(Path(str(root)).expanduser(), **opts)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"layout {name}: {exc}") from exc
        missing = re.findall(r"'(\w+)'", str(exc)) if "missing" in str(exc) and "required" in str(exc) else []
        if missing:
            given = " ".join(f"--option {m}=..." for m in missing)
            raise ValueError(
                f"layout {name}: option {', '.join(missing)} is required ({given} for check, "
                + " ".join(f"data.source.options.{m}=..." for m in missing) + " for a run)"
            ) from None
        raise

