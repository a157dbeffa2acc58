"""The layouts by name, and :func:`load_layout`, the one entry point."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

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


def layout_datamodule(root: str | Path | None = None, source: Mapping[str, Any] | None = None, **kwargs: Any):
    """Hydra target of ``conf/data/<layout>.yaml``: a :class:`~umd_lightning.data.datamodule.UMDDataModule`
    over a dataset folder.

    The layout configs inherit the datamodule settings from ``synthetic.yaml``, so ``source`` may still carry
    the synthetic cohort's keys; only ``layout``, ``root`` and ``options`` are kept. ``root`` is the
    user-facing ``data.root`` that ``source.root`` interpolates; it is checked here so that a missing folder
    fails before anything else runs.

    Raises:
        ManifestError: ``root`` is unset or not an existing file or folder.
    """
    from umd_lightning.data.datamodule import UMDDataModule

    src = dict(_plain(source) or {})
    layout = src.get("layout")
    if layout is None or layout == "synthetic":
        raise ManifestError("layout_datamodule: source.layout must name a dataset layout, not the synthetic cohort")
    folder = src.get("root", root) if layout != "manifest" else src.get("path", root)
    if folder is None or str(folder) in ("", "???") or not Path(str(folder)).expanduser().exists():
        raise ManifestError(f"data.root: {folder} does not exist (set data.root=DIR for layout {layout})")
    keep = {"layout": layout, "root": str(folder), "options": _plain(src.get("options") or {})}
    if layout == "manifest":
        keep["path"] = str(folder)
    return UMDDataModule(source=keep, **kwargs)
