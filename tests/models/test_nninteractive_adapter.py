"""The nnInteractive adapter gives nnInteractive's own answer for a file (issue 19, item 2).

Reference: ``nnInteractiveInferenceSession`` driven directly, as nnInteractive's README drives it: the
file read with SimpleITK (``GetArrayFromImage(img)[None]``, raw intensities), ``set_image``,
``set_target_buffer``, then per organ ``reset_interactions`` and ``add_bbox_interaction`` /
``add_point_interaction`` with the prompts our adapter reports (``Prediction.prompts``: RAS voxel
indices, mapped here to SimpleITK indices through world coordinates, independently of the adapter);
the masks are merged organ by organ (the first organ keeps a voxel two claim, as our score merge does)
and written with SimpleITK onto the file's geometry. Ours: the project's data pipeline
(``eval_transforms``) on the same file, then the adapter with the reference label (oracle).

Both load the same model folder in the released layout (``upstream/nninteractive.py``: nnU-Net ResEnc
plans shrunk to a 96x64x64 patch, the network built by nnInteractive's own trainer class, seeded random
weights). The output layer's foreground bias is set so that a click's patch is partly foreground and
its faces, which lie outside the tiny images for the organs used, stay mostly background: the session's
AutoZoom (on, its default) then zooms out rarely (once here, one CT organ to 1.5x, followed by its
refinement patches), which keeps the file's CPU time to about 45 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnInteractive.inference.inference_session")
sitk = pytest.importorskip("SimpleITK")

from umd_lightning.data.transforms import eval_transforms  # noqa: E402
from umd_lightning.models.file_axes import SessionAxes  # noqa: E402
from umd_lightning.models.nninteractive import NnInteractiveAdapter  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402
from upstream.cases import synthetic_case  # noqa: E402
from upstream.nninteractive import make_nninteractive_model_folder  # noqa: E402

#: organs whose centre points keep the 96x64x64 patch around the whole tiny image (see module docstring)
ORGANS = ("liver", "stomach", "kidney_left")
FOREGROUND_BIAS = -1.5


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nninteractive")
    return make_nninteractive_model_folder(folder, seed=0, foreground_bias=FOREGROUND_BIAS)


def _load(image: Path, label: Path, view: str) -> dict:
    return eval_transforms()({"image": str(image), "label": str(label), "view": view})


def _keep(label: torch.Tensor, organs=ORGANS) -> torch.Tensor:
    keep = torch.zeros_like(label)
    for organ in organs:
        keep[label == UMD13.ids[organ]] = UMD13.ids[organ]
    return keep


def _ours(adapter: NnInteractiveAdapter, image: Path, label: Path, view: str) -> tuple[np.ndarray, list, np.ndarray]:
    d = _load(image, label, view)
    img, affine = d["image"], np.asarray(d["image"].affine, dtype=np.float64)
    meta = {"case_id": "syn000", "view": view, "image_path": str(image), "label_path": str(label), "affine": affine}
    pred = adapter.predict_volume(img.as_tensor()[None].float(), meta, UMD13, _keep(d["label"][0].as_tensor()))
    return pred.labels.numpy(), pred.prompts or [], affine


def _ras_to_sitk_index(img, affine: np.ndarray, coords) -> tuple[int, int, int]:
    """A voxel index of the RAS volume -> the SimpleITK image's index (via world mm; ITK's world is LPS)."""
    world = affine @ np.array([*map(float, coords), 1.0])
    lps = (-world[0], -world[1], world[2])
    return tuple(int(i) for i in img.TransformPhysicalPointToIndex(lps))


def run_reference(model_folder: Path, image: Path, prompts: list[dict], affine: np.ndarray, out: Path) -> Path:
    """nnInteractive's README workflow on the file with the given prompts; writes the merged label map."""
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

    from umd_lightning.models.adapter import weights_only_loading

    session = nnInteractiveInferenceSession(
        device=torch.device("cpu"), use_torch_compile=False, verbose=False,
        torch_n_threads=torch.get_num_threads(), do_autozoom=True,
    )
    with weights_only_loading():  # the package asks for weights_only=False; the file needs no more
        session.initialize_from_trained_model_folder(str(model_folder))
    input_image = sitk.ReadImage(str(image))
    img = sitk.GetArrayFromImage(input_image)[None]
    session.set_image(img)
    target = torch.zeros(img.shape[1:], dtype=torch.uint8)
    session.set_target_buffer(target)
    merged = np.zeros(img.shape[1:], dtype=np.uint8)
    by_label: dict[int, list[dict]] = {}
    for p in prompts:
        by_label.setdefault(int(p["label"]), []).append(p)
    for label, items in by_label.items():
        session.reset_interactions()
        for box in (p for p in items if p["kind"] == "box"):
            a, b = (_ras_to_sitk_index(input_image, affine, box[k]) for k in ("lo", "hi"))
            # SimpleITK index (x, y, z) -> array axes (z, y, x); half-open
            bbox = [[min(i, j), max(i, j) + 1] for i, j in zip(a[::-1], b[::-1])]
            session.add_bbox_interaction(bbox, include_interaction=True)
        for p in (p for p in items if p["kind"] == "point"):
            index = _ras_to_sitk_index(input_image, affine, p["coords"])[::-1]
            session.add_point_interaction(index, include_interaction=p["positive"])
        mask = target.numpy() > 0
        merged[mask & (merged == 0)] = label
    seg = sitk.GetImageFromArray(merged)
    seg.CopyInformation(input_image)
    sitk.WriteImage(seg, str(out))
    return out


def _agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(share of equal voxels, Dice of the foreground)."""
    fo, fr = ours > 0, ref > 0
    return float((ours == ref).mean()), float(2 * (fo & fr).sum() / max(fo.sum() + fr.sum(), 1))


@pytest.mark.parametrize("kind", ["CT", "PET"])
@pytest.mark.parametrize("boxes", [False, True], ids=["point", "box"])
def test_adapter_matches_the_session_driven_directly(tiny_cohort, model_folder, tmp_path, kind, boxes):
    if boxes and kind == "PET":
        pytest.skip("box prompts: checked on the CT (one case keeps the file's time down)")
    image, label, view = synthetic_case(tiny_cohort.parent, kind, tmp_path)
    # the box case also takes one corrective click per organ, replayed on the reference in order
    prompts = {"center_point": not boxes, "boxes": boxes, "corrective_clicks": int(boxes), "seed": 0}
    adapter = NnInteractiveAdapter(str(model_folder), prompts=prompts)
    t0 = time.perf_counter()
    ours, records, affine = _ours(adapter, image, label, view)
    t1 = time.perf_counter()
    assert {r["organ"] for r in records} == set(ORGANS)
    assert {r["kind"] for r in records} == ({"box", "point"} if boxes else {"point"})
    if boxes:  # 2D boxes on one axial slice, then corrective clicks
        assert all(r["lo"][2] == r["hi"][2] for r in records if r["kind"] == "box")
        assert {r["source"] for r in records if r["kind"] == "point"} == {"corrective"}
    ref_file = run_reference(model_folder, image, records, affine, tmp_path / "reference.nii.gz")
    t2 = time.perf_counter()
    # read back as RAS (nibabel's canonical orientation, the grid our pipeline puts the label on)
    ref = np.asarray(nib.as_closest_canonical(nib.load(str(ref_file))).dataobj).astype(np.uint8)
    assert ref.shape == ours.shape
    # non-trivial: the upstream labels every prompted organ somewhere, and not everywhere
    assert set(np.unique(ref)) == {0, *(UMD13.ids[o] for o in ORGANS)}
    assert 0.001 < (ref > 0).mean() < 0.9
    equal, dice = _agreement(ours, ref)
    print(f"nnInteractive {kind} {'box' if boxes else 'point'}: {equal:.4%} voxels equal, foreground Dice {dice:.4f}, "
          f"fg {(ref > 0).mean():.3f}; ours {t1 - t0:.1f} s, reference {t2 - t1:.1f} s")
    assert equal >= 0.99 and dice >= 0.99


def test_session_axes_round_trip_and_points():
    rng = np.random.default_rng(0)
    vol = rng.random((5, 6, 7)).astype(np.float32)
    axes = SessionAxes(perm=(1, 0, 2), flips=(True, False, True), shape=(5, 6, 7))
    arr = axes.to_session(vol)
    assert arr.shape == (7, 5, 6) and arr.flags.c_contiguous
    np.testing.assert_array_equal(axes.from_session(arr), vol)
    for c in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        assert arr[axes.point(c)] == vol[c]
    box = axes.box((1, 2, 3), (3, 4, 3))
    assert [ub - lb for lb, ub in box] == [1, 3, 3]


@pytest.mark.parametrize("storage", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAI"])
def test_session_array_is_the_file_as_simpleitk_reads_it(tmp_path, storage, codes):
    from monai.transforms import LoadImage, Orientation
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff

    rng = np.random.default_rng(1)
    data = rng.random((7, 5, 6)).astype(np.float32)
    ornt = axcodes2ornt(codes)
    affine = np.diag([2.0, 3.0, 4.0, 1.0]) @ inv_ornt_aff(ornt, data.shape)  # axes flipped as the codes say
    affine = affine[:, [*storage, 3]]  # and stored in another axis order
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(storage)), affine), str(path))
    ras = Orientation("RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(
        LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    )
    axes = SessionAxes.from_meta({"label_path": str(path), "affine": np.asarray(ras.affine)}, ras.shape[1:])
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(axes.to_session(ras[0].numpy()), expected)


def test_box_prompts_are_2d_by_default(model_folder):
    adapter = NnInteractiveAdapter(str(model_folder), prompts={"boxes": True, "center_point": False})
    assert adapter.simulator.box_slice_axis == 2 and adapter.info.prompt_kind == "box"
    assert "raw" in adapter.info.preprocessing


def test_config_builds_the_adapter(compose_cfg, model_folder):
    from hydra.utils import instantiate

    cfg = compose_cfg("model=nninteractive", f"model.model_folder={model_folder}", tiny=False)
    adapter = instantiate(cfg.model)
    assert isinstance(adapter, NnInteractiveAdapter)
    assert adapter.info.prompt_kind == "point" and adapter.info.oracle
    assert adapter.simulator.center_point and not adapter.simulator.boxes and adapter.do_autozoom


def test_missing_model_folder_is_one_line(tmp_path):
    from umd_lightning.models.adapter import CheckpointError

    with pytest.raises(CheckpointError, match="nnInteractive model folder not found"):
        NnInteractiveAdapter(str(tmp_path / "nope"))


def test_checkpoint_with_code_is_refused_in_one_line(tmp_path):
    """weights_only=True: a checkpoint holding a global outside the allow-list never unpickles."""
    import argparse

    from umd_lightning.models.adapter import CheckpointError, load_checkpoint_file

    folder = make_nninteractive_model_folder(tmp_path)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({**load_checkpoint_file(ckpt), "args": argparse.Namespace(a=1)}, ckpt)
    adapter = NnInteractiveAdapter(str(folder))
    with pytest.raises(CheckpointError) as err:
        adapter.prepare(torch.ones(1, 1, 4, 4, 4), {})
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
