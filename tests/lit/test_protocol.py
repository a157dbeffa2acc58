"""The study's protocol as one sweep: random-weight models in their upstream formats on the built-in cohort,
one combined report, and the models without weights listed as skipped with the override that enables them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from umd_lightning.results import read_results

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models"))

from upstream.nnunet import make_nnunet_model_folder  # noqa: E402
from upstream.sam_med3d import TINY_KWARGS, make_sam_med3d_checkpoint  # noqa: E402
from upstream.vista3d import TINY_EMBED_DIM, make_vista3d_checkpoint  # noqa: E402


def _kwargs(d: dict) -> str:
    return "{" + ",".join(f"{k}:{v}".replace(" ", "") for k, v in d.items()) + "}"


@pytest.mark.slow
def test_umd_protocol_runs_the_models_side_by_side(tmp_path, tiny_cohort, cache_dir):
    nnunet = make_nnunet_model_folder(tmp_path / "nnunet", tiny_cohort, views=("CT",))
    sam = make_sam_med3d_checkpoint(tmp_path / "sam")
    vista = make_vista3d_checkpoint(tmp_path / "vista", tiny=True)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "umd_lightning", "-m", "+experiment=umd_protocol",
        f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache_dir}", "logger=csv",
        "data.source.n_subjects=3", "data.source.scale=3.0", "data.source.workers=1", "data.splits.n_test=1",
        "data.eval_views=[CT,PET_CT]", "data.num_workers=0",
        "model=nnunet,sam_med3d_turbo,vista3d,segvol,totalsegmentator",
        f"per_model.nnunet.model_folder={nnunet}",
        "++per_model.nnunet.use_mirroring=false",
        f"per_model.sam_med3d_turbo.checkpoint={sam}",
        f"++per_model.sam_med3d_turbo.model_kwargs={_kwargs(TINY_KWARGS)}",
        f"per_model.vista3d.checkpoint={vista}",
        # the tiny VISTA3D at a coarse grid and window: the protocol's wiring, not VISTA3D's speed
        f"++per_model.vista3d.net.encoder_embed_dim={TINY_EMBED_DIM}",
        "++per_model.vista3d.target_spacing=[16.0,16.0,16.0]", "++per_model.vista3d.roi_size=[32,32,32]",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]

    protocol = pd.read_csv(sweep / "report" / "protocol.csv").set_index("model")
    assert set(protocol.index) == {"nnunet", "sam_med3d_turbo", "vista3d", "segvol", "totalsegmentator"}
    ran = protocol[protocol.status == "ran"]
    assert set(ran.index) == {"nnunet", "sam_med3d_turbo", "vista3d"}, protocol.to_string()
    # each model with the prompt kind the study gives it
    assert ran.loc["nnunet", "prompt_kind"] == "automatic"
    assert ran.loc["sam_med3d_turbo", "prompt_kind"] == "point" and bool(ran.loc["sam_med3d_turbo", "oracle"])
    assert ran.loc["vista3d", "prompt_kind"] == "class"
    assert (ran["cases"] == 2).all() and (ran["failed_cases"] == 0).all()
    # a model without weights: skipped, with the overrides that enable it
    assert protocol.loc["segvol", "status"] == "skipped"
    assert "per_model.segvol.checkpoint=PATH" in protocol.loc["segvol", "note"]
    assert "per_model.segvol.code_dir=PATH" in protocol.loc["segvol", "note"]
    assert "per_model.totalsegmentator.weights_dir=PATH" in protocol.loc["totalsegmentator", "note"]

    # the combined report holds the three models side by side, from their own run folders' tables
    report = (sweep / "report" / "report.html").read_text()
    for model in ("nnunet", "sam_med3d_turbo", "vista3d"):
        assert model in report
        table, meta = read_results(sweep / model)
        assert set(table["view"]) == {"CT", "PET_CT"} and meta["model"] == model
        assert meta["preprocessing"]  # each adapter states its own preprocessing
    assert "segvol: skipped" in report
    disc = pd.read_csv(sweep / "report" / "discrepancy.csv")
    assert {"nnunet", "sam_med3d_turbo", "vista3d"} <= set(disc["model"])
