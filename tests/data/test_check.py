"""python -m umd_lightning.check: a table of every unusable case, exit 1 when any, 0 when none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from umd_lightning.check import check_manifest, main, parse_option
from umd_lightning.data.manifest import Manifest, ScanRecord

REPO = Path(__file__).resolve().parents[2]


def save(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A pattern-layout folder: good subject s1, and s2 with one problem per scan."""
    rng = np.random.default_rng(0)
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:5, 2:5, 1:4] = 4  # liver
    for s in ("s1", "s2"):
        save(tmp_path / s / "petct" / "ct.nii.gz", rng.normal(0, 50, (8, 8, 6)).astype(np.int16))
        save(tmp_path / s / "petct" / "pet.nii.gz", rng.gamma(2.0, 1.0, (4, 4, 3)).astype(np.float32),
             np.diag([4.0, 4.0, 6.0, 1.0]))
        save(tmp_path / s / "petct" / "label.nii.gz", label)
        save(tmp_path / s / "petmri" / "mri.nii.gz", rng.uniform(0, 500, (8, 8, 6)).astype(np.float32))
        save(tmp_path / s / "petmri" / "label.nii.gz", label)
    bad = tmp_path / "s2"
    pet = rng.gamma(2.0, 1.0, (4, 4, 3)).astype(np.float32)
    pet[0, 0, 0] = np.nan
    save(bad / "petct" / "pet.nii.gz", pet, np.diag([4.0, 4.0, 6.0, 1.0]))  # NaN in PET
    wrong = label.copy()
    wrong[0, 0, 0] = 42  # an id outside umd13
    save(bad / "petct" / "label.nii.gz", wrong)
    save(bad / "petmri" / "label.nii.gz", label[:, :, :5])  # MRI label on another grid
    return tmp_path


def test_check_reports_every_unusable_case(folder, capsys):
    code = main(["--layout", "pattern", "--root", str(folder), "--option", "images={subject}/{session}/{view}.nii.gz",
                 "--option", "labels={subject}/{session}/label.nii.gz"])
    out = capsys.readouterr().out
    assert code == 1
    # s2's three scans are unusable (the PET/CT label is shared by CT and PET_CT); s1 is fine.
    for case, problem in [
        ("s2_PET_CT", "NaN"),
        ("s2_CT", "label ids [42]"),
        ("s2_MRI", "does not match image"),
    ]:
        line = next((ln for ln in out.splitlines() if case in ln), "")
        assert line, f"{case} missing from\n{out}"
    assert "NaN" in out and "[42]" in out and "does not match" in out
    assert "s1_" not in out
    assert "6 case(s) of 2 subject(s)" in out and "3 usable, 3 unusable" in out


def test_check_passes_a_good_dataset(folder, capsys):
    import shutil

    shutil.rmtree(folder / "s2")
    code = main(["--layout", "pattern", "--root", str(folder), "--option", "images={subject}/{session}/{view}.nii.gz",
                 "--option", "labels={subject}/{session}/label.nii.gz"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 case(s) of 1 subject(s)" in out and "3 usable, 0 unusable" in out


def test_check_missing_labels_and_files(folder, tmp_path, capsys):
    manifest = Manifest(
        [
            ScanRecord("s1", "petct", "CT", folder / "s1" / "petct" / "ct.nii.gz", None),
            ScanRecord("s3", "petct", "CT", folder / "s3" / "ct.nii.gz", folder / "s3" / "label.nii.gz"),
        ],
        "test",
    )
    findings = check_manifest(manifest)
    assert {(f.case_id, f.problem) for f in findings} == {
        ("s1_CT", "no reference label"),
        ("s3_CT", "file not found"),
    }
    assert [f.case_id for f in check_manifest(manifest, require_labels=False)] == ["s3_CT"]
    csv = manifest.write_csv(tmp_path / "m.csv")
    assert main(["--manifest", str(csv)]) == 1
    assert main(["--manifest", str(csv), "--allow-missing-labels"]) == 1  # s3 still has no files


def test_check_warns_about_bq_per_ml_pet(folder, capsys):
    # A PET in Bq/ml (thousands) instead of SUV: warned, not an error.
    save(folder / "s1" / "petct" / "pet.nii.gz", np.full((4, 4, 3), 12000.0, np.float32), np.diag([4.0, 4.0, 6.0, 1.0]))
    manifest = Manifest([ScanRecord("s1", "petct", "PET_CT", folder / "s1" / "petct" / "pet.nii.gz",
                                    folder / "s1" / "petct" / "label.nii.gz")])
    findings = check_manifest(manifest)
    assert [(f.level, f.case_id) for f in findings] == [("warning", "s1_PET_CT"), ("warning", "s1_PET_CT")]
    assert any("Bq/ml" in f.problem for f in findings) and any("no CT scan" in f.problem for f in findings)


def test_unreadable_dataset_exits_2(tmp_path, capsys):
    assert main(["--layout", "nnunet", "--root", str(tmp_path)]) == 2
    assert "dataset.json not found" in capsys.readouterr().err
    assert main(["--layout", "nnunet"]) == 2


def test_check_names_a_symlink_loop_or_a_file_given_as_the_root(folder, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main(["--layout", "pattern", "--root", str(loop), "--option", "images={subject}/{session}/{view}.nii.gz"]) == 2
    err = capsys.readouterr().err
    assert f"{loop}: is a symbolic link loop" in err.replace("\n", "") and "Traceback" not in err
    assert main(["--layout", "nnunet", "--root", str(folder / "s1" / "petct" / "ct.nii.gz")]) == 2
    assert "ct.nii.gz: is a file, not a nnU-Net dataset folder" in capsys.readouterr().err.replace("\n", "")
    assert main(["--manifest", str(folder)]) == 2
    assert f"{folder}: is a folder, not a manifest file" in capsys.readouterr().err.replace("\n", "")


def test_parse_option():
    assert parse_option("label_map=total") == ("label_map", "total")
    assert parse_option("channel_views={0: CT, 1: skip}") == ("channel_views", {0: "CT", 1: "skip"})
    assert parse_option("images={subject}/{view}.nii.gz") == ("images", "{subject}/{view}.nii.gz")


def test_check_module_entry_on_real_scans(real_data_dir, tmp_path):
    """The real scans (TotalSegmentator tests/reference_files, Apache-2.0) as a pattern folder, labels mapped."""
    import shutil

    for subject, session, view, image, seg in [
        ("ct01", "petct", "ct", "example_ct_sm.nii.gz", "example_seg.nii.gz"),
        ("mr01", "petmri", "mri", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),
    ]:
        (tmp_path / subject / session).mkdir(parents=True)
        shutil.copy(real_data_dir / image, tmp_path / subject / session / f"{view}.nii.gz")
        shutil.copy(real_data_dir / seg, tmp_path / subject / session / "label.nii.gz")
    base = [sys.executable, "-m", "umd_lightning.check", "--layout", "pattern", "--root", str(tmp_path),
            "--option", "images={subject}/{session}/{view}.nii.gz", "--option", "labels={subject}/{session}/label.nii.gz",
            "--option", f"cache_dir={tmp_path / 'cache'}"]
    raw = subprocess.run(base, capture_output=True, text=True, cwd=REPO, timeout=300)
    # TotalSegmentator ids (up to 90) are outside umd13 until mapped.
    assert raw.returncode == 1 and "outside" in raw.stdout and "umd13" in raw.stdout
    mapped = subprocess.run(base + ["--option", "label_map={CT: total, MRI: total_mr}"], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    assert "2 usable, 0 unusable" in mapped.stdout
