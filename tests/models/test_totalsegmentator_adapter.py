"""TotalSegmentator adapter against TotalSegmentator's own predictor, on a synthetic CT and PET.

The weights folder holds random-weight nnU-Net models under the dataset folder names ``task=total``
opens, in the layout its downloads unpack (``upstream/totalsegmentator.py``). The reference is
``totalsegmentator.python_api.totalsegmentator`` on the NIfTI file itself (for the CT with nnU-Net's
worker processes as upstream runs them); ours is the data pipeline (``eval_transforms``) on the same
file, then the adapter (which writes the RAS volume back with its affine and runs the same API with
nnU-Net's in-process prediction).

The reference runs inside :func:`totalseg_environment` too, for what this environment lacks or must
not do: nnU-Net's trainer lookup fails without torchvision (see ``find_nnunet_trainer``), and nothing
may download or post usage statistics. None of it changes a computation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from upstream.totalsegmentator import make_totalseg_weights

from umd_lightning.data.transforms import eval_transforms
from umd_lightning.models.adapter import CheckpointError
from umd_lightning.models.totalsegmentator import TotalSegmentatorAdapter, totalseg_environment
from umd_lightning.organs import UMD13, OrganSet, load_label_map

# CT block 8x8x6 voxels of 9x9x12 mm, PET block 4^3 of 18 mm (tiny cohort), 72 mm each: at TotalSegmentator's
# 1.5 mm each is one 48^3 window of the tiny models
CT_BLOCK = (8, 8, 6)
PET_BLOCK = (4, 4, 4)
MRI_BLOCK = (6, 6, 4)  # 10.5 x 10.5 x 15 mm voxels

# (view, task, fast, in-process reference). The first reference runs nnU-Net as upstream does, with a
# fresh worker interpreter for each model's preprocessing and export (4 with fast, 8 without: most of
# this file's time); the others use nnU-Net's sequential path, as the adapter does: the first check
# shows that the two give the same labels.
RUNS = [
    ("CT", "total", True, False),
    ("CT", "total", False, True),
    ("PET", "total", False, True),
    ("MRI", "total_mr", False, True),
]


@pytest.fixture(scope="module")
def totalseg_home(tmp_path_factory):
    """TotalSegmentator writes its config.json (usage id, prediction counter) under TOTALSEG_HOME_DIR."""
    old = os.environ.get("TOTALSEG_HOME_DIR")
    os.environ["TOTALSEG_HOME_DIR"] = str(tmp_path_factory.mktemp("totalseg_home"))
    yield
    if old is None:
        os.environ.pop("TOTALSEG_HOME_DIR", None)
    else:
        os.environ["TOTALSEG_HOME_DIR"] = old


@pytest.fixture(scope="module")
def weights(tmp_path_factory, totalseg_home) -> Path:
    t = time.perf_counter()
    root = make_totalseg_weights(tmp_path_factory.mktemp("totalseg"), tasks=("total", "total_mr"), fast=True)
    print(f"random-weight TotalSegmentator folder built in {time.perf_counter() - t:.1f} s")
    return root


def _block(image: Path, organ_label: Path, organ: str, size: tuple[int, int, int], out: Path) -> tuple[Path, Path]:
    """The block of ``image`` (on its own grid) centred on ``organ``'s centroid; a zero label on it.

    The label only carries the grid for ``eval_transforms`` (the adapter never reads it).
    """
    lab = nib.load(organ_label)
    centre_world = lab.affine @ np.r_[np.argwhere(np.asarray(lab.dataobj) == UMD13.ids[organ]).mean(0), 1.0]
    img = nib.load(image)
    centre = np.rint((np.linalg.inv(img.affine) @ centre_world)[:3]).astype(int)
    lo = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, img.shape)]
    block = img.slicer[tuple(slice(a, a + s) for a, s in zip(lo, size))]
    stem = f"{image.parent.name}_{image.name.split('.')[0]}"
    image_out, label_out = out / f"{stem}.nii.gz", out / f"{stem}_grid.nii.gz"
    nib.save(block, image_out)
    nib.save(nib.Nifti1Image(np.zeros(block.shape, np.uint8), block.affine), label_out)
    return image_out, label_out


@pytest.fixture(scope="module")
def cases(tiny_cohort, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The tiny cohort's CT (stored RAS), and the PET and MRI of its PET/MRI session (stored LPS), each a
    block around the liver."""
    root, out = Path(tiny_cohort).parent / "syn000", tmp_path_factory.mktemp("totalseg_cases")
    ct_label, mr_label = root / "petct" / "label.nii.gz", root / "petmri" / "label.nii.gz"
    return {
        "CT": _block(root / "petct" / "ct.nii.gz", ct_label, "liver", CT_BLOCK, out),
        "PET": _block(root / "petmri" / "pet.nii.gz", mr_label, "liver", PET_BLOCK, out),
        "MRI": _block(root / "petmri" / "mri.nii.gz", mr_label, "liver", MRI_BLOCK, out),
    }


@pytest.mark.slow
@pytest.mark.parametrize("view, task, fast, in_process", RUNS, ids=lambda v: str(v))
def test_labels_equal_totalsegmentators_own_on_the_file(view, task, fast, in_process, cases, weights, tmp_path):
    from totalsegmentator.python_api import totalsegmentator

    image, grid = cases[view]
    adapter = TotalSegmentatorAdapter(str(weights), task=task, fast=fast)
    rois = adapter.roi_subset(UMD13)
    reference_file = tmp_path / "reference.nii.gz"
    t = time.perf_counter()
    with totalseg_environment(weights, in_process=in_process):
        totalsegmentator(
            image, reference_file, task=task, fast=fast, roi_subset=rois, ml=True, device="cpu", quiet=True,
            nr_thr_saving=1,
        )  # fmt: skip
    t_ref = time.perf_counter() - t

    data = eval_transforms()({"image": str(image), "label": str(grid)})
    meta = {"view": view, "case_id": f"syn000_{view}", "affine": data["image"].affine}
    t = time.perf_counter()
    ours = adapter.predict_volume(data["image"][None], meta, UMD13).labels.numpy()
    t_ours = time.perf_counter() - t

    # the reference on the same RAS grid, its ids mapped through our label map
    reference = eval_transforms()({"image": str(image), "label": str(reference_file)})["label"][0]
    expected = adapter.harmonise(reference, UMD13).numpy()
    raw_ids = set(np.unique(np.asarray(nib.load(reference_file).dataobj)).tolist()) - {0}
    organs = set(np.unique(expected).tolist()) - {0}
    agreement = float((ours == expected).mean())
    print(
        f"{view} {task}{' fast' if fast else ''}: TotalSegmentator ids {sorted(raw_ids)} -> organs {sorted(organs)}; agreement {agreement:.4%} "
        f"of {expected.size} voxels; reference {t_ref:.1f} s, adapter {t_ours:.1f} s"
    )
    assert ours.shape == tuple(data["image"].shape[-3:]) and ours.dtype == np.uint8
    assert len(organs) >= 3, f"reference names too few organs for a meaningful check: {sorted(organs)}"
    assert agreement >= 0.99


def test_roi_subset_names_totalsegmentators_classes_behind_the_organs(weights):
    from totalsegmentator.map_to_binary import class_map

    adapter = TotalSegmentatorAdapter(str(weights), task="total")
    rois = adapter.roi_subset(UMD13)
    assert len(rois) == 17 and set(rois) <= set(class_map["total"].values())
    assert {r for r in rois if r.startswith("lung_")} == {
        "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    }  # fmt: skip
    two = OrganSet(name="two", labels={1: "liver", 2: "lung"})
    assert adapter.roi_subset(two)[0] == "liver" and len(adapter.roi_subset(two)) == 6
    assert adapter.required_datasets()[-1].startswith("Dataset298_")


@pytest.mark.parametrize("task", ["total", "total_mr"])
def test_label_maps_follow_totalsegmentators_class_map(task):
    """Each id names the organ in TotalSegmentator 2.x's own class map; every class of an organ is mapped."""
    from totalsegmentator.map_to_binary import class_map

    mapping = load_label_map(task).mapping
    names = class_map[task]
    for idx, organ in mapping.items():
        assert names[int(idx)] == organ or (organ == "lung" and names[int(idx)].startswith("lung_")), (idx, organ)
    behind = {i for i, n in names.items() if n in UMD13.organs or n.startswith(("lung_upper", "lung_middle", "lung_lower"))}
    behind |= {i for i, n in names.items() if n in ("lung_left", "lung_right")}
    assert {int(i) for i in mapping} == behind
    assert set(mapping.values()) == set(UMD13.organs)


def test_missing_weights_stop_with_the_folder_name_and_download_nothing(tmp_path, totalseg_home):
    adapter = TotalSegmentatorAdapter(str(tmp_path), task="total", fast=True)
    image = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(CheckpointError, match="Dataset297_TotalSegmentator_total_3mm"):
        adapter.predict_volume(image, {"affine": torch.eye(4)}, UMD13)
    assert list(tmp_path.iterdir()) == []
    # the guard inside TotalSegmentator's own downloader: raises instead of fetching
    from totalsegmentator.libs import download_pretrained_weights

    with totalseg_environment(tmp_path), pytest.raises(CheckpointError, match="nothing is downloaded"):
        download_pretrained_weights(297)


def test_config_builds_the_adapter_with_its_preprocessing(compose_cfg, weights):
    from hydra.utils import instantiate

    adapter = instantiate(compose_cfg("model=totalsegmentator", f"model.weights_dir={weights}", tiny=False).model)
    assert isinstance(adapter, TotalSegmentatorAdapter) and adapter.task == "total" and not adapter.fast
    row = adapter.info.as_row()
    assert "intensity_range" not in row and "roi_subset" in row["preprocessing"]
    assert row["vocabulary"] == "total"
