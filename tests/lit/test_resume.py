"""A fit resumes from last.ckpt; a run folder split differently is refused. (Evaluation killed and
resumed at every stage: tests/lit/test_faults.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from umd_lightning.data.splits import SplitError
from umd_lightning.lit.run import run

pytestmark = pytest.mark.slow

FAST = ["analysis=none", "trainer.enable_progress_bar=false"]


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
