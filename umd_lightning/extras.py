"""Optional packages: imported only when a feature needs them, and when missing, one message that names
the ``umd_lightning`` extra that installs them (``pip install 'umd_lightning[<extra>]'``).

Every optional import of the package goes through :func:`require_extra`; the extras are those of
``pyproject.toml``. Dependency-free, so that ``convert`` and ``check`` can use it without torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


def require_extra(module: str, extra: str, *, needed_by: str | None = None, hint: str = "") -> ModuleType:
    """Import an optional dependency lazily, or fail with a message that names the extra.

    Args:
        module: the importable module, e.g. ``medim`` or ``skimage.measure``.
        extra: the ``umd_lightning`` extra that installs it, e.g. ``sam_med3d``.
        needed_by: what needs it (a model, a file being read), for the message; defaults to ``extra``.
        hint: one more sentence for packages the extra cannot install (code outside PyPI).

    Raises:
        MissingExtraError: the module cannot be imported.

    Example:
        >>> require_extra("json", "none").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = (
            f"{needed_by or extra} needs the package {module.split('.')[0]!r}, which is not installed ({exc}); "
            f"install the extra: pip install 'umd_lightning[{extra}]'"
        )
        raise MissingExtraError(f"{msg}. {hint}".strip() if hint else msg) from exc
