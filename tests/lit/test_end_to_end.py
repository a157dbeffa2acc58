"""A real Trainer fit + test on a tiny cohort, then the main job on the exported weights."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from umd_lightning.lit.run import run
from umd_lightning.results import FAILURE_COLUMNS, read_results as read_results_table
from umd_lightning.organs import UMD13, VIEWS

pytestmark = pytest.mark.slow


def test_pretrain_then_zero_shot(compose_cfg, tmp_path):
    cfg = compose_cfg("+experiment=pretrain_ct", "trainer.max_epochs=2", "data.eval_views=[CT,PET_CT]")
    out = run(cfg)
    run_dir = out["output_dir"]
    weights = out["checkpoint"]
    state = torch.load(weights, weights_only=True)
    assert any(k.startswith("model.") for k in state)  # MONAI UNet's own keys, no Lightning prefix
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["seed"] == 0 and card["command"].startswith("python -m umd_lightning")
    splits = json.loads((run_dir / "splits.json").read_text())["splits"]
    assert len(splits["test"]) == 1 and not set(splits["test"]) & set(splits["train"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    table = out["results"]
    assert set(table.view) == {"CT", "PET_CT"}
    assert len(table) == len(splits["test"]) * 2 * len(UMD13.organs)

    cfg = compose_cfg("+experiment=zero_shot_pet", f"model.checkpoint={weights}", f"paths.output_dir={tmp_path / 'zs'}")
    out = run(cfg)
    table, meta = read_results_table(tmp_path / "zs" / "results.parquet")
    assert meta["empty_policy"] == "worst" and meta["model"] == "unet_ct"
    # One row per test subject x view x organ, all four views, all 13 organs.
    assert len(table) == len(splits["test"]) * len(VIEWS) * len(UMD13.organs)
    assert set(table.view) == set(VIEWS) and set(table.organ) == set(UMD13.organs)
    assert table.groupby(["case_id", "organ"]).size().max() == 1
    assert table.dice.dropna().between(0, 1).all() and table.hd95.dropna().ge(0).all()
    csv = pd.read_csv(tmp_path / "zs" / "results.csv")
    assert len(csv) == len(table)
    # The failure-mode columns: components wherever something is predicted, SUV means on PET views only.
    assert set(FAILURE_COLUMNS) <= set(csv.columns)
    predicted = csv[csv.pred_voxels > 0]
    assert (predicted.n_components >= 1).all() and (csv[csv.pred_voxels == 0].n_components == 0).all()
    assert predicted[predicted.ref_voxels > 0].farthest_component_mm.ge(0).all()
    pet = csv.view.isin(["PET_CT", "PET_MRI"])
    assert csv[~pet][["suv_mean_pred", "suv_mean_ref"]].isna().all(axis=None)
    assert csv[pet & (csv.ref_voxels > 0)].suv_mean_ref.gt(0).all()
    assert {p.name for p in (tmp_path / "zs" / "predictions").iterdir()} == {f"{c}.nii.gz" for c in set(table.case_id)}
