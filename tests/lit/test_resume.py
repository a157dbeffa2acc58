"""Fault tolerance: a main job killed with SIGKILL during evaluation resumes in the same run folder
and gives the table of an uninterrupted run; a fit resumes from last.ckpt; a run folder split
differently is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO, TINY_OVERRIDES

from umd_lightning.data.splits import SplitError
from umd_lightning.lit.run import run
from umd_lightning.metrics import read_results_table

pytestmark = pytest.mark.slow

FAST = ["++callbacks.discrepancy=null", "++callbacks.overlay=null", "trainer.enable_progress_bar=false"]
# Every view of every tiny subject: 12 cases, so a kill lands between the first and the last.
EVAL = ["+experiment=zero_shot_pet", "data.splits.n_test=all", *FAST]


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    table = table.drop(columns=[c for c in ("prediction",) if c in table.columns])
    return table.sort_values(["case_id", "organ"], kind="stable").reset_index(drop=True)


def test_kill_during_evaluation_then_rerun_gives_the_uninterrupted_table(compose_cfg, cache_dir, tiny_cohort, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "umd_lightning", *TINY_OVERRIDES, *EVAL,
        f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cases = run_dir / "cases"
    deadline = time.monotonic() + 240
    try:
        while not (cases.is_dir() and any(cases.glob("*.json"))):
            if proc.poll() is not None:
                pytest.fail(f"the job ended before its first case (rc {proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no case finished within 240 s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.name: p.stat().st_mtime_ns for p in cases.glob("*.json")}
    assert 1 <= len(done) < 12 and not (run_dir / "results.parquet").exists()

    resumed = run(compose_cfg(*EVAL, f"paths.output_dir={run_dir}"))
    # the finished cases were skipped, not evaluated again
    assert {p.name: p.stat().st_mtime_ns for p in cases.glob("*.json") if p.name in done} == done
    assert len(list(cases.glob("*.json"))) == 12

    whole = run(compose_cfg(*EVAL, f"paths.output_dir={tmp_path / 'whole'}"))
    pd.testing.assert_frame_equal(_comparable(resumed["results"]), _comparable(whole["results"]))
    on_disk, _ = read_results_table(run_dir / "results.parquet")
    pd.testing.assert_frame_equal(_comparable(on_disk), _comparable(whole["results"]))
    assert len(on_disk) == 12 * 13


def _global_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


def test_fit_resumes_from_last_checkpoint(compose_cfg, tmp_path):
    fit = ["+experiment=finetune_ct", "test=false", "callbacks.model_checkpoint.every_n_train_steps=1", *FAST]
    out = tmp_path / "run"
    run(compose_cfg(*fit, "trainer.max_steps=2", f"paths.output_dir={out}"))
    assert _global_step(out) == 2
    weights = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    # the same run again: restored at its end, nothing more to train, the same weights
    again = run(compose_cfg(*fit, "trainer.max_steps=2", "export_checkpoint=" + str(tmp_path / "w.pt"), f"paths.output_dir={out}"))
    exported = torch.load(again["checkpoint"], weights_only=True)
    for key, value in exported.items():
        assert torch.equal(value, weights[f"model.net.{key}"].half()), key

    # a longer budget continues from step 2 (with its optimizer state), not from scratch
    run(compose_cfg(*fit, "trainer.max_steps=3", f"paths.output_dir={out}"))
    assert _global_step(out) == 3
    resumed = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 3  # AdamW's own step count

    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["config"]["data"]["train_views"] == ["CT"] and manifest["versions"]["torch"]
    with pytest.raises(SplitError, match="split differently"):
        run(compose_cfg(*fit, "seed=1", f"paths.output_dir={out}"))
