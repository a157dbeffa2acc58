"""The nnU-Net adapter gives nnU-Net's own answer for a file (issue 19, item 2).

Models: real nnU-Net v2 trained-model folders made by nnU-Net's own code (``upstream/nnunet.py``:
fingerprint and ``plan_experiment`` on a tiny synthetic raw dataset, the planned 3d_fullres U-Net cut to
three stages of 4/8/16 features, built by ``nnUNetTrainer`` with seeded random weights and saved by
``nnUNetTrainer.save_checkpoint`` as ``fold_0/checkpoint_final.pth``): a CT model, a PET model and a
two-channel CT+PET model (channel_names CT, PET, as AutoPET models). Their dataset.json label ids are the
organ set's reversed, so the comparison goes through the adapter's label map.

Reference: ``nnUNetPredictor.predict_from_files`` on the NIfTI file(s), as ``nnUNetv2_predict`` runs it.
Ours: the project's data pipeline (``eval_transforms``) on the same file(s), then the adapter. The
reference labels are put on our RAS grid (orientation only, no resampling) and mapped reversed id ->
organ id independently of the adapter. Cases: the PET/CT session's CT (stored RAS) with nnU-Net's
mirroring on (its default); the PET/MRI session's PET written on its label grid, stored LPS like that
session's files (mirroring off, so that a wrong axis order could not hide behind mirrored averaging);
the PET/CT session's CT and PET through the two-channel model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from umd_lightning.data.nnunet_export import write_on_label_grid  # noqa: E402
from umd_lightning.data.transforms import RAS_LABELS, eval_transforms  # noqa: E402
from umd_lightning.models.adapter import CheckpointError, weights_only_loading  # noqa: E402
from umd_lightning.models.nnunet import NnUNetAdapter, channel_kinds  # noqa: E402
from umd_lightning.models.resample import voxel_spacing  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402
from upstream.nnunet import PLANNING_SECONDS, make_nnunet_model_folder  # noqa: E402

#: model -> (views as channels, nnU-Net dataset id)
MODELS = {"CT": (("CT",), 990), "PET": (("PET_CT",), 991), "CT+PET": (("CT", "PET_CT"), 992)}
N = max(UMD13.labels)
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture(scope="module")
def model_folders(nnunet_root, tiny_cohort) -> dict[str, Path]:
    """The three model folders, planned on all three subjects of the tiny cohort."""
    out = {}
    for key, (views, dataset_id) in MODELS.items():
        t0 = time.perf_counter()
        out[key] = make_nnunet_model_folder(nnunet_root, tiny_cohort, views=views, dataset_id=dataset_id, seed=0)
        TIMES[f"build {key} model folder"] = time.perf_counter() - t0
    return out


def _case(kind: str, root: Path, tmp: Path) -> tuple[list[Path], Path, str]:
    """(image files in channel order, label file, view) of a test case (see module docstring)."""
    if kind == "CT":
        return [root / "syn001" / "petct" / "ct.nii.gz"], root / "syn001" / "petct" / "label.nii.gz", "CT"
    if kind == "PET":
        label = root / "syn001" / "petmri" / "label.nii.gz"
        pet = write_on_label_grid(root / "syn001" / "petmri" / "pet.nii.gz", label, tmp / "pet_petmri.nii.gz")
        return [pet], label, "PET_MRI"
    label = root / "syn001" / "petct" / "label.nii.gz"
    pet = write_on_label_grid(root / "syn001" / "petct" / "pet.nii.gz", label, tmp / "pet_petct.nii.gz")
    return [root / "syn001" / "petct" / "ct.nii.gz", pet], label, "CT"


def _reference(folder: Path, files: list[Path], out: Path, mirroring: bool) -> np.ndarray:
    """nnU-Net's own prediction for the file(s), as dataset ids on our RAS grid."""
    from monai.transforms import LoadImage, Orientation
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring, perform_everything_on_device=False,
        device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False,
    )
    with weights_only_loading():  # the same weights; nnU-Net's loader asks for weights_only=False
        predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    predictor.predict_from_files([[str(f) for f in files]], [str(out / "case")], save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    img = LoadImage(reader="NibabelReader", ensure_channel_first=True, image_only=True)(str(out / "case.nii.gz"))
    return np.asarray(Orientation(axcodes="RAS", labels=RAS_LABELS)(img)[0]).astype(np.int64)


def _ours(adapter: NnUNetAdapter, files: list[Path], label: Path, view: str) -> np.ndarray:
    image = [str(f) for f in files] if len(files) > 1 else str(files[0])
    d = eval_transforms(len(files))({"image": image, "label": str(label), "view": view})
    img = d["image"]
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = {"view": view, "image_path": str(files[0]), "label_path": str(label), "spacing": voxel_spacing(affine),
            "affine": affine}
    return adapter.predict_volume(img.as_tensor()[None].float(), meta, UMD13).labels.numpy()


@pytest.mark.parametrize("kind, mirroring", [("CT", True), ("PET", False), ("CT+PET", False)])
def test_adapter_equals_nnunet_predict_from_files(model_folders, tiny_cohort, tmp_path, kind, mirroring):
    folder = model_folders[kind]
    files, label, view = _case(kind, tiny_cohort.parent, tmp_path)
    t0 = time.perf_counter()
    ref = _reference(folder, files, tmp_path, mirroring)
    TIMES[f"reference {kind}"] = time.perf_counter() - t0
    ref_organs = np.where(ref > 0, N + 1 - ref, 0)  # dataset.json ids are the organ ids reversed

    adapter = NnUNetAdapter(str(folder), use_mirroring=mirroring)
    assert adapter.channels == (("anatomical", "PET") if kind == "CT+PET" else None)
    t0 = time.perf_counter()
    ours = _ours(adapter, files, label, view)
    TIMES[f"ours {kind}"] = time.perf_counter() - t0

    assert ours.shape == ref.shape
    agreement = float((ours == ref_organs).mean())
    found = sorted(set(np.unique(ref).tolist()) - {0})
    print(f"\nnnU-Net {kind} ({view}, mirroring {mirroring}): agreement {agreement:.4%}, reference labels {found}; "
          f"times (s) {', '.join(f'{k} {v:.1f}' for k, v in TIMES.items())}, planning {[round(s, 1) for s in PLANNING_SECONDS]}")
    assert len(found) >= 3, f"random weights gave a trivial reference ({found}); pick another seed"
    assert agreement >= 0.99


def test_multichannel_adapter_refuses_one_channel(model_folders):
    adapter = NnUNetAdapter(str(model_folders["CT+PET"]))
    assert adapter.info.channels == ("anatomical", "PET")
    with pytest.raises(ValueError, match=r"takes 2 channel\(s\) \['CT', 'PET'\]"):
        adapter.predict_volume(torch.zeros(1, 1, 8, 8, 8), {"spacing": (1.0, 1.0, 1.0)}, UMD13)


def test_channel_kinds():
    assert channel_kinds({"0": "CT", "1": "PET"}) == ("anatomical", "PET")
    assert channel_kinds({"1": "pet_suv", "0": "T1"}) == ("anatomical", "PET")
    assert channel_kinds({"0": "MRI"}) == ("anatomical",)


def test_missing_fold_is_one_line(model_folders):
    with pytest.raises(CheckpointError) as err:
        NnUNetAdapter(str(model_folders["CT"]), folds=(0, 3))
    assert "fold 3" in str(err.value) and "\n" not in str(err.value)


def test_foreign_checkpoint_is_one_line(model_folders, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_folders["CT"], folder)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt)  # a Lightning-style file, not nnU-Net's
    with pytest.raises(CheckpointError, match="not an nnU-Net v2 checkpoint") as err:
        NnUNetAdapter(str(folder))
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)

    torch.save({"network_weights": {}, "trainer_name": "X", "init_args": {"configuration": "3d_fullres"},
                "extra": torch.nn.Identity()}, ckpt)  # a pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match="weights_only=True"):
        NnUNetAdapter(str(folder))


def test_hydra_config_builds_the_adapter(compose_cfg, model_folders):
    from hydra.utils import instantiate

    cfg = compose_cfg("model=nnunet", f"model.model_folder={model_folders['CT']}", tiny=False)
    adapter = instantiate(cfg.model)
    assert isinstance(adapter, NnUNetAdapter) and adapter.channels is None
    assert "nnU-Net's own" in adapter.info.preprocessing
    assert "intensity_range" not in cfg.model and "hu_window" not in cfg.model
    # dataset.json names are read through text_names: every umd13 organ, at its reversed id
    assert adapter.organs_predicted(UMD13) == UMD13.organs
    assert adapter.label_map.mapping[1] == "urinary_bladder" and adapter.label_map.mapping[N] == "brain"
