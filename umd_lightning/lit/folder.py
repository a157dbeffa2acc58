"""A run folder's checks, made before any work: it takes files, and it holds no other run's results.

Light on imports (no torch, no Lightning), so the command line checks a run folder in a blink before
Hydra writes its log there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from umd_lightning.results import CASES_DIR, atomic_write_text, read_journal

#: What a run folder's results were made from (model, data, metric settings); a re-run must match it.
FINGERPRINT_FILE = "fingerprint.json"
#: Model settings that change speed or memory, never a result: left out of the fingerprint.
NOT_FINGERPRINTED = ("sw_batch_size",)


def file_sha256(path: str | Path | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class RunFolderError(ValueError):
    """The run folder cannot take this run (not writable, or it holds another run's results); one line."""


def check_writable(folder: Path, what: str = "run folder") -> None:
    """Create ``folder`` if needed and prove it takes a file, before any work is done.

    Raises:
        RunFolderError: it cannot be created or written (naming it and what to do).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"{folder}: the {what} is a file, not a folder; choose another run folder (hydra.run.dir=DIR)") from None
    except OSError as exc:
        raise RunFolderError(
            f"{folder}: cannot create the {what} ({exc.strerror}); choose a writable run folder (hydra.run.dir=DIR)"
        ) from None
    probe = folder / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(
            f"{folder}: the {what} is not writable ({exc.strerror}); make it writable, or choose another run "
            "folder (hydra.run.dir=DIR)"
        ) from None


def check_run_folder(out: Path) -> None:
    """The run folder and the folders a re-run writes into (the journal, predictions) take files.

    Raises:
        RunFolderError: one of them does not.
    """
    check_writable(out, "run folder")
    for name, what in ((CASES_DIR, "case journal folder"), ("predictions", "predictions folder"), ("checkpoints", "checkpoints folder")):
        if (out / name).exists():
            check_writable(out / name, what)


def run_fingerprint(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What decides a run folder's results: the model (name, settings, checkpoint hashes), the data
    (manifest hash, evaluated views, organ set) and the metric settings."""
    model = OmegaConf.to_container(cfg.model, resolve=True) if OmegaConf.select(cfg, "model") is not None else {}
    model = {k: v for k, v in model.items() if k not in NOT_FINGERPRINTED}
    checkpoint = OmegaConf.select(cfg, "model.checkpoint")
    init_checkpoint = OmegaConf.select(cfg, "module.init_checkpoint")
    datamodule._ensure_manifest()
    manifest = datamodule.manifest
    return {
        "model": {
            "name": model.get("name"),
            "checkpoint_sha256": file_sha256(checkpoint),
            "init_checkpoint_sha256": file_sha256(init_checkpoint),
            "settings": model,
        },
        "data": {
            "manifest_sha256": hashlib.sha256(manifest.to_frame().to_csv(index=False).encode()).hexdigest(),
            "eval_views": list(getattr(datamodule, "eval_views", [])),
            "organ_set": OmegaConf.select(cfg, "organs.name"),
        },
        "metrics": {
            key: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for key in ("nsd_tolerance", "empty_policy", "hd_percentile")
            for v in [OmegaConf.select(cfg, f"module.{key}")]
        },
        "train": bool(cfg.get("train")),
    }


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _short(value: Any, width: int = 24) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 3] + "..."


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each value that differs (model name first)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(set(a) | set(b), key=lambda k: (k != "model.name", not k.endswith("sha256"), k))
    differ = [k for k in keys if a.get(k) != b.get(k)]
    if "model.name" in differ:  # another model: its settings differ as a matter of course
        differ = [k for k in differ if not k.startswith("model.settings.")]
    return [f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in differ]


def check_fingerprint(out: Path, fingerprint: dict[str, Any]) -> bool:
    """Refuse a run folder that holds another run's results; True when it holds none yet.

    A folder without a fingerprint but with journaled cases (made before fingerprints) is checked
    by the model named in its journal.

    Raises:
        RunFolderError: the folder's fingerprint differs (the message says what differs and how to
            start afresh).
    """
    path = out / FINGERPRINT_FILE
    fresh = "; to start afresh choose a new run folder (hydra.run.dir=DIR), or move {} and {} out of it".format(
        out / CASES_DIR, path
    )
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise RunFolderError(f"{path}: unreadable fingerprint; the folder's results cannot be trusted" + fresh) from None
        diffs = fingerprint_differences(old, fingerprint)
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            raise RunFolderError(f"{out} holds the results of another run ({shown})" + fresh)
        return False
    if (out / CASES_DIR).is_dir():
        journal, _ = read_journal(out, put_aside=False)
        models = {str(r.get("model")) for rows in journal.values() for r in rows}
        name = str(fingerprint["model"]["name"])
        if models - {name}:
            raise RunFolderError(f"{out} holds the results of another run (model: {', '.join(sorted(models))} -> {name})" + fresh)
    return True


def write_fingerprint(out: Path, fingerprint: dict[str, Any]) -> Path:
    return atomic_write_text(out / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2, default=str) + "\n")
