"""Fault injection: a run folder ends, after one re-run, with the table and analysis of an uninterrupted
run, or the run stops with one line and nothing in the folder is lost.

Faults: kill -9 as the first case starts, after 1 and after all but one of the 4 cases, after the
last case (before the table) and during the analysis; a corrupt and a partial journal file; a
read-only run folder and a read-only ``cases/``; a manifest whose every case is bad; a re-run with
another model or other metric settings; labels stored in another axis orientation than their images. The killed jobs are real subprocesses of the main job
(``tests/lit/fault_run.py`` kills itself at the chosen point), started together at the beginning of
the module while one uninterrupted reference run is made in this process; the re-runs are made in
this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import REPO, tiny_overrides

from umd_lightning.config import config_dir
from umd_lightning.lit.folder import FINGERPRINT_FILE, RunFolderError
from umd_lightning.lit.run import run
from umd_lightning.results import CASES_DIR, SET_ASIDE_DIR, read_results

pytestmark = pytest.mark.slow

FAULT_RUN = Path(__file__).with_name("fault_run.py")
# The tiny cohort's one test subject: 4 cases (one per view). A small bootstrap and no figures keep
# the analysis quick; its tables are what is compared.
JOB = [
    "+experiment=zero_shot_pet",
    "analysis.n_boot=100",
    "analysis.figures=false",
    "analysis.overlays=false",
    "trainer.enable_progress_bar=false",
]
N_CASES = 4
ANALYSIS_TABLES = ("discrepancy.csv", "view_summary.csv", "generalisation_gap.csv", "sensitivity.csv", "selected_cases.csv")
KILLS = ("case:0", "case:1", f"case:{N_CASES - 1}", f"case:{N_CASES}", "analysis")
#: Drop the DAC override of root, so that a read-only folder is read-only to the job too.
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search", "--"]


def compose_job(out: Path, cache_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"paths.output_dir={out}", f"paths.cache_dir={cache_dir}", *tiny_overrides(*overrides), *JOB, *overrides],
        )
    GlobalHydra.instance().clear()
    return cfg


def job_command(point: str, run_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(FAULT_RUN), point, *tiny_overrides(*overrides), *JOB, f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}", *overrides]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """The table without what names its run folder."""
    table = table.drop(columns=[c for c in ("prediction",) if c in table.columns])
    return table.sort_values(["case_id", "organ"], kind="stable").reset_index(drop=True)


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """The run folder's table and analysis equal the uninterrupted run's."""
    pd.testing.assert_frame_equal(comparable(read_results(run_dir)[0]), comparable(read_results(reference)[0]))
    for name in ANALYSIS_TABLES:
        got, want = (pd.read_csv(folder / name).drop(columns=["prediction"], errors="ignore") for folder in (run_dir, reference))
        pd.testing.assert_frame_equal(got, want, obj=name)
    assert (run_dir / "analysis.meta.json").is_file() and (run_dir / "report.html").is_file()


def snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file but Hydra's own (its config copy and log are rewritten by each start)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


def journal_times(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / CASES_DIR).glob("*.json")}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_cohort, cache_dir):
    """The killed jobs, all started at once: ``{point: (process, run folder)}``."""
    root = tmp_path_factory.mktemp("killed")
    jobs = {}
    for point in KILLS:
        run_dir = root / point.replace(":", "_")
        jobs[point] = (start(job_command(point, run_dir, cache_dir)), run_dir)
    yield jobs
    for proc, _ in jobs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_cohort, cache_dir) -> Path:
    """One uninterrupted run (made while the killed jobs, started first, run)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run(compose_job(out, cache_dir))
    assert len(result["results"]) == N_CASES * 13 and (result["results"].status != "failed").all()
    return out


@pytest.mark.parametrize("point", KILLS)
def test_killed_run_then_one_rerun_gives_the_uninterrupted_table_and_analysis(point, killed, reference, cache_dir):
    proc, run_dir = killed[point]
    rc, err = finish(proc)
    assert rc == -signal.SIGKILL, err[-3000:]
    journaled = journal_times(run_dir)
    if point == "analysis":
        assert len(journaled) == N_CASES and (run_dir / "results.parquet").is_file()
        assert (run_dir / "discrepancy.csv").is_file() and not (run_dir / "report.html").exists()
    else:
        assert len(journaled) == int(point.split(":")[1]) and not (run_dir / "results.parquet").exists()
    assert (run_dir / FINGERPRINT_FILE).is_file()

    result = run(compose_job(run_dir, cache_dir))
    assert_same_results(run_dir, reference)
    assert len(result["results"]) == N_CASES * 13
    # the cases journaled before the kill were kept, not scored again
    assert {k: v for k, v in journal_times(run_dir).items() if k in journaled} == journaled
    assert len(journal_times(run_dir)) == N_CASES


def test_corrupt_and_partial_journal_files_are_named_set_aside_and_scored_again(reference, cache_dir, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    cases = sorted((run_dir / CASES_DIR).glob("*.json"))
    corrupt, partial = cases[0], cases[1]
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # cut mid-write
    text = partial.read_text()
    partial.write_text(text.replace('"n_rows": 13', '"n_rows": 14'))  # a row short of what it says
    kept = {k: v for k, v in journal_times(run_dir).items() if k not in (corrupt.name, partial.name)}

    with caplog.at_level(logging.WARNING):
        run(compose_job(run_dir, cache_dir))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "journal:" in r.getMessage()]
    assert len(warnings) == 2
    assert str(corrupt) in warnings[0] and "not a readable case file" in warnings[0] and "set aside as" in warnings[0]
    assert str(partial) in warnings[1] and "partial case (13 of 14 rows)" in warnings[1]
    aside = sorted(p.name.split(".json")[0] for p in (run_dir / CASES_DIR / SET_ASIDE_DIR).iterdir())
    assert aside == sorted([corrupt.stem, partial.stem])  # moved, not deleted
    assert_same_results(run_dir, reference)
    assert {k: v for k, v in journal_times(run_dir).items() if k in kept} == kept  # only those two scored again


def test_read_only_run_folder_or_journal_stops_in_one_line_and_loses_nothing(reference, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = snapshot(run_dir)
    prefix = UNPRIVILEGED if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made read-only to the job")
    try:
        subprocess.run(["chmod", "-R", "a-w", str(run_dir)], check=True)
        rc, err = finish(start(prefix + job_command("none", run_dir, cache_dir)))
        assert rc == 2 and err.strip().count("\n") == 0, err[-3000:]
        assert err.startswith(f"umd_lightning: error: {run_dir}: the run folder is not writable"), err
        assert "hydra.run.dir=" in err
        assert snapshot(run_dir) == before

        subprocess.run(["chmod", "u+w", str(run_dir)], check=True)  # the folder is writable, its journal is not
        rc, err = finish(start(prefix + job_command("none", run_dir, cache_dir)))
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1, err[-3000:]
        assert lines[0].startswith(f"umd_lightning: error: {run_dir / CASES_DIR}: the case journal folder is not writable")
        assert snapshot(run_dir) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(run_dir)], check=True)


def test_rerun_with_another_model_or_metric_stops_in_one_line_and_never_merges(reference, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = snapshot(run_dir)
    ckpt = REPO / "umd_lightning" / "checkpoints" / "unet_ct.pt"
    rc, err = finish(start(job_command("none", run_dir, cache_dir, "model=segresnet", f"model.checkpoint={ckpt}")))
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"umd_lightning: error: {run_dir} holds the results of another run (model.name: unet_ct -> segresnet")
    assert f"choose a new run folder (hydra.run.dir=DIR), or move {run_dir / CASES_DIR} and {run_dir / FINGERPRINT_FILE}" in lines[0]
    assert snapshot(run_dir) == before

    with pytest.raises(RunFolderError, match=r"metrics.nsd_tolerance: 2.0 -> 3.0"):
        run(compose_job(run_dir, cache_dir, "module.nsd_tolerance=3.0"))
    assert snapshot(run_dir) == before


def test_a_manifest_of_bad_cases_gives_a_table_of_failed_rows_on_every_run(tiny_cohort, cache_dir, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    for image in cohort.rglob("*.nii.gz"):
        if image.name != "label.nii.gz":
            image.write_bytes(b"not a NIfTI file")
    data = ["data=manifest", f"data.root={cohort / tiny_cohort.name}", "data.splits.n_test=1"]
    out = tmp_path / "run"
    first = run(compose_job(out, cache_dir, *data))["results"]
    assert len(first) == N_CASES * 13 and (first.status == "failed").all()
    assert all(e.startswith(str(cohort)) and ".nii.gz" in e for e in first.error)  # each names its file
    pd.testing.assert_frame_equal(comparable(read_results(out)[0]), comparable(first))
    assert not (out / CASES_DIR).is_dir() or not list((out / CASES_DIR).glob("*.json"))  # nothing was scored
    (out / "results.parquet").unlink()
    (out / "results.csv").unlink()
    again = run(compose_job(out, cache_dir, *data))["results"]
    pd.testing.assert_frame_equal(comparable(again), comparable(first))
    assert (out / "results.parquet").is_file()


def test_a_pet_in_bq_per_ml_stops_the_run_before_anything_is_scored(tiny_cohort, cache_dir, tmp_path):
    import nibabel as nib
    import numpy as np

    from umd_lightning.data.manifest import PetUnitsError

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    for pet in cohort.rglob("pet.nii.gz"):
        img = nib.load(str(pet))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * 5000.0, img.affine), str(pet))
    out = tmp_path / "run"
    with pytest.raises(PetUnitsError, match=r"pet\.nii\.gz: PET 99\.9th percentile is .*: values look like Bq/ml, not SUV"):
        run(compose_job(out, cache_dir, "data=manifest", f"data.root={cohort / tiny_cohort.name}", "data.splits.n_test=1"))
    assert not (out / CASES_DIR).exists() and not (out / "results.csv").exists()


def test_a_label_stored_in_another_axis_orientation_runs_and_scores_like_the_matching_pair(
    reference, tiny_cohort, cache_dir, tmp_path
):
    """Every label re-stored A,L,S (axes swapped and flipped; the images stay RAS or L,P,S): the same
    world grid, so the run scores every case, and exactly as the run on the matching pairs."""
    import nibabel as nib
    import numpy as np
    from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    for label in cohort.rglob("label.nii.gz"):
        img = nib.load(str(label))
        data = np.asarray(img.dataobj)
        change = ornt_transform(io_orientation(img.affine), axcodes2ornt(("A", "L", "S")))
        affine = img.affine @ inv_ornt_aff(change, data.shape)
        nib.save(nib.Nifti1Image(apply_orientation(data, change).astype(data.dtype), affine), str(label))
        image = next(p for p in label.parent.glob("*.nii.gz") if p.name in ("ct.nii.gz", "mri.nii.gz"))
        assert aff2axcodes(affine) == ("A", "L", "S") != aff2axcodes(nib.load(str(image)).affine)
        # the same world grid: the old corner voxels land on the new grid's corner voxels
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in data.shape], indexing="ij")).reshape(3, -1).T
        moved = nib.affines.apply_affine(np.linalg.inv(affine), nib.affines.apply_affine(img.affine, corners))
        np.testing.assert_allclose(moved, moved.round(), atol=1e-6)
        np.testing.assert_allclose(moved.min(0), 0, atol=1e-6)
        np.testing.assert_allclose(moved.max(0), np.array(data.shape)[[1, 0, 2]] - 1, atol=1e-6)
    out = tmp_path / "run"
    table = run(compose_job(out, cache_dir, "data=manifest", f"data.root={cohort / tiny_cohort.name}", "data.splits.n_test=1"))["results"]
    assert len(table) == N_CASES * 13 and (table.status != "failed").all(), table.error.unique()
    paths = ["image_path", "label_path"]
    pd.testing.assert_frame_equal(comparable(table).drop(columns=paths), comparable(read_results(reference)[0]).drop(columns=paths))
