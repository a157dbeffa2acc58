"""Hydra entry point: ``python -m umd_lightning +experiment=zero_shot_pet``."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from umd_lightning.config import config_dir


def _user_errors() -> tuple[type[BaseException], ...]:
    from umd_lightning.config import ConfigError
    from umd_lightning.data.manifest import ManifestError
    from umd_lightning.data.splits import SplitError
    from umd_lightning.lit.folder import RunFolderError
    from umd_lightning.extras import MissingExtraError
    from umd_lightning.models.adapter import CheckpointError

    return (ConfigError, ManifestError, SplitError, CheckpointError, MissingExtraError, FileNotFoundError, RunFolderError)


def main() -> None:
    """Check the run folder Hydra is about to write into, then run the composed config."""
    _check_run_dir(sys.argv[1:])
    _main()


def _check_run_dir(overrides: list[str]) -> None:
    """A run folder given as ``hydra.run.dir=DIR`` that cannot take files stops here with one line:
    Hydra opens its log file there before any of our code runs, and would fail with a traceback."""
    given = [a.split("=", 1)[1] for a in overrides if a.lstrip("+").startswith("hydra.run.dir=")]
    if not given or "-m" in overrides or "--multirun" in overrides:
        return
    from umd_lightning.lit.folder import RunFolderError, check_writable

    try:
        check_writable(Path(given[-1]), "run folder")
    except RunFolderError as exc:
        _fail(exc)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from umd_lightning.runtime import keep_freed_memory

    keep_freed_memory()  # before torch is imported and starts threads: then they all share one arena
    from umd_lightning.lit.run import run

    try:
        result = run(cfg)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ is not None else exc
        if _in_sweep():
            # one job of a sweep over models must not end the sweep: the protocol report lists it as failed
            _record_failed_job(cfg, cause)
            return
        if isinstance(cause, _user_errors()):
            _fail(cause)
        raise
    _exit_if_cases_failed(result)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failed_job(cfg: DictConfig, exc: BaseException) -> None:
    from umd_lightning.lit.run import FAILED_FILE
    from umd_lightning.results import atomic_write_text

    out = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=".")))
    out.mkdir(parents=True, exist_ok=True)
    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
    record = {"model": OmegaConf.select(cfg, "model.name"), "status": "failed", "error": message}
    atomic_write_text(out / FAILED_FILE, json.dumps(record))
    logging.getLogger("umd_lightning").error("job failed: %s\n%s", message, traceback.format_exc())
    print(f"umd_lightning: job failed ({out}): {message}", file=sys.stderr)


def _exit_if_cases_failed(result: dict) -> None:
    """Exit 1 after everything is written when a case failed (as ``evaluate`` does); a sweep goes on."""
    table = result.get("results")
    if table is None or not len(table) or "status" not in table:
        return
    failed = sorted(table.loc[table["status"] == "failed", "case_id"].unique())
    if failed and not _in_sweep():
        print(f"umd_lightning: {len(failed)} case(s) failed (rows with status 'failed' in the results table)", file=sys.stderr)
        sys.exit(1)


def _fail(exc: BaseException) -> None:
    print(f"umd_lightning: error: {exc}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
