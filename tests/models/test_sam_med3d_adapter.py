"""SAM-Med3D-turbo through medim: our labels equal SAM-Med3D's own inference on the same NIfTI file.

The checkpoint is medim's network with random weights in the released file's layout
(``tests/models/upstream/sam_med3d.py``, a tiny variant of the architecture). The case files are a
block of the built-in cohort's CT and of its PET (on the label grid) with four organs, two of them
overlapping in the model's answer and one (the aorta) longer than the 192 mm crop. Two references get
the adapter's own clicks (its saved prompts):

- the official repository's ``utils/infer_utils.validate_paired_img_gt`` run on the files, imported
  from a checkout named by ``UMD_SAMMED3D_CODE_DIR`` (the test says why it skips without one);
- the official steps written out here with torchio and medim, from the files (runs everywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

tio = pytest.importorskip("torchio")
medim = pytest.importorskip("medim")
nib = pytest.importorskip("nibabel")

from umd_lightning.data.transforms import eval_transforms  # noqa: E402
from umd_lightning.models.adapter import CheckpointError  # noqa: E402
from umd_lightning.models.prompts import center_point  # noqa: E402
from umd_lightning.models.sam_med3d import SamMed3DAdapter  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402

from upstream.sam_med3d import TINY_KWARGS, build_sam_med3d, make_sam_med3d_checkpoint  # noqa: E402

CODE_DIR_ENV = "UMD_SAMMED3D_CODE_DIR"
#: liver and stomach touch, the spleen is close, the aorta is longer than the crop (192 mm)
ORGANS = ("liver", "spleen", "stomach", "aorta")
#: the block of the cohort's CT grid (9 x 9 x 12 mm voxels at scale 3) kept in the case files: 270 x
#: 189 x 360 mm, the aorta's 360 mm longer than the crop's 192
BLOCK = (slice(8, 38), slice(6, 27), slice(20, 50))
SPACING = (1.5, 1.5, 1.5)
CROP = 128


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_sam_med3d_checkpoint(tmp_path_factory.mktemp("sam_med3d"))


@pytest.fixture(scope="module")
def case_files(tiny_cohort, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """{view: (image file, label file)}: the CT as stored (int16) and the PET on the label grid (float32)."""
    out = tmp_path_factory.mktemp("sam_med3d_cases")
    rows = pd.read_csv(tiny_cohort)
    rows = rows[(rows.subject_id == "syn000") & (rows.session == "petct")]
    keep = np.array([UMD13.ids[o] for o in ORGANS])
    files = {}
    for row in rows.itertuples():
        d = eval_transforms()({"image": str(tiny_cohort.parent / row.image),
                               "label": str(tiny_cohort.parent / row.label), "view": row.view})  # fmt: skip
        affine = np.asarray(d["label"].affine, dtype=np.float64)
        affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in BLOCK])  # the block's first voxel
        label = d["label"][0].numpy()[BLOCK]
        label = np.where(np.isin(label, keep), label, 0).astype(np.uint8)
        image = d["image"][0].numpy()[BLOCK]
        image = np.round(image).astype(np.int16) if row.view == "CT" else image.astype(np.float32)
        paths = out / f"{row.view}_image.nii.gz", out / f"{row.view}_label.nii.gz"
        for arr, path in zip((image, label), paths):
            nib.save(nib.Nifti1Image(arr, affine), path)
        files[row.view] = paths
    assert set(files) == {"CT", "PET_CT"}
    return files


def _load(image_path: Path, label_path: Path, view: str) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The evaluation pipeline's input for a case file: image (1, 1, X, Y, Z), meta, label."""
    d = eval_transforms()({"image": str(image_path), "label": str(label_path), "view": view})
    affine = np.asarray(d["image"].affine, dtype=np.float64)
    meta = {"case_id": f"syn000_petct_{view}", "view": view, "affine": affine,
            "spacing": tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
            "image_path": str(image_path), "label_path": str(label_path)}  # fmt: skip
    return d["image"].as_tensor()[None], meta, d["label"].as_tensor()[0].long()


@pytest.fixture(scope="module")
def adapter(checkpoint) -> SamMed3DAdapter:
    return SamMed3DAdapter(str(checkpoint), name="sam_med3d_turbo", model_kwargs=TINY_KWARGS)


@pytest.fixture(scope="module")
def predictions(adapter, case_files) -> dict[str, tuple[np.ndarray, list[dict], np.ndarray]]:
    """{view: (our labels on the RAS grid, the saved prompts, the RAS grid's affine)}."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = {}
    for view, (image_path, label_path) in case_files.items():
        image, meta, label = _load(image_path, label_path, view)
        pred = adapter.predict_volume(image, meta, UMD13, reference=label)
        assert pred.labels.shape == label.shape and pred.labels.dtype == torch.uint8
        out[view] = (pred.labels.numpy(), pred.prompts, meta["affine"])
    return out


@pytest.fixture(scope="module")
def reference_net() -> torch.nn.Module:
    """The same random weights, built by medim directly (not through our checkpoint loader)."""
    return build_sam_med3d(seed=0)


# ---------------------------------------------------------------------------------------- references


def _first_clicks(prompts: list[dict]) -> dict[int, list[int]]:
    """{label id: coords on the RAS grid} of each organ's first click."""
    out: dict[int, list[int]] = {}
    for p in prompts:
        if p["kind"] == "point":
            out.setdefault(int(p["label"]), p["coords"])
    return out


def _to_roi(coords, grid_affine: np.ndarray, roi_affine: np.ndarray) -> np.ndarray:
    world = np.asarray(grid_affine) @ np.array([*coords, 1.0])
    return np.floor((np.linalg.inv(np.asarray(roi_affine)) @ world)[:3] + 0.5).astype(np.int64)


def _canonical(labels_on_file_grid: np.ndarray, label_path: Path) -> np.ndarray:
    """A label map on the file's grid -> RAS, as the evaluation pipeline orients it."""
    img = nib.Nifti1Image(labels_on_file_grid.astype(np.uint8), nib.load(label_path).affine)
    return np.asarray(nib.as_closest_canonical(img).dataobj)


@torch.no_grad()
def torchio_reference(net, image_path: Path, label_path: Path, clicks: dict[int, list[int]], grid_affine) -> np.ndarray:
    """SAM-Med3D's inference steps (``utils/infer_utils.py``) with torchio and medim, from the files:
    per organ, in increasing label order: binary label, Resample(1.5), ToCanonical, CropOrPad(128) on the
    label, ZNormalization over voxels > 0, one click, sigmoid > 0.5, nearest resampling back onto the
    file's grid, written over the previous organs."""
    subject = tio.Subject(image=tio.ScalarImage(image_path), label=tio.LabelMap(label_path))
    out = np.zeros(subject.spatial_shape, dtype=np.uint8)
    for c in sorted(int(v) for v in torch.unique(subject["label"].data) if v != 0):
        s = copy.deepcopy(subject)
        s["label"].set_data((s["label"].data == c).to(s["label"].data.dtype))
        s = tio.ToCanonical()(tio.Resample(target=SPACING)(s))
        s = tio.CropOrPad(target_shape=(CROP,) * 3, mask_name="label")(s)
        if not s["label"].data.any():
            continue
        roi = tio.ZNormalization(masking_method=lambda x: x > 0)(s["image"].data.clone())[None].float()
        embedding = net.image_encoder(roi)
        point = torch.as_tensor(_to_roi(clicks[c], grid_affine, s["image"].affine), dtype=torch.float32)
        sparse, dense = net.prompt_encoder(points=[point.reshape(1, 1, 3), torch.ones(1, 1, dtype=torch.int64)],
                                           boxes=None, masks=torch.zeros(1, 1, CROP // 4, CROP // 4, CROP // 4))  # fmt: skip
        low_res, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)  # fmt: skip
        hr = torch.nn.functional.interpolate(low_res, size=(CROP,) * 3, mode="trilinear", align_corners=False)
        mask = tio.LabelMap(tensor=(torch.sigmoid(hr) > 0.5)[0].float(), affine=s["image"].affine)
        target = tio.ScalarImage(tensor=torch.zeros(1, *subject.spatial_shape), affine=subject["image"].affine)
        back = tio.Resample(target=target, image_interpolation="nearest")(mask).data[0].numpy()
        out[back == 1] = c
    return _canonical(out, label_path)


def official_reference(code_dir: Path, net, image_path: Path, label_path: Path, clicks, grid_affine, out: Path) -> np.ndarray:
    """The official ``validate_paired_img_gt`` on the files, with our clicks as its prompt generator."""
    sys.path.insert(0, str(code_dir))
    try:
        from utils import infer_utils as iu  # the official repository's module
    finally:
        sys.path.remove(str(code_dir))
    state: dict = {}
    real_preprocess, real_infer = iu.data_preprocess, iu.sam_model_infer

    def preprocess(subject, meta_info, category_index, **kw):
        res = real_preprocess(subject, meta_info, category_index=category_index, **kw)
        state.update(category=category_index, roi_affine=res[2]["roi_subject_affine"])
        return res

    def our_click(prev_mask, gt):
        point = _to_roi(clicks[state["category"]], grid_affine, state["roi_affine"])
        return torch.as_tensor(point).reshape(1, 1, 3), torch.tensor([[1]], dtype=torch.long)

    # torchio >= 1.0 wants target_shape in this private helper, which the official code calls for two
    # meta entries that nothing reads: give it the transform's own target (no effect on the output)
    real_cc = tio.CropOrPad._compute_center_crop_or_pad

    def center_crop_or_pad(self, subject, target_shape=None):
        return real_cc(self, subject, self._resolve_target_voxels(subject) if target_shape is None else target_shape)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iu, "data_preprocess", preprocess)
        mp.setattr(iu, "sam_model_infer", functools.partial(real_infer, prompt_generator=our_click))
        mp.setattr(tio.CropOrPad, "_compute_center_crop_or_pad", center_crop_or_pad)
        with contextlib.redirect_stdout(io.StringIO()):
            iu.validate_paired_img_gt(net, str(image_path), str(label_path), str(out), num_clicks=1)
    return np.asarray(nib.as_closest_canonical(nib.load(out)).dataobj)


def _check(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
    agreement = float((ours == theirs).mean())
    print(f"{what}: {agreement:.5f} of {ours.size} voxels agree; labels {sorted(np.unique(theirs).tolist())}")
    ids = set(np.unique(theirs).tolist()) - {0}
    assert len(ids) >= 3, f"{what}: the reference segments too little to be a test ({ids})"
    assert 0.05 < float((theirs > 0).mean()) < 0.95, f"{what}: trivial reference output"
    assert agreement >= 0.99, f"{what}: {agreement:.4f} of voxels agree"
    return agreement


# ---------------------------------------------------------------------------------------------- tests


def test_checkpoint_loads_as_released_and_safely(checkpoint, adapter, reference_net, tmp_path):
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(checkpoint, weights_only=True)  # argparse.Namespace inside: must be allow-listed
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(checkpoint, weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "args", "epoch"} <= set(ckpt)
    assert isinstance(ckpt["args"], argparse.Namespace)
    ours, ref = adapter.net.state_dict(), reference_net.state_dict()
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    # medim's own loader (what medim_val_single.py calls) reads the same file; it unpickles with
    # weights_only=False, acceptable here only because this test wrote the file itself
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = medim.create_model("SAM-Med3D", pretrained=True, checkpoint_path=str(checkpoint), **TINY_KWARGS)
    assert all(torch.equal(v, ref[k]) for k, v in theirs.state_dict().items())
    # anything beyond plain data is refused, one line naming the file
    bad = tmp_path / "code.pth"
    torch.save({**ckpt, "args": functools.partial(print, "x")}, bad)
    with pytest.raises(CheckpointError, match=r"code\.pth: cannot load checkpoint with weights_only=True"):
        SamMed3DAdapter(str(bad), model_kwargs=TINY_KWARGS)
    assert adapter.info.oracle is True and adapter.info.target_spacing is None
    assert "crop_policy=mask" in adapter.info.preprocessing


@pytest.mark.parametrize("view", ["CT", "PET_CT"])
def test_matches_torchio_medim_reference(view, case_files, predictions, reference_net):
    ours, prompts, grid_affine = predictions[view]
    image_path, label_path = case_files[view]
    theirs = torchio_reference(reference_net, image_path, label_path, _first_clicks(prompts), grid_affine)
    _check(ours, theirs, f"{view} vs torchio+medim reference")
    assert {p["organ"] for p in prompts} == set(ORGANS)
    # the aorta's deepest voxel lies outside its crop: the click sent (and saved) is moved into the crop
    _, meta, label = _load(image_path, label_path, view)
    aorta = UMD13.ids["aorta"]
    assert tuple(_first_clicks(prompts)[aorta]) != center_point(label.numpy() == aorta, meta["spacing"])
    assert int(label[tuple(_first_clicks(prompts)[aorta])]) == aorta


@pytest.mark.parametrize("view", ["CT", "PET_CT"])
def test_matches_official_inference(view, case_files, predictions, reference_net, tmp_path):
    code_dir = os.environ.get(CODE_DIR_ENV)
    if not code_dir or not (Path(code_dir) / "utils" / "infer_utils.py").is_file():
        reason = f"{CODE_DIR_ENV} does not name a SAM-Med3D checkout with utils/infer_utils.py ({code_dir!r})"
        print(reason)
        pytest.skip(reason)
    pytest.importorskip("edt")  # imported by the official infer_utils
    ours, prompts, grid_affine = predictions[view]
    image_path, label_path = case_files[view]
    theirs = official_reference(Path(code_dir), reference_net, image_path, label_path, _first_clicks(prompts),
                                grid_affine, tmp_path / "pred.nii.gz")  # fmt: skip
    _check(ours, theirs, f"{view} vs official validate_paired_img_gt")


def test_point_crop_policy_needs_no_mask_for_the_crop(checkpoint, case_files, compose_cfg):
    """The non-oracle crop (``model=sam_med3d_turbo_point``): centred on the click, so a second blob of
    the organ far away moves the official crop but not this one."""
    from hydra.utils import instantiate

    kwargs = ",".join(f"{k}:{v}" for k, v in TINY_KWARGS.items()).replace(" ", "")
    cfg = compose_cfg("model=sam_med3d_turbo_point", f"model.checkpoint={checkpoint}",
                      f"++model.model_kwargs={{{kwargs}}}", tiny=False)  # fmt: skip
    point = instantiate(cfg.model)
    assert point.info.name == "sam_med3d_turbo_point" and point.crop_policy == "point"
    assert point.info.oracle is True and "crop_policy=point" in point.info.preprocessing
    assert point.info.target_spacing is None and point.info.reported_dice == {"CT": 0.790, "MRI": 0.754}
    image, meta, label = _load(*case_files["CT"], "CT")
    spleen = UMD13.ids["spleen"]
    only = torch.where(label == spleen, label, 0)
    blob = only.clone()
    blob[:3, :3, :3] = spleen  # a far corner: the bounding box doubles, the deepest point stays
    a = point.predict_volume(image, meta, UMD13, reference=only)
    b = point.predict_volume(image, meta, UMD13, reference=blob)
    assert a.prompts == b.prompts and torch.equal(a.labels, b.labels)
    assert int((a.labels == spleen).sum()) > 0
