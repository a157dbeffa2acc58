"""The one place that wires the stages together from a composed Hydra config.

A run folder's life: checked before any work (writable; its fingerprint, when it has one, names the
same model, data and metric settings: else the run stops and never merges), then fit and/or test
(the module journals each scored case into ``cases/``), then, from what is on disk alone, the
results table, its analysis and report. Every re-run in a run folder ends with all three, whatever
stopped the one before.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from umd_lightning.config import ConfigError, apply_per_model, missing_values
from umd_lightning.data.splits import SplitError
from umd_lightning.lit.folder import (
    RunFolderError,  # noqa: F401 - raised by run(); the command line reports it in one line
    check_fingerprint,
    check_run_folder,
    file_sha256,
    run_fingerprint,
    write_fingerprint,
)
from umd_lightning.lit.outputs import build_table, write_table
from umd_lightning.organs import VIEWS
from umd_lightning.results import CASES_DIR, atomic_write_text, journaled_cases, read_journal
from umd_lightning.runtime import keep_freed_memory

log = logging.getLogger(__name__)

#: Written into a run folder instead of results when its model had no weights configured (sweeps).
SKIPPED_FILE = "skipped.json"
#: Written into a sweep job's run folder when the job stopped with an error (the sweep goes on).
FAILED_FILE = "failed.json"
PACKAGES = ("umd_lightning", "torch", "lightning", "monai", "torchmetrics", "hydra-core", "nibabel", "numpy", "wandb")


def write_run_manifest(cfg: DictConfig, out: Path, datamodule: Any, fingerprint: dict[str, Any] | None = None) -> Path:
    """What produced this run folder: resolved config, package versions, checkpoint and data hashes."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    fingerprint = fingerprint or run_fingerprint(cfg, datamodule)
    payload = {
        "command": command_line(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "checkpoint": OmegaConf.select(cfg, "model.checkpoint"),
        "checkpoint_sha256": fingerprint["model"]["checkpoint_sha256"],
        "init_checkpoint": OmegaConf.select(cfg, "module.init_checkpoint"),
        "init_checkpoint_sha256": fingerprint["model"]["init_checkpoint_sha256"],
        "data_manifest_sha256": fingerprint["data"]["manifest_sha256"],
    }
    return atomic_write_text(out / "run_manifest.json", json.dumps(payload, indent=2, default=str))


def write_or_check_splits(datamodule: Any, path: Path) -> Path:
    """Write the subject-level split file, or check that the one already in the run folder agrees.

    A resumed run must train and test on the subjects it started with; a folder split differently
    (another seed, cohort or k_shot) is refused rather than mixed.

    Raises:
        SplitError: ``path`` exists and holds other splits.
    """
    tmp = datamodule.write_splits(path.with_name(f".{path.name}.{os.getpid()}.tmp"))
    if path.is_file():
        new, old = json.loads(tmp.read_text()), json.loads(path.read_text())
        tmp.unlink()
        if new != old:
            raise SplitError(
                f"{path}: this run folder was split differently (another seed, cohort or k_shot?); "
                "use a new run folder or the original config"
            )
        return path
    os.replace(tmp, path)
    return path


def data_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Instantiation overrides of the data config: ``k_shot: all`` means every training subject."""
    k_shot = OmegaConf.select(cfg, "data.k_shot")
    if isinstance(k_shot, str):
        if k_shot.lower() not in ("all", "none", "null"):
            raise ValueError(f"data.k_shot must be a number of subjects or 'all', got {k_shot!r}")
        return {"k_shot": None}
    return {}


def command_line() -> str:
    """The command that produced this run: Hydra's overrides when launched from the CLI."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    return " ".join(["python -m umd_lightning", *overrides])


def export_weights(module: L.LightningModule, path: str | Path, cfg: DictConfig, metrics: dict | None = None) -> Path:
    """Save the network's state dict (loads with weights_only=True) and a JSON of how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Half precision halves the shipped file; loading casts back into the network's float32 parameters.
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu() for k, v in module.model.net.state_dict().items()}
    torch.save(state, path)
    card = {
        "command": command_line(),
        "seed": int(cfg.seed),
        "sha256": file_sha256(path),
        "network": OmegaConf.to_container(cfg.model.net, resolve=True),
        "target_spacing": OmegaConf.to_container(cfg.model.target_spacing, resolve=True),
        "train_subjects": getattr(module.trainer.datamodule, "splits", {}).get("train"),
        "metrics": metrics or {},
    }
    path.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return path


def print_summary(table: pd.DataFrame) -> None:
    """A view x organ table of mean Dice / HD95 on the console."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    ok = table[table.status != "failed"]
    views = [v for v in VIEWS if v in set(ok.view)]
    means = ok.groupby(["organ", "view"])[["dice", "hd95"]].mean()
    rich_table = Table(title="Mean Dice / HD95 (mm) per organ and view")
    rich_table.add_column("organ")
    for v in views:
        rich_table.add_column(v, justify="right")
    for organ in dict.fromkeys(ok.organ):
        cells = []
        for v in views:
            if (organ, v) in means.index:
                d, h = means.loc[(organ, v)]
                cells.append(f"{d:.3f} / {h:.1f}")
            else:
                cells.append("-")
        rich_table.add_row(organ, *cells)
    overall = ok.groupby("view")[["dice", "hd95"]].mean()
    rich_table.add_row(
        "[b]mean[/b]", *[f"[b]{overall.loc[v, 'dice']:.3f} / {overall.loc[v, 'hd95']:.1f}[/b]" for v in views]
    )
    console = Console()
    if not console.is_terminal:  # a log file has no width: keep one row per line instead of wrapping at 80
        natural = Measurement.get(console, console.options.update_width(1000), rich_table).maximum
        console = Console(width=max(console.width, natural))
    console.print(rich_table)
    failed = table[table.status == "failed"]["case_id"].unique()
    if len(failed):
        Console(stderr=True).print(f"[red]{len(failed)} case(s) failed:[/red] {', '.join(failed)}")


def skip_unconfigured(cfg: DictConfig, out: Path, missing: list[str]) -> dict[str, Any]:
    """A model whose weights are not given: recorded as skipped in a sweep that allows it, else one line.

    Raises:
        ConfigError: values are missing and ``skip_unconfigured`` is off (or data values are missing).
    """
    name = str(OmegaConf.select(cfg, "model.name") or "model")
    if not (cfg.get("skip_unconfigured") and all(k.startswith("model.") for k in missing)):
        raise ConfigError(f"no value for {', '.join(missing)}: pass " + " ".join(f"{k}=<value>" for k in missing))
    # the model's other local paths the sweep leaves empty (a code checkout, a tokenizer folder) are named too
    keys = [k.removeprefix("model.") for k in missing]
    keys += [k for k, v in (OmegaConf.select(cfg, f"per_model.{name}") or {}).items() if v is None and k not in keys]
    enable = " ".join(f"per_model.{name}.{k}=PATH" for k in keys)
    record = {"model": name, "status": "skipped", "missing": missing, "enable_with": enable}
    atomic_write_text(out / SKIPPED_FILE, json.dumps(record, indent=2))
    log.warning("model %s skipped: no %s (enable with %s)", name, ", ".join(missing), enable)
    return record


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit and/or test as the config says; return the run folder and the results table.

    Raises:
        RunFolderError: the run folder is not writable or holds another run's results (before any work).
        ConfigError: a mandatory value is missing.
    """
    out = Path(cfg.paths.output_dir)
    check_run_folder(out)
    apply_per_model(cfg)
    missing = missing_values(cfg)
    if missing:
        return {"output_dir": out, "skipped": skip_unconfigured(cfg, out, missing)}
    for marker in (SKIPPED_FILE, FAILED_FILE):  # a sweep's earlier verdict on this folder no longer holds
        (out / marker).unlink(missing_ok=True)

    keep_freed_memory()  # the CLI has called it before importing torch; a direct caller of run() gets it here
    datamodule = instantiate(cfg.data, **data_kwargs(cfg))
    fingerprint = None
    if rank_zero_only.rank == 0:
        # Before the model is loaded or anything runs (or prints): a folder of another run is refused,
        # never merged. Under DDP the other ranks start after rank 0 has checked.
        fingerprint = run_fingerprint(cfg, datamodule)
        new_folder = check_fingerprint(out, fingerprint)
        write_or_check_splits(datamodule, out / "splits.json")
        if new_folder:
            write_fingerprint(out, fingerprint)
        # every file the evaluation reads is checked before anything else runs (a PET in Bq/ml stops here)
        datamodule.setup("test")

    L.seed_everything(int(cfg.seed), workers=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    analysis_cfg = cfg.get("analysis")
    analysis = instantiate(analysis_cfg) if analysis_cfg and analysis_cfg.get("_target_") else None

    model = instantiate(cfg.model)
    # a multi-channel model takes each session's scans stacked (e.g. CT + PET, as AutoPET models)
    datamodule.channels = tuple(getattr(getattr(model, "info", None), "channels", ()) or ())
    module = instantiate(cfg.module, model=model)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    result: dict[str, Any] = {"output_dir": out}
    if trainer.is_global_zero:
        # Before anything runs, so that a killed run's folder says what it was doing.
        write_run_manifest(cfg, out, datamodule, fingerprint)
    if cfg.train:
        last = out / "checkpoints" / "last.ckpt"
        resume_from = str(last) if cfg.resume and last.is_file() else None
        if resume_from:
            log.info("resuming fit from %s", resume_from)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        if cfg.export_checkpoint and trainer.is_global_zero:
            result["checkpoint"] = export_weights(module, cfg.export_checkpoint, cfg)
    if cfg.test:
        table = score_and_tabulate(trainer, module, datamodule, out, resume=bool(cfg.resume), analysis=analysis)
        result["results"] = table
        if table is not None and len(table):
            print_summary(table)
            if cfg.train and cfg.export_checkpoint and "checkpoint" in result:
                ok = table[table.status != "failed"]
                means = {v: float(m) for v, m in ok.groupby("view")["dice"].mean().items()}
                export_weights(module, cfg.export_checkpoint, cfg, metrics={"test_mean_dice": means})
    return result


def score_and_tabulate(
    trainer: L.Trainer, module: Any, datamodule: Any, out: Path, resume: bool = True, analysis: Any = None
) -> pd.DataFrame | None:
    """Score the cases the journal lacks, then build the table, analysis and report from the journal.

    The journal is checked first (a file that is not one complete case is named, set aside and its
    case scored again). The table, its analysis and the report are rebuilt on every call, so a
    re-run ends with all three whatever stopped the run before, including when nothing is left to
    score (Lightning then runs no test hook at all).

    Returns:
        The results table on rank 0; None on the other ranks.
    """
    organs = module.organ_set
    if trainer.is_global_zero:
        for problem in read_journal(out, organs=organs.organs)[1]:
            log.warning("journal: %s", problem)
    trainer.strategy.barrier("umd_lightning.journal_checked")
    datamodule.setup("test")
    datamodule.exclude_cases(journaled_cases(out) if resume else ())
    pending = datamodule.eval_records()
    if pending:
        log.info("%d case(s) to score; %d already journaled in %s", len(pending),
                 len(datamodule.eval_records(include_finished=True)) - len(pending), out / CASES_DIR)
        trainer.test(module, datamodule=datamodule, verbose=False)
    else:
        log.info("every case is journaled in %s: nothing left to score", out / CASES_DIR)
    trainer.strategy.barrier("umd_lightning.cases_journaled")
    if not trainer.is_global_zero:
        return None
    table, problems = build_table(
        out, organs, datamodule.eval_records(include_finished=True), datamodule.failed_records(), module.case_identity()
    )
    for problem in problems:
        log.warning("journal: %s", problem)
    meta = module.results_metadata()
    write_table(table, meta, out, trainer.loggers, step=trainer.global_step)
    if analysis is not None and len(table):
        analysis(table, meta, out, trainer.loggers)
    return table
