"""What the run makes after the test loop: the table built from the journal, the analysis and its
wandb logging (an offline WandbLogger whose files we read)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from umd_lightning.analysis.demo import demo_results
from umd_lightning.lit.outputs import NOT_SCORED, RunAnalysis, build_table, view_means, wandb_frame
from umd_lightning.organs import get_organ_set
from umd_lightning.results import write_case

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def nifti_case(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    lab = np.zeros((14, 14, 10), np.uint8)
    lab[3:10, 4:11, 2:8] = 4
    lab[9:12, 2:5, 3:6] = 11
    arrays = {"image": np.random.default_rng(0).normal(0, 1, lab.shape).astype(np.float32),
              "label": lab, "prediction": np.roll(lab, 1, axis=1)}
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.diag([-2.0, -2.0, 3.0, 1.0])), paths[name])
    return paths


def results(tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    df, meta = demo_results(n_subjects=5, models=("tiny",), organs=("liver", "aorta"), seed=2)
    for k, v in nifti_case(tmp_path / "nii").items():
        df[k] = v
    df["error"] = np.where(df["status"] == "missed", "predicted nothing", None)  # NaN mixed with text
    meta["model"] = "tiny"
    return df, meta


def media(run: Path, kind: str, key: str) -> list[Path]:
    """Files wandb 0.31 writes offline for a logged key: files/media/<kind>/<key>_<step>_<hash>.<ext>."""
    folder = run / "files" / "media" / kind / Path(key).parent
    return sorted(folder.glob(f"{Path(key).name}_*"))


def wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-*.wandb`` file (a LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header each: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer: padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            chunks = []
            yield rec


def summary_values(run: Path) -> dict[str, object]:
    """The run's final summary: ``{key: value}`` from its summary records (later updates win)."""
    out: dict[str, object] = {}
    for rec in wandb_records(next(run.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def test_offline_wandb_run_holds_results_discrepancy_and_figures(tmp_path):
    import hashlib

    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from umd_lightning.lit.outputs import write_table

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="umd-test", name="zero_shot_pet")
    df, meta = results(tmp_path)
    run_dir = tmp_path / "run"
    try:
        write_table(df, meta, run_dir, [logger])
        RunAnalysis(n_boot=200, seed=1, metrics=["dice", "hd95"], dpi=40)(df, meta, run_dir, [logger])
    finally:
        wandb.finish()

    # run folder: tables, figures (overlays included, PNG and SVG) and a report holding every figure
    disc = pd.read_csv(run_dir / "discrepancy.csv")
    assert set(disc["pair_kind"]) == {"CT_vs_PET_CT", "MRI_vs_PET_MRI", "CT_vs_MRI", "PET_CT_vs_PET_MRI"}
    assert (run_dir / "view_summary.csv").is_file() and (run_dir / "sensitivity.csv").is_file()
    pngs = {p.stem for p in (run_dir / "figures").glob("*.png")}
    assert {"slope_tiny_dice", "heatmap_tiny_dice", "forest_tiny_dice", "forest_tiny_hd95"} <= pngs
    assert {f"overlay_tiny_{v}" for v in ("CT", "PET_CT", "MRI", "PET_MRI")} <= pngs
    assert {p.stem for p in (run_dir / "figures").glob("*.svg")} == pngs
    html = (run_dir / "report.html").read_text()
    assert html.count("<img ") == len(pngs) and "overlay_tiny_PET_CT" in html

    # the offline wandb run
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = runs[0]
    assert list(run.glob("run-*.wandb"))
    res_files = media(run, "table", "analysis/results")
    assert len(res_files) == 1
    res = json.loads(res_files[0].read_text())
    assert len(res["data"]) == len(df) and "dice" in res["columns"]
    disc_files = media(run, "table", "analysis/discrepancy")
    assert len(disc_files) == 1
    logged = json.loads(disc_files[0].read_text())
    assert logged["columns"] == list(disc.columns)
    assert len(logged["data"]) == len(disc)
    col = logged["columns"].index("mean_diff")
    np.testing.assert_allclose([r[col] for r in logged["data"]], disc["mean_diff"], rtol=1e-6)
    for name in ("view_summary", "generalisation_gap", "sensitivity"):
        assert len(media(run, "table", f"analysis/{name}")) == 1, name
    if (run_dir / "ranking.csv").is_file():  # the models' ranking, as a table
        ranking = [f for f in media(run, "table", "analysis/ranking") if f.name.split("_")[1].isdigit()]
        assert len(ranking) == 1  # (not ranking_pairs)
        assert "rank" in json.loads(ranking[0].read_text())["columns"]
    for name in pngs:
        imgs = media(run, "images", f"analysis/figures/{name}")
        assert len(imgs) == 1, name
        assert imgs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # HD95 and NSD scalars beside Dice: per view x organ and per view, the table's means
    summary = summary_values(run)
    ok = df[df["status"] != "failed"]
    for metric in ("dice", "hd95", "nsd"):
        for (view, organ), v in ok.groupby(["view", "organ"])[metric].mean().items():
            assert summary[f"test/{metric}/{view}/{organ}"] == pytest.approx(v), (metric, view, organ)
        for view, v in ok.groupby("view")[metric].mean().items():
            assert summary[f"test/{metric}/{view}/mean"] == pytest.approx(v)
    # the headline differences with their CIs, where the stats wrote a headline table
    if (run_dir / "headline.csv").is_file():
        head = pd.read_csv(run_dir / "headline.csv")
        row = head.iloc[0]
        key = f"headline/{row['model']}/{row['pair_kind']}/{row['metric']}"
        for stat in ("mean_diff", "ci_low", "ci_high"):
            assert summary[f"{key}/{stat}"] == pytest.approx(row[stat])

    # overlays as images with prediction and reference masks, one per distinct case of the view
    sel = pd.read_csv(run_dir / "selected_cases.csv")
    for view in ("CT", "PET_CT", "MRI", "PET_MRI"):
        key = f"analysis/overlays/tiny/{view}"  # the summary holds an image list's fields as sub-keys
        assert summary[f"{key}/count"] == sel.loc[sel["view"] == view, "case_id"].nunique()
        for masks in summary[f"{key}/all_masks"]:
            assert set(masks) == {"prediction", "ground_truth"}
            for m in masks.values():
                assert (run / "files" / m["path"]).is_file()
    # the reference mask is the label's axial plane through the case's worst organ
    from umd_lightning.analysis.overlay import load_case_planes, worst_organs

    case = worst_organs(df, sel[sel["view"] == "CT"]).iloc[0]
    planes = load_case_planes(case["image"], case["label"], case["prediction"], focus=int(case["worst_label"]))
    mask = plt_imread(run / "files" / summary["analysis/overlays/tiny/CT/all_masks"][0]["ground_truth"]["path"])
    ids = np.round(mask * 255).astype(int) if mask.dtype.kind == "f" else mask.astype(int)
    expected = planes.label["axial"].T[::-1, ::-1]  # display() then top row first
    assert ids.shape == expected.shape
    np.testing.assert_array_equal(ids, expected)
    assert (expected == case["worst_label"]).any()

    # report.html as an artifact of type report whose file is the run folder's report
    arts = [r.artifact for r in wandb_records(next(run.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "artifact"]
    report_arts = [a for a in arts if a.type == "report"]
    assert len(report_arts) == 1
    entry = report_arts[0].manifest.contents[0]
    assert entry.path == "report.html"
    md5 = base64.b64encode(hashlib.md5((run_dir / "report.html").read_bytes()).digest()).decode()
    assert entry.digest == md5


def plt_imread(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def test_analysis_without_wandb_and_with_unreadable_overlay_files(tmp_path, caplog):
    df, meta = results(tmp_path)
    df.loc[df["view"] == "MRI", "prediction"] = str(tmp_path / "gone.nii.gz")
    run_dir = tmp_path / "run"
    RunAnalysis(n_boot=50, metrics=["dice"], figures=False)(df, meta, run_dir, loggers=[])
    pngs = sorted(p.stem for p in (run_dir / "figures").glob("*.png"))
    assert pngs == sorted(f"overlay_tiny_{v}" for v in ("CT", "PET_CT", "PET_MRI"))
    assert (run_dir / "report.html").read_text().count("<img ") == 3
    assert "overlay skipped" in caplog.text and "gone.nii.gz" in caplog.text
    assert not (tmp_path / "wandb").exists()
    with pytest.raises(ValueError, match="n_boot"):
        RunAnalysis(n_boot=0)


def record(case_id: str, view: str = "CT") -> SimpleNamespace:
    return SimpleNamespace(case_id=case_id, subject_id=case_id.split("_")[0], session="petct", view=view,
                           image=Path(f"/d/{case_id}.nii.gz"), label=Path(f"/d/{case_id}_label.nii.gz"))


def test_table_is_built_from_the_journal_with_failed_and_unscored_cases(tmp_path):
    organs = get_organ_set({1: "liver", 2: "spleen"})
    ident = {"model": "m", "prompt_kind": "none", "oracle": False}
    for case_id, view in (("s1_PET_CT", "PET_CT"), ("s1_CT", "CT"), ("s0_CT", "CT")):
        rows = [{"subject_id": case_id.split("_")[0], "session": "petct", "view": view, "case_id": case_id, **ident,
                 "organ": o, "label_id": i, "status": "ok", "dice": 0.5} for i, o in organs.labels.items()]
        write_case(tmp_path, case_id, rows[::-1])
    write_case(tmp_path, "s9_CT", [])  # a case outside the run's scope: left out
    (tmp_path / "cases" / "s0_CT.json").write_text("{")  # corrupt: set aside, reported as not scored
    problem = SimpleNamespace(path="/d/s2_CT.nii.gz", problem="unreadable NIfTI")
    cases = [record("s1_CT"), record("s1_PET_CT", "PET_CT"), record("s0_CT")]
    table, problems = build_table(tmp_path, organs, cases, [(record("s2_CT"), problem)], ident)
    assert len(problems) == 1 and "s0_CT.json" in problems[0]
    assert list(zip(table.case_id, table.organ)) == [
        ("s0_CT", "liver"), ("s0_CT", "spleen"), ("s1_CT", "liver"), ("s1_CT", "spleen"),
        ("s1_PET_CT", "liver"), ("s1_PET_CT", "spleen"), ("s2_CT", "liver"), ("s2_CT", "spleen")]
    assert table.loc[table.case_id == "s0_CT", "error"].eq(NOT_SCORED).all()
    assert table.loc[table.case_id == "s2_CT", "error"].eq("/d/s2_CT.nii.gz: unreadable NIfTI").all()
    assert table.loc[table.status == "ok", "error"].eq("").all() and set(table.model) == {"m"}
    assert view_means(table) == {"test/dice/CT/liver": 0.5, "test/dice/CT/spleen": 0.5, "test/dice/PET_CT/liver": 0.5,
                                 "test/dice/PET_CT/spleen": 0.5, "test/dice/CT/mean": 0.5, "test/dice/PET_CT/mean": 0.5}


def test_wandb_frame_makes_mixed_columns_text():
    df = pd.DataFrame({"a": [1.0, np.nan], "err": [None, "boom"], "ok": [True, False], "n": [1, 2]})
    out = wandb_frame(df)
    assert out["err"].tolist() == ["", "boom"]
    assert out["ok"].dtype == bool and out["n"].dtype == np.int64 and np.isnan(out["a"][1])


@pytest.mark.slow
def test_zero_shot_pet_run_writes_its_analysis_and_wandb_run_by_default(compose_cfg):
    """The real job, tiny: discrepancy.csv, figures and report.html, and the offline wandb run's files."""
    pytest.importorskip("umd_lightning.lit.run")
    import wandb

    from umd_lightning.config import package_file
    from umd_lightning.lit.run import run

    no_ckpt = [] if Path(package_file("checkpoints/unet_ct.pt")).is_file() else ["model.checkpoint=null"]
    cfg = compose_cfg("+experiment=zero_shot_pet", "logger=wandb", "trainer.accelerator=cpu", *no_ckpt)
    try:
        run(cfg)
    finally:
        wandb.finish()
    out = Path(cfg.paths.output_dir)
    assert (out / "discrepancy.csv").is_file() and (out / "report.html").is_file()
    pngs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"slope_unet_ct_dice", "heatmap_unet_ct_dice", "forest_unet_ct_dice"} <= pngs
    # the reference UNet reports no Dice: no reported-vs-measured figure rather than an empty one
    assert json.loads((out / "results.meta.json").read_text())["reported_dice"] == {}
    assert "reported_vs_measured" not in pngs
    assert {p.stem for p in (out / "figures").glob("*.svg")} == pngs
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("run-*.wandb"))
    tables = {p.name.rsplit("_", 2)[0] for p in (run_dirs[0] / "files" / "media" / "table").rglob("*.table.json")}
    assert {"results", "discrepancy"} <= tables
    for name in pngs:
        assert media(run_dirs[0], "images", f"analysis/figures/{name}"), name
