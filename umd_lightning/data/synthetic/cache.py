"""The cohort cache: one folder per config, published atomically and reused when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from umd_lightning.data.synthetic.cohort import config_hash, generate_cohort
from umd_lightning.data.synthetic.config import CohortConfig

#: Written last into a cohort folder by :func:`ensure_cohort`; its absence means "incomplete".
COMPLETE_MARKER = "COMPLETE"
_STALE_TMP_S = 6 * 3600


def ensure_cohort(cache_root: str | Path, config: CohortConfig = CohortConfig(), *, workers: int = 1) -> Path:
    """Generate the cohort once into ``cache_root/<config_hash>/`` and reuse it when complete.

    Published atomically: the cohort is built in a temporary folder beside the target, its marker
    file written last, and the folder renamed into place. A rename never replaces a folder that holds
    files, so a concurrent run that finishes second keeps the first one's cohort and discards its own,
    and a complete cohort is never deleted, whoever is reading it. A target left incomplete (by a
    version that wrote in place) is moved aside before the new cohort takes its name. The cohort has
    the permissions of any folder the user creates (the umask's), not a temporary folder's 0700.

    Args:
        cache_root: folder holding one sub-folder per config.
        config: what to generate.
        workers: processes used when generating.

    Returns:
        The manifest path.
    """
    root = Path(cache_root)
    target = root / config_hash(config)
    manifest = target / "manifest.csv"
    if _complete(target):
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    # Temporary folders of killed runs (a live run finishes in minutes); never a published cohort.
    for stale in root.glob(f".{target.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        generate_cohort(tmp, config, workers=workers)
        (tmp / COMPLETE_MARKER).write_text(config_hash(config) + "\n")
        _publish(tmp, target)
    finally:
        if tmp.exists():  # gone after a successful rename; a losing run's copy is discarded
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "manifest.csv").is_file()


def _umask() -> int:
    """The process's umask, read without changing it where the platform says it (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path) -> None:
    """Rename the complete cohort ``tmp`` to ``target`` unless a complete one is there already."""
    for _ in range(3):
        if _complete(target):
            return
        try:
            os.rename(tmp, target)  # fails while target holds any file: a published cohort is never replaced
            return
        except OSError:
            if _complete(target):
                return  # a concurrent run published first
        # An incomplete target (written in place by an older version, or killed): move it aside.
        aside = target.with_name(f".{target.name}.tmp-incomplete-{os.getpid()}")
        try:
            os.rename(target, aside)
        except OSError:
            continue  # gone or replaced meanwhile: look again
        if _complete(aside):  # published between our check and the move: put it back, keep it
            try:
                os.rename(aside, target)
            except OSError:
                pass  # the target's name is taken by another complete cohort; this copy stays aside
            return
        shutil.rmtree(aside, ignore_errors=True)
    if not _complete(target):
        raise OSError(f"{target}: cannot publish the synthetic cohort (the folder keeps changing)")
