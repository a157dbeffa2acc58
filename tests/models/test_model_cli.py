"""``python -m umd_lightning +experiment=zero_shot_pet model=<name> model.checkpoint=PATH`` per adapter config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# one plain network and one foundation model: the path check is shared by every adapter config
# (tests/models/test_adapters_models.py checks each config's error in-process)


@pytest.mark.parametrize("name", ["segresnet", "vista3d"])
def test_wrong_checkpoint_path_exits_with_one_line(tmp_path, name):
    missing = tmp_path / "no" / f"{name}.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "umd_lightning", "+experiment=zero_shot_pet", f"model={name}",
         f"model.checkpoint={missing}", f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}",
         "logger=csv", "data.source.n_subjects=3", "data.splits.n_test=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("umd_lightning: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert str(missing) in errors[0]
    assert "Traceback" not in proc.stderr


# Tiny networks (random weights) for the in-process runs; a coarse model grid keeps them to a few windows.
RUN_TINY = {
    "segresnet": ["model.net.init_filters=8", "model.net.blocks_down=[1,1]", "model.net.blocks_up=[1]",
                  "model.roi_size=[16,16,16]"],
    "swinunetr": ["model.net.feature_size=12", "+model.net.depths=[1,1,1,1]", "+model.net.norm_name=batch"],
    "dynunet": ["model.net.kernel_size=[3,3,3]", "model.net.strides=[1,2,2]", "model.net.upsample_kernel_size=[2,2]",
                "model.net.filters=[8,16,32]", "model.roi_size=[16,16,16]"],
    # overlap 0.25 instead of VISTA3D's 0.625: a CLI smoke test, not the fidelity test (test_vista3d_adapter)
    "vista3d": ["model.net.encoder_embed_dim=16", "model.net.blocks_down=[1,1,1]", "model.roi_size=[16,16,16]",
                "model.overlap=0.25"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUN_TINY))
def test_zero_shot_pet_runs_with_each_monai_adapter(compose_cfg, tmp_path, name):
    """The main job with model=<name> model.checkpoint=PATH: results rows for every organ of the eval
    case, stamped with the adapter's prompt kind and oracle flag (composed and run in-process: the
    subprocess path is the test above)."""
    import torch
    from hydra.utils import instantiate

    from umd_lightning.lit.run import run

    overrides = ["+experiment=zero_shot_pet", f"model={name}", *RUN_TINY[name], "model.target_spacing=[12.0,12.0,12.0]",
                 "data.eval_views=[PET_CT]"]
    torch.manual_seed(0)
    net = instantiate(compose_cfg(*overrides, "model.checkpoint=null").model).net
    ckpt = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), ckpt)
    result = run(compose_cfg(*overrides, f"model.checkpoint={ckpt}"))
    table = result["results"]
    assert len(table) and set(table.view) == {"PET_CT"}
    assert (table.status != "failed").all(), table.get("error")
    assert set(table.model) == {name}
    expected_kind = "class" if name == "vista3d" else "automatic"
    assert set(table.prompt_kind) == {expected_kind} and not table.oracle.any()
