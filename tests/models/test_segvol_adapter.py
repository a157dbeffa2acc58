"""SegVol adapter against the official SegVol code (github.com/BAAI-DCAI/SegVol).

The agreement tests need a checkout of the official repository: set ``UMD_SEGVOL_CODE_DIR`` to it
(``git clone https://github.com/BAAI-DCAI/SegVol``); without it they skip and say so. A random-weight
checkpoint in the released layout is built by the official code (``tests/models/upstream/segvol.py``);
the reference is the official demo's own ``process_ct_gt`` + ``zoom_in_zoom_out`` on the NIfTI file,
with the same text prompts; ours is the data pipeline (``eval_transforms``) + the adapter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from umd_lightning.models.adapter import CheckpointError
from umd_lightning.organs import UMD13

CODE_ENV = "UMD_SEGVOL_CODE_DIR"


def _code_dir() -> Path:
    value = os.environ.get(CODE_ENV, "")
    if not value:
        pytest.skip(f"{CODE_ENV} is not set: no checkout of github.com/BAAI-DCAI/SegVol to verify the adapter against")
    path = Path(value)
    if not (path / "inference_demo.py").is_file():
        pytest.skip(f"{CODE_ENV}={path} is not a checkout of github.com/BAAI-DCAI/SegVol (no inference_demo.py)")
    pytest.importorskip("transformers", reason="SegVol's code needs transformers (umd_lightning[segvol])")
    return path


# ------------------------------------------------------------------------------ errors (run everywhere)


@pytest.mark.parametrize("case", ["none", "absent", "not_a_checkout"])
def test_missing_or_wrong_code_dir_is_a_one_line_error(tmp_path, case):
    from umd_lightning.models.segvol import SegVolAdapter

    code_dir = {"none": None, "absent": tmp_path / "nowhere", "not_a_checkout": tmp_path}[case]
    with pytest.raises(CheckpointError) as err:
        SegVolAdapter(checkpoint=str(tmp_path / "SegVol_v1.pth"), code_dir=code_dir)
    msg = str(err.value)
    assert "\n" not in msg and "SegVol code_dir" in msg and "BAAI-DCAI/SegVol" in msg
    expected = {"none": "no path given", "absent": str(tmp_path / "nowhere"), "not_a_checkout": "missing inference_demo.py"}
    assert expected[case] in msg


def test_config_composes(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "model=segvol", f"model.checkpoint={tmp_path / 'SegVol_v1.pth'}", f"model.code_dir={tmp_path}", tiny=False
    )
    assert cfg.model._target_.endswith("SegVolAdapter") and list(cfg.model.spatial_size) == [32, 256, 256]
    assert "intensity_range" not in cfg.model and "hu_window" not in cfg.model


# ------------------------------------------------------------------ against the official code (checkout)


#: The texts the agreement tests prompt (a subset of labelmaps/segvol_text.yaml, to keep the tests
#: short: each text costs a zoom-out and the zoom-in windows); two texts merge into lung.
TEXTS = ("liver", "spleen", "left lung", "right lung")


@pytest.fixture(scope="module")
def segvol(tmp_path_factory):
    """(code_dir, checkpoint, adapter, official reference), built once for the module."""
    code_dir = _code_dir()
    from tests.models.upstream.segvol import (
        SMALL_PATCH_SIZE,
        SMALL_SPATIAL_SIZE,
        OfficialSegVol,
        make_segvol_checkpoint,
    )
    from umd_lightning.models.segvol import SegVolAdapter
    from umd_lightning.organs import LabelMap, load_label_map

    full = load_label_map("segvol_text")
    subset = LabelMap(
        name="segvol_text_subset", source=full.source, mapping={t: o for t, o in full.mapping.items() if t in TEXTS}
    )
    ckpt = make_segvol_checkpoint(tmp_path_factory.mktemp("segvol"), code_dir)
    adapter = SegVolAdapter(
        checkpoint=str(ckpt),
        code_dir=str(code_dir),
        label_map=subset,
        spatial_size=SMALL_SPATIAL_SIZE,
        patch_size=SMALL_PATCH_SIZE,
    )
    reference = OfficialSegVol(ckpt, code_dir)
    return code_dir, ckpt, adapter, reference


def test_checkpoint_has_the_released_layout_and_misfits_are_named(segvol, tmp_path):
    import torch

    from umd_lightning.models.adapter import load_checkpoint_file

    from tests.models.upstream.segvol import SMALL_SPATIAL_SIZE

    _, ckpt, adapter, _ = segvol
    obj = load_checkpoint_file(ckpt)  # weights_only=True
    assert {"model", "optimizer", "epoch", "scheduler"} <= set(obj)
    assert all(k.startswith("module.") for k in obj["model"])
    assert adapter.info.prompt_kind == "text" and not adapter.info.oracle and "percentiles" in adapter.info.preprocessing
    # a checkpoint that does not fit: one line naming the file and the sizes
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"module.image_encoder.patch_embedding.position_embeddings": torch.zeros(1, 2, 3)}}, bad)
    with pytest.raises(CheckpointError) as err:
        adapter._load_weights(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and f"spatial_size={SMALL_SPATIAL_SIZE}" in msg
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        adapter._load_weights(bad)


@pytest.mark.parametrize(
    "session, file",
    [("petct", "ct.nii.gz"), ("petmri", "pet.nii.gz")],
    ids=["CT_RAS", "PET_LPS"],
)
def test_agrees_with_the_official_demo(segvol, tiny_cohort, tmp_path, session, file):
    """Same file, same text prompts: our labels equal the official demo's on >= 99% of voxels.

    The PET is taken on its own grid (the file as the demo reads it) and is stored LPS, so the
    stored-order handling is exercised; the CT is stored RAS.
    """
    import nibabel as nib
    import nibabel.orientations as nio

    from tests.models.upstream.segvol import merge_organs
    from umd_lightning.data.transforms import eval_transforms

    _, _, adapter, reference = segvol
    image = tiny_cohort.parent / "syn000" / session / file
    prompts = adapter.text_prompts(UMD13)
    organs = [(p["label"], p["texts"]) for p in prompts]
    texts = [t for _, ts in organs for t in ts]

    ref_logits = reference(image, texts, tmp_path)
    ref_stored = merge_organs(ref_logits, organs)
    codes = nib.aff2axcodes(nib.load(str(image)).affine)
    ref = nio.apply_orientation(ref_stored, nio.ornt_transform(nio.axcodes2ornt(codes), nio.axcodes2ornt("RAS")))

    # our pipeline on the same file; the "label" is the reference's all-category file on the image's grid
    # (the adapter is not oracle and never reads it; it only fixes the grid)
    label = tmp_path / "all_categories.nii.gz"
    data = eval_transforms()({"image": str(image), "label": str(label)})
    meta = {"image_path": str(image), "label_path": str(label), "view": "CT" if file == "ct.nii.gz" else "PET_MRI"}
    pred = adapter.predict_volume(data["image"][None].as_tensor(), meta, UMD13)
    ours = pred.labels.numpy()

    assert ours.shape == ref.shape
    present = [int(v) for v in np.unique(ref) if v != 0]
    assert len(present) >= 3, f"reference output too trivial to compare: labels {present}"
    agreement = float((ours == ref).mean())
    print(f"SegVol {session}/{file} ({''.join(codes)}): agreement {agreement:.5f}, reference labels {present}")
    assert agreement >= 0.99
    assert {p["orientation"] for p in pred.prompts} == {"".join(codes)}
