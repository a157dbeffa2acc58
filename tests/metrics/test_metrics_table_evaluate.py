"""Results table I/O and the evaluate CLI (folders of NIfTI matched by name)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from umd_lightning import evaluate
from umd_lightning.metrics import case_metrics, metrics_metadata
from umd_lightning.results import PARQUET_META_KEY
from umd_lightning.results import read_results as read_results_table
from umd_lightning.results import write_results as write_results_table
from umd_lightning.organs import UMD13, load_label_map

# Real TotalSegmentator test scans (wasserth/TotalSegmentator, tests/reference_files, Apache-2.0).
REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def test_table_round_trip_keeps_meta_and_text_ids(tmp_path):
    table = pd.DataFrame(
        {
            "subject_id": ["001", "002"],
            "case_id": ["001_CT", "002_CT"],
            "organ": ["liver", "liver"],
            "status": ["ok", "both_empty"],
            "dice": [0.9, math.nan],
            "pred_voxels": [10, 0],
        }
    )
    meta = {**metrics_metadata(), "note": math.nan, "spacing": np.float32(2.0)}
    paths = write_results_table(table, meta, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == ["results.csv", "results.meta.json", "results.parquet"]
    on_disk = json.loads(paths["meta"].read_text())
    assert on_disk["empty_policy"] == "worst" and on_disk["note"] is None and on_disk["spacing"] == 2.0
    import pyarrow.parquet as pq

    assert json.loads(pq.read_schema(paths["parquet"]).metadata[PARQUET_META_KEY]) == on_disk
    for source in (tmp_path / "run", paths["csv"], paths["parquet"], paths["meta"]):
        got, got_meta = read_results_table(source)
        assert got_meta == on_disk
        assert list(got["subject_id"]) == ["001", "002"]
        pd.testing.assert_frame_equal(got, table, check_dtype=False)
    paths["parquet"].unlink()
    got, got_meta = read_results_table(tmp_path / "run")  # CSV + meta.json alone
    assert got_meta == on_disk and list(got["subject_id"]) == ["001", "002"]
    with pytest.raises(FileNotFoundError, match="no results table"):
        read_results_table(tmp_path / "nowhere")


# --------------------------------------------------------------------------- evaluate CLI


def _save(path: Path, data: np.ndarray, spacing=(1.5, 1.0, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = np.zeros((20, 22, 18), np.uint8)
    pred = np.zeros_like(ref)
    for label in (3, 4, 11):
        lo = rng.integers(1, 8, 3)
        ref[lo[0] : lo[0] + 6, lo[1] : lo[1] + 7, lo[2] : lo[2] + 5] = label
        lo = lo + rng.integers(-1, 2, 3)
        pred[lo[0] : lo[0] + 6, lo[1] : lo[1] + 7, lo[2] : lo[2] + 5] = label
    return pred, ref


def test_evaluate_folder_matches_case_metrics(tmp_path, capsys):
    cases = {f"case_{i}": _case(i) for i in range(3)}
    for name, (pred, ref) in cases.items():
        _save(tmp_path / "pred" / f"{name}.nii.gz", pred)
        _save(tmp_path / "ref" / f"{name}.nii.gz", ref)
    out = tmp_path / "out" / "eval.csv"
    rc = evaluate.main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out), "--tolerance", "2,liver=3", "--view", "CT"])
    assert rc == 0
    table, meta = read_results_table(out)
    assert (tmp_path / "out" / "eval.parquet").is_file() and (tmp_path / "out" / "eval.meta.json").is_file()
    assert meta["n_cases"] == 3 and meta["n_failed"] == 0 and meta["organ_set"] == "umd13"
    assert meta["nsd_tolerance_mm"]["liver"] == 3.0 and meta["nsd_tolerance_mm"]["aorta"] == 2.0
    assert len(table) == 3 * len(UMD13.labels) and set(table["view"]) == {"CT"}
    tol = {o: 3.0 if o == "liver" else 2.0 for o in UMD13.organs}
    for name, (pred, ref) in cases.items():
        want = pd.DataFrame(case_metrics(pred, ref, (1.5, 1.0, 2.0), UMD13.labels, nsd_tolerance=tol))
        got = table[table.case_id == name].reset_index(drop=True)[want.columns]
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert "3/3 cases evaluated" in capsys.readouterr().out


def test_evaluate_reports_unmatched_and_mismatched_files(tmp_path, capsys):
    pred, ref = _case(0)
    _save(tmp_path / "pred" / "good.nii.gz", pred)
    _save(tmp_path / "ref" / "good.nii.gz", ref)
    _save(tmp_path / "pred" / "shape.nii.gz", pred[:-1])
    _save(tmp_path / "ref" / "shape.nii.gz", ref)
    _save(tmp_path / "pred" / "affine.nii.gz", pred, spacing=(1.0, 1.0, 2.0))
    _save(tmp_path / "ref" / "affine.nii.gz", ref)
    _save(tmp_path / "pred" / "orphan.nii.gz", pred)
    _save(tmp_path / "ref" / "nopred.nii.gz", ref)
    _save(tmp_path / "pred" / "ids.nii.gz", (pred * 10).astype(np.uint8))
    _save(tmp_path / "ref" / "ids.nii.gz", ref)
    (tmp_path / "pred" / "broken.nii.gz").write_bytes(b"not a nifti")
    _save(tmp_path / "ref" / "broken.nii.gz", ref)
    (tmp_path / "pred" / "notes.txt").write_text("ignored")
    rc = evaluate.main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    table, meta = read_results_table(tmp_path / "out")
    status = table.groupby("case_id")["status"].agg(lambda s: set(s)).to_dict()
    assert status.pop("good") <= {"ok", "both_empty"}
    assert all(s == {"failed"} for s in status.values()) and len(status) == 6
    errors = {f["case_id"]: f["error"] for f in meta["failed_cases"]}
    assert "grid (19, 22, 18) differs" in errors["shape"] and "shape.nii.gz" in errors["shape"]
    assert "affine differs" in errors["affine"]
    assert "prediction has no reference" in errors["orphan"] and "orphan.nii.gz" in errors["orphan"]
    assert "reference has no prediction" in errors["nopred"]
    assert "outside organ set" in errors["ids"] and "--label-map" in errors["ids"]
    assert "cannot read NIfTI" in errors["broken"] and "broken.nii.gz" in errors["broken"]
    for case_id, msg in errors.items():
        assert msg in err
        assert set(table[table.case_id == case_id]["error"]) == {msg}


def test_evaluate_bad_arguments_exit_2(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert evaluate.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), "--tolerance", "kidney=2"]) == 2
    assert "unknown organ 'kidney'" in capsys.readouterr().err


def test_evaluate_unwritable_out_stops_before_scoring(tmp_path, capsys, monkeypatch):
    ref = np.zeros((6, 6, 6), np.uint8)
    _save(tmp_path / "pred" / "c.nii.gz", ref)
    _save(tmp_path / "ref" / "c.nii.gz", ref)
    (tmp_path / "file").write_text("a file where the output folder should be")

    def never(job):
        raise AssertionError("a case was scored before the output was checked")

    monkeypatch.setattr(evaluate, "evaluate_case", never)
    out = tmp_path / "file" / "results.csv"
    assert evaluate.main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out}: cannot write the results table into {out.parent}")


def test_parse_tolerance():
    organs = ("liver", "aorta")
    assert evaluate.parse_tolerance("2.5", organs) == 2.5
    assert evaluate.parse_tolerance("2,aorta=1", organs) == {"liver": 2.0, "aorta": 1.0}
    with pytest.raises(ValueError, match="no value for liver"):
        evaluate.parse_tolerance("aorta=1", organs)


def test_evaluate_real_pair_with_label_map(tmp_path):
    """TotalSegmentator's fast model against its full model, both mapped with --label-map total,
    with two workers."""
    if not (REAL / "example_seg.nii.gz").is_file():
        pytest.skip(f"real test scans not found at {REAL}")
    for folder, name in (("pred", "example_seg_fast.nii.gz"), ("ref", "example_seg.nii.gz")):
        (tmp_path / folder).mkdir()
        for case in ("a", "b"):
            (tmp_path / folder / f"{case}.nii.gz").symlink_to(REAL / name)
    out = tmp_path / "res.parquet"
    rc = evaluate.main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(out), "--label-map", "total", "--workers", "2"])
    assert rc == 0
    table, meta = read_results_table(out)
    assert meta["pred_label_map"] == meta["ref_label_map"] == "total"
    lm = load_label_map("total")
    ref_img = nib.load(str(REAL / "example_seg.nii.gz"))
    ref = lm.apply(np.asarray(ref_img.dataobj), UMD13)
    pred = lm.apply(np.asarray(nib.load(str(REAL / "example_seg_fast.nii.gz")).dataobj), UMD13)
    covered = lm.organs_covered(UMD13)
    want = pd.DataFrame(case_metrics(pred, ref, ref_img.header.get_zooms()[:3], UMD13.labels, organs_predicted=covered))
    for case in ("a", "b"):
        got = table[table.case_id == case].reset_index(drop=True)[want.columns]
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    liver = table[(table.case_id == "a") & (table.organ == "liver")].iloc[0]
    assert liver["status"] == "ok" and liver["dice"] > 0.95
