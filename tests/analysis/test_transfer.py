"""Transfer matrix from run folders: hand-computed means and paired differences, CIs, files, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from umd_lightning.analysis.transfer import find_runs, load_runs, main, run_info, transfer_matrix, write_transfer_matrix

ORGANS = ("liver", "spleen")
SUBJECTS = ("s1", "s2", "s3")


def make_run(folder, recipe, k_shot, dice, *, checkpoint=None, failed=(), views=("CT", "PET_CT")):
    """A run folder: run_manifest.json with the resolved config, results.csv with
    ``dice[(subject, view)] = (liver, spleen)``."""
    folder.mkdir(parents=True)
    config = {
        "task_name": recipe,
        "data": {"k_shot": k_shot, "train_views": ["CT"] if recipe == "finetune_ct" else ["PET_CT", "PET_MRI"]},
        "model": {"checkpoint": checkpoint},
        "module": {"init_checkpoint": None, "freeze": []},
    }
    (folder / "run_manifest.json").write_text(json.dumps({"config": config}))
    rows = []
    for subject in SUBJECTS:
        for view in views:
            case = f"{subject}_{view}"
            for i, organ in enumerate(ORGANS):
                bad = case in failed
                rows.append(
                    {"model": recipe, "subject_id": subject, "view": view, "case_id": case, "organ": organ,
                     "dice": np.nan if bad else dice[(subject, view)][i], "status": "failed" if bad else "ok"}
                )
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def _dice(base: float, pet_drop: float) -> dict:
    # liver/spleen of subject j: base + 0.1 j and base + 0.1 j - 0.2; PET views lower by pet_drop
    out = {}
    for j, s in enumerate(SUBJECTS):
        for view, drop in (("CT", 0.0), ("PET_CT", pet_drop)):
            out[(s, view)] = (base + 0.1 * j - drop, base + 0.1 * j - 0.2 - drop)
    return out


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "multirun" / "stamp"
    make_run(root / "0", "finetune_ct", 1, _dice(0.6, 0.5))
    make_run(root / "1", "finetune_pet", "all", _dice(0.4, 0.0), failed=("s3_CT",))
    make_run(root / "2", "finetune_ct", None, _dice(0.7, 0.6))
    make_run(root / "3", "finetune_pet", 1, _dice(0.5, -0.1))
    (root / "multirun.yaml").write_text("{}")
    return root


def test_run_info_reads_the_manifest(sweep):
    info = run_info(sweep / "2")
    assert (info.recipe, info.k_shot, info.init) == ("finetune_ct", "all", "scratch")
    assert info.label == "finetune_ct (k=all)"
    assert find_runs([sweep]) == [sweep / n for n in "0123"]


def test_matrix_means_and_paired_differences_by_hand(sweep):
    table = transfer_matrix(load_runs([sweep]), n_boot=500, seed=3)
    # rows: CT recipe first, then PET; k ascending with "all" last; views in VIEWS order
    assert list(zip(table.recipe, table.k_shot, table.view)) == [
        ("finetune_ct", "1", "CT"), ("finetune_ct", "1", "PET_CT"), ("finetune_ct", "all", "CT"),
        ("finetune_ct", "all", "PET_CT"), ("finetune_pet", "1", "CT"), ("finetune_pet", "1", "PET_CT"),
        ("finetune_pet", "all", "CT"), ("finetune_pet", "all", "PET_CT"),
    ]
    cell = table.set_index(["recipe", "k_shot", "view"])
    # subject j's case mean is base + 0.1 j - 0.1 - drop; the mean over j = 0, 1, 2 is base - drop
    assert cell.loc[("finetune_ct", "1", "PET_CT"), "mean"] == pytest.approx(0.6 - 0.5)
    assert cell.loc[("finetune_pet", "1", "PET_CT"), "mean"] == pytest.approx(0.5 + 0.1)
    # the failed case is left out of the mean and counted: subjects 0 and 1 only
    assert cell.loc[("finetune_pet", "all", "CT"), "mean"] == pytest.approx(np.mean([0.4 - 0.1, 0.4]))
    assert cell.loc[("finetune_pet", "all", "CT"), ["n_subjects", "n_failed_cases"]].tolist() == [2, 1]
    # paired against finetune_ct at the same k: constant differences, so the CI collapses onto them
    row = cell.loc[("finetune_pet", "1", "PET_CT")]
    assert row["delta"] == pytest.approx(0.6 - 0.1) and row["n_pairs"] == 3 and row["reference"] == "finetune_ct"
    assert row["delta_ci_low"] == pytest.approx(0.5) and row["delta_ci_high"] == pytest.approx(0.5)
    # finetune_pet k=all pairs with finetune_ct k=all (subjects 0, 1 on CT: the failed one has no pair)
    row = cell.loc[("finetune_pet", "all", "CT")]
    assert row["delta"] == pytest.approx(-0.3) and row["n_pairs"] == 2
    assert np.isnan(cell.loc[("finetune_ct", "1", "CT"), "delta"])
    # CI of the mean over subjects: inside the range of the subject values, around the mean
    row = cell.loc[("finetune_ct", "1", "CT")]
    values = [0.6 + 0.1 * j - 0.1 for j in range(3)]
    assert min(values) <= row["ci_low"] < row["mean"] < row["ci_high"] <= max(values)


def test_bootstrap_is_seeded(sweep):
    a = transfer_matrix(load_runs([sweep]), n_boot=300, seed=1)
    b = transfer_matrix(load_runs([sweep]), n_boot=300, seed=1)
    pd.testing.assert_frame_equal(a, b)


def test_files_and_cli(sweep, tmp_path, capsys):
    table, written = write_transfer_matrix([sweep], tmp_path / "out", n_boot=200)
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cols = ["recipe", "k_shot", "view", "mean", "ci_low", "ci_high", "delta", "n_subjects"]
    pd.testing.assert_frame_equal(pd.read_csv(written["csv"], dtype={"k_shot": str})[cols], table[cols], check_dtype=False)
    assert main([str(sweep), "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "finetune_pet (k=1)" in out and "finetune_pet (k=1) - finetune_ct on PET_CT: +0.500" in out
    assert (sweep / "transfer_matrix.csv").is_file()


def test_errors_name_the_folder(sweep, tmp_path):
    assert main([str(tmp_path / "nowhere")]) == 2
    shutil.copytree(sweep / "0", tmp_path / "copy")
    with pytest.raises(ValueError, match=r"both finetune_ct \(k=1\)"):
        load_runs([sweep, tmp_path / "copy"])  # a sweep and a copy of one of its runs
    make_run(tmp_path / "other" / "0", "finetune_ct", 1, _dice(0.1, 0.0), checkpoint="/x/unet_ct.pt")
    info = run_info(tmp_path / "other" / "0")
    assert info.init == "unet_ct" and info.label == "finetune_ct (k=1, unet_ct)"
