"""A run's k-shot training subjects as an nnU-Net raw dataset (issue 19, item 6).

The export of a run folder's split reads back through our nnU-Net layout reader as the same subjects
and labels, and nnU-Net's own dataset check, fingerprint and planning accept it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from umd_lightning.data.layouts import load_layout
from umd_lightning.data.manifest import read_manifest
from umd_lightning.data.nnunet_export import CASE_PATTERN, image_on_label_grid
from umd_lightning.export_nnunet import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # tests/models/upstream


@pytest.fixture()
def run_folder(compose_cfg, tmp_path) -> Path:
    """A run folder as a run leaves it before training: splits.json and run_manifest.json (CT and PET_CT
    trained, one subject each, one val subject)."""
    cfg = compose_cfg("data.train_views=[CT,PET_CT]", "data.k_shot=1", "data.splits.n_val=1")
    folder = tmp_path / "run"
    folder.mkdir()
    datamodule = instantiate(cfg.data)
    datamodule.write_splits(folder / "splits.json")
    config = OmegaConf.to_container(cfg, resolve=True)
    (folder / "run_manifest.json").write_text(json.dumps({"command": "test", "config": config}, default=str))
    return folder


def _label(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_export_reads_back_as_the_same_subjects_and_labels(run_folder, tmp_path, capsys):
    raw = tmp_path / "nnUNet_raw"
    assert main([str(run_folder), "--out", str(raw), "--dataset-id", "901"]) == 0
    split = json.loads((run_folder / "splits.json").read_text())
    per_view, val = split["train_subjects_per_view"], split["splits"]["val"]
    assert len(per_view["CT"]) == 1 and len(val) == 1
    config = json.loads((run_folder / "run_manifest.json").read_text())["config"]
    cohort = read_manifest(next(Path(config["paths"]["cache_dir"], "synthetic").glob("*/manifest.csv")))
    originals = {(r.subject_id, r.view): r for r in cohort}
    printed = capsys.readouterr().out
    assert "nnUNetv2_plan_and_preprocess -d 901 902" in printed and "nnUNetv2_train 901 3d_fullres 0" in printed

    for dataset_id, view in ((901, "CT"), (902, "PET_CT")):
        folder = next(raw.glob(f"Dataset{dataset_id}_UMD_{view}_k1"))
        dj = json.loads((folder / "dataset.json").read_text())
        assert dj["channel_names"] == {"0": "CT" if view == "CT" else "PET"}
        assert dj["labels"]["background"] == 0 and dj["labels"]["urinary_bladder"] == 13
        # fold 0: train = the k-shot subject; val = the run's val subject (also written)
        folds = json.loads((folder / "splits_final.json").read_text())
        assert folds == [{"train": [f"{s}_petct" for s in per_view[view]], "val": [f"{s}_petct" for s in val]}]

        manifest = load_layout("nnunet", folder, case_pattern=CASE_PATTERN)
        assert sorted(manifest.subjects) == sorted(set(per_view[view]) | set(val))
        assert {r.view for r in manifest} == {view}
        for rec in manifest:
            original = originals[(rec.subject_id, view)]
            assert rec.session == "petct"
            assert np.array_equal(_label(rec.label), _label(original.label))
            assert np.allclose(nib.load(str(rec.label)).affine, nib.load(str(original.label)).affine)
            if view == "CT":  # copied as it is
                assert rec.image.read_bytes() == Path(original.image).read_bytes()
            else:  # on the label grid, as evaluation resamples it
                expected = image_on_label_grid(original.image, original.label)
                assert np.allclose(nib.load(str(rec.image)).get_fdata(), expected.get_fdata(), atol=1e-5)


def test_multichannel_export_is_accepted_by_nnunet_planning(run_folder, tmp_path):
    pytest.importorskip("nnunetv2")
    from upstream.nnunet import model_folder_from_plans, nnunet_env, plan_dataset

    with nnunet_env(tmp_path) as paths:
        rc = main([str(run_folder), "--out", str(paths["nnUNet_raw"]), "--dataset-id", "903", "--multichannel",
                   "--val", "train"])
        assert rc == 0
        folder = next(paths["nnUNet_raw"].glob("Dataset903_*"))
        dj = json.loads((folder / "dataset.json").read_text())
        assert dj["channel_names"] == {"0": "CT", "1": "PET"}
        folds = json.loads((folder / "splits_final.json").read_text())
        assert folds[0]["train"] == folds[0]["val"] and len(folds[0]["train"]) == 1  # nnU-Net's fold 'all' way

        manifest = load_layout("nnunet", folder, case_pattern=CASE_PATTERN)
        assert {r.view for r in manifest} == {"CT", "PET_CT"}
        assert len({r.label for r in manifest}) == 1  # both channels share the case's label

        # nnU-Net's own dataset check, fingerprint and planning on the export
        plans_file = plan_dataset(903, check_integrity=True)
        plans = json.loads(plans_file.read_text())
        assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
        # the planner copied our split next to the plans, where nnUNetv2_train reads it
        assert json.loads((plans_file.parent / "splits_final.json").read_text()) == folds

        # a model folder of these plans (random weights, as nnUNetv2_train would leave it) evaluates a test
        # subject of the run through the adapter: the session's CT and PET as its two channels
        model = model_folder_from_plans(plans_file, folder)
    from umd_lightning.data.transforms import eval_transforms
    from umd_lightning.models.nnunet import NnUNetAdapter
    from umd_lightning.models.resample import voxel_spacing
    from umd_lightning.organs import UMD13

    adapter = NnUNetAdapter(str(model), use_mirroring=False)
    assert adapter.channels == ("anatomical", "PET")
    config = json.loads((run_folder / "run_manifest.json").read_text())["config"]
    cohort = {(r.subject_id, r.view): r for r in read_manifest(next(Path(config["paths"]["cache_dir"], "synthetic").glob("*/manifest.csv")))}
    subject = json.loads((run_folder / "splits.json").read_text())["splits"]["test"][0]
    ct, pet = cohort[(subject, "CT")], cohort[(subject, "PET_CT")]
    d = eval_transforms(2)({"image": [str(ct.image), str(pet.image)], "label": str(ct.label), "view": "CT"})
    affine = np.asarray(d["image"].affine, dtype=np.float64)
    meta = {"label_path": str(ct.label), "affine": affine, "spacing": voxel_spacing(affine)}
    labels = adapter.predict_volume(d["image"].as_tensor()[None], meta, UMD13).labels
    assert tuple(labels.shape) == tuple(d["label"].shape[1:])
    assert set(labels.unique().tolist()) <= {0, *UMD13.labels}


def test_export_from_overrides_and_user_errors(compose_cfg, cache_dir, run_folder, tmp_path, capsys):
    raw = tmp_path / "raw"
    overrides = [f"paths.cache_dir={cache_dir}", "data.source.n_subjects=3", "data.source.scale=3.0",
                 "data.splits.n_test=1", "data.train_views=[MRI]", "data.k_shot=2", "logger=csv"]
    assert main([*overrides, "--out", str(raw), "--dataset-id", "905"]) == 0
    folder = raw / "Dataset905_UMD_MRI_k2"
    folds = json.loads((folder / "splits_final.json").read_text())
    assert len(folds[0]["train"]) == 2 and folds[0]["val"] == folds[0]["train"]  # no val subjects: train cases
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}
    capsys.readouterr()

    # the same dataset again: refused without --overwrite; a folder without splits.json; a view not trained
    assert main([*overrides, "--out", str(raw), "--dataset-id", "905"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(raw)]) == 2
    assert "no split file" in capsys.readouterr().err
    assert main([str(run_folder), "--out", str(raw), "--views", "MRI"]) == 2
    assert "no training subjects for view(s) ['MRI']" in capsys.readouterr().err
    assert main(["nowhere", "--out", str(raw)]) == 2
