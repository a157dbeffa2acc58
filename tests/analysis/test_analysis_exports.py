"""challengeR long table, nnU-Net summary.json (TP/FP/FN against a hand count) and the methods block."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from umd_lightning.analysis.demo import demo_results
from umd_lightning.analysis.exports import challenger_table, confusion_counts, summary_json
from umd_lightning.analysis.methods import SPACING_FROM_HEADER, SPACING_FROM_VOLUME, nsd_tolerance_note, voxel_spacing
from umd_lightning.analysis.report import analyze, write_analysis


def masks():
    """A 6x6x4 reference box and a prediction shifted by one voxel, plus a label the prediction misses."""
    ref = np.zeros((8, 8, 6), bool)
    ref[1:7, 1:7, 1:5] = True  # 144 voxels
    pred = np.roll(ref, 1, axis=0)
    return ref, pred


def test_confusion_counts_equal_a_hand_count_on_a_tiny_mask():
    ref, pred = masks()
    tp, fp, fn = int((ref & pred).sum()), int((pred & ~ref).sum()), int((ref & ~pred).sum())
    assert (tp, fp, fn) == (120, 24, 24)
    dice = 2 * tp / (pred.sum() + ref.sum())
    c = confusion_counts(np.array([dice, 0.0, np.nan]), np.array([pred.sum(), 0, 0.0]), np.array([ref.sum(), 50, 0.0]))
    assert (c["TP"][0], c["FP"][0], c["FN"][0]) == (tp, fp, fn)
    assert c["IoU"][0] == pytest.approx(tp / (ref | pred).sum()) and c["Dice"][0] == pytest.approx(dice)
    assert (c["TP"][1], c["FN"][1], c["Dice"][1]) == (0, 50, 0.0)  # missed organ
    assert np.isnan(c["Dice"][2]) and np.isnan(c["IoU"][2]) and c["TP"][2] == 0  # both empty: nnU-Net's NaN


def test_summary_json_has_nnunets_layout_and_recomputes_the_table():
    df, _ = demo_results(n_subjects=2, organs=("liver", "spleen"))
    s = summary_json(df)
    assert {"foreground_mean", "mean", "metric_per_case"} <= set(s)
    case = next(c for c in s["metric_per_case"] if c["case_id"] == "sub-000_CT")
    assert set(case) >= {"prediction_file", "reference_file", "metrics"} and set(case["metrics"]) == {"4", "5"}
    liver = df[(df.case_id == "sub-000_CT") & (df.organ == "liver")].iloc[0]
    m = case["metrics"]["4"]
    assert (m["n_pred"], m["n_ref"]) == (liver.pred_voxels, liver.ref_voxels)
    assert m["TP"] + m["FN"] == m["n_ref"] and m["TP"] + m["FP"] == m["n_pred"]
    assert m["Dice"] == pytest.approx(2 * m["TP"] / (m["n_pred"] + m["n_ref"])) == pytest.approx(liver.dice, abs=1e-5)
    dice_4 = [c["metrics"]["4"]["Dice"] for c in s["metric_per_case"] if "4" in c["metrics"] and c["metrics"]["4"]["Dice"] is not None]
    assert s["mean"]["4"]["Dice"] == pytest.approx(np.mean(dice_4))
    assert s["foreground_mean"]["Dice"] == pytest.approx(np.mean([s["mean"][k]["Dice"] for k in s["mean"]]))
    assert set(s["mean_per_view"]) == {"CT", "PET_CT", "MRI", "PET_MRI"}
    json.dumps(s, allow_nan=False)  # strict JSON
    two = summary_json(demo_results(n_subjects=2, models=("a", "b"), organs=("liver",))[0])
    assert set(two["models"]) == {"a", "b"}


def test_challenger_table_is_long_and_drops_both_empty_rows():
    df, _ = demo_results(n_subjects=3, organs=("liver", "spleen"))
    ch = challenger_table(df, ["dice", "hd95"])
    assert list(ch.columns) == ["case", "task", "alg_name", "metric", "value"]
    n_cells = len(df[df.status != "both_empty"])
    assert len(ch) == 2 * n_cells and set(ch["case"]) == set(df["subject_id"])
    assert "liver|PET_CT" in set(ch["task"])
    r = df[(df.subject_id == "sub-001") & (df.view == "MRI") & (df.organ == "spleen")].iloc[0]
    got = ch[(ch.case == "sub-001") & (ch.task == "spleen|MRI") & (ch.metric == "dice")]["value"].item()
    assert got == pytest.approx(r.dice)


def test_voxel_spacing_from_label_headers_else_from_voxel_volumes(tmp_path):
    df, _ = demo_results(n_subjects=1, organs=("liver",))
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.diag([3.0, 3.0, 4.0, 1.0])), str(label))
    df["label"] = np.where(df["view"].isin(["CT", "PET_CT"]), str(label), "")
    df["ref_voxels"] = 1000
    df["ref_volume_ml"] = 1000 * 3.5 * 3.5 * 5.0 / 1000.0  # 61.25 mm^3 voxels
    sp = voxel_spacing(df)
    assert sp["CT"] == {"min": 3.0, "max": 4.0, "source": SPACING_FROM_HEADER}
    assert sp["MRI"]["source"] == SPACING_FROM_VOLUME and sp["MRI"]["max"] == pytest.approx(61.25 ** (1 / 3))
    note = nsd_tolerance_note(2.0, sp)
    assert "below the voxel edge" in note and "CT 3-4 mm" in note and "from voxel volumes" in note
    assert nsd_tolerance_note(5.0, sp) == ""


def test_analyze_writes_the_new_tables_summary_and_methods(tmp_path):
    df, meta = demo_results(n_subjects=4, organs=("liver", "spleen", "aorta"))
    a = analyze(df, meta, metrics=["dice", "hd95"], n_boot=200, figures=False)
    written = write_analysis(a, tmp_path, write_report_html=False)
    for name in ("headline.csv", "ranking.csv", "ranking_pairs.csv", "challenger.csv", "summary.json"):
        assert (tmp_path / name).is_file(), name
    methods = json.loads((tmp_path / "analysis.meta.json").read_text())["methods"]
    assert methods["correction"].startswith("Holm") and methods["nsd_tolerance_mm"] == 2.0
    assert "needs at least 7 subjects" in methods["subjects_needed"]  # 3 organs: 3 * 2/2^7 = 0.047 < 0.05
    assert any("With 4 subjects" in c for c in methods["caveats"])
    head = pd.read_csv(written["tables"]["headline"])
    assert head["underpowered"].all() and head["sentence"].str.startswith("On ").all()
    disc = pd.read_csv(written["tables"]["discrepancy"])
    assert {"n_nonzero", "min_attainable_p", "underpowered", "k_worse", "n_compared", "sign_consistent", "ci_method",
            "dz_flag", "both_failed"} <= set(disc.columns)
