"""What is wrong with a path the user gave, as one phrase: missing, a folder where a file should be (or the
reverse), a symbolic link loop or one that leads nowhere, unreadable. Dependency-free; every reader of user
paths (manifests, layouts, ``convert``, ``check``) words these the same way."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal


def path_problem(path: str | Path, want: Literal["file", "folder", "any"] = "file", noun: str | None = None) -> str | None:
    """Why ``path`` cannot be read as a ``want``; None when it can.

    Args:
        path: the path as given.
        want: a regular file (anything ``open`` reads), a folder, or either.
        noun: what the path is to the user (``manifest file``, ``label file``); defaults to ``want``
            (``file or folder`` for ``any``).

    Returns:
        A phrase to follow ``f"{path}: "``, e.g. ``file not found``, ``is a folder, not a file``,
        ``is a symbolic link loop``.

    Example:
        >>> path_problem("/") , path_problem("/", "folder")
        ('is a folder, not a file', None)
    """
    path = Path(path)
    noun = noun or ("file or folder" if want == "any" else want)
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"{noun} not found"
        return f"{noun} cannot be read ({exc.strerror})"
    is_dir = stat.S_ISDIR(info.st_mode)
    if want == "file" and is_dir:
        return f"is a folder, not a {noun}"
    if want == "folder" and not is_dir:
        return f"is a file, not a {noun}"
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        return f"{noun} cannot be read (permission denied)"
    return None
