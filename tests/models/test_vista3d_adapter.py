"""The VISTA3D adapter gives VISTA3D's own answer for a file (issue 19, item 2).

Reference: VISTA3D's official class-prompt inference (Project-MONAI/VISTA ``configs/infer.yaml`` +
``scripts/infer.py``, see ``upstream/vista3d.py``) run on the NIfTI file and writing its label file.
Ours: the project's data pipeline (``eval_transforms``) on the same file, then the adapter. Both load
the same bundle-layout ``model.pt`` (MONAI's ``vista3d132``, tiny width, seeded random weights); the
upstream's VISTA3D class ids go through our label map (the five lobes -> lung) before comparing.

The reference is composed by hand from the MONAI components the pipeline names, unless
``UMD_VISTA3D_CODE_DIR`` points at a checkout of Project-MONAI/VISTA's ``vista3d`` folder: then its
``configs/infer.yaml`` is parsed by ``monai.bundle.ConfigParser`` and its own sliding window and
post-transform run (those variants skip, saying so, without a checkout).

Small and fast: the upstream's 1.5 mm and 128³ windows become 16 mm and 32³ on both sides (the same
override of infer.yaml's ``resample_to_spacing`` and ``patch_size``), so the tiny synthetic volumes take
three overlapping windows along z and are padded in x and y, as a real scan's edges are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from umd_lightning.organs import UMD13, load_label_map
from upstream.cases import synthetic_case
from upstream.vista3d import TINY_EMBED_DIM, make_vista3d_checkpoint, run_vista3d_reference

SPACING = (16.0, 16.0, 16.0)
ROI = (32, 32, 32)
OVERLAP = 0.625
LOBES = {28, 29, 30, 31, 32}
CODE_DIR = os.environ.get("UMD_VISTA3D_CODE_DIR", "")
RAS = (("L", "R"), ("P", "A"), ("I", "S"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_vista3d_checkpoint(tmp_path_factory.mktemp("vista3d_bundle"), tiny=True, seed=0)


@pytest.mark.parametrize("reference", ["monai", "checkout"])
@pytest.mark.parametrize("kind", ["CT", "PET"])
def test_vista3d_matches_its_own_pipeline(tiny_cohort, checkpoint, tmp_path, kind, reference):
    from monai.transforms import LoadImage, Orientation

    from umd_lightning.data.transforms import eval_transforms
    from umd_lightning.models.vista3d import Vista3DAdapter, build_vista3d

    if reference == "checkout" and not (Path(CODE_DIR) / "configs" / "infer.yaml").is_file():
        pytest.skip("set UMD_VISTA3D_CODE_DIR to a Project-MONAI/VISTA checkout's vista3d folder for this variant")
    image_file, label_file, _ = synthetic_case(Path(tiny_cohort).parent, kind, tmp_path)

    adapter = Vista3DAdapter(
        build_vista3d(encoder_embed_dim=TINY_EMBED_DIM), checkpoint=str(checkpoint),
        roi_size=ROI, overlap=OVERLAP, target_spacing=SPACING,
    )
    assert adapter.info.target_spacing is None  # the adapter resamples, not the Lightning module
    class_ids = [c for p in adapter.class_prompts(UMD13) for c in p["class_ids"]]
    assert sorted(class_ids) == [1, 3, 4, 5, 6, 11, 12, 14, 15, 22, 28, 29, 30, 31, 32, 62, 115]

    # upstream: its own pipeline on the file, its label file read back and put in RAS like ours
    written = run_vista3d_reference(
        image_file, checkpoint, tmp_path / "upstream", class_ids, spacing=SPACING, roi_size=ROI, overlap=OVERLAP,
        code_dir=Path(CODE_DIR) if reference == "checkout" else None,
    )
    upstream = LoadImage(image_only=True, ensure_channel_first=True)(str(written))
    upstream = Orientation(axcodes="RAS", labels=RAS)(upstream)
    vista_ids = np.round(upstream[0].numpy()).astype(np.int64)
    found = set(np.unique(vista_ids).tolist()) - {0}
    assert len(found) >= 4 and found & LOBES, f"random weights gave a trivial upstream answer: {sorted(found)}"
    expected = load_label_map("vista3d").apply(vista_ids, UMD13)

    # ours: the project's data pipeline on the same file (physical units, RAS), then the adapter
    data = eval_transforms()({"image": str(image_file), "label": str(label_file), "view": kind})
    image = data["image"]
    meta = {"case_id": f"syn000_{kind}", "view": kind, "affine": np.asarray(image.affine, dtype=np.float64)}
    pred = adapter.predict_volume(image.as_tensor()[None].float(), meta, UMD13)
    ours = pred.labels.numpy()

    assert ours.shape == expected.shape == tuple(image.shape[1:])
    agreement = float((ours == expected).mean())
    print(f"VISTA3D {kind} ({reference} reference): {agreement:.4%} of {ours.size} voxels agree; "
          f"organs {sorted(set(np.unique(ours).tolist()) - {0})}")
    assert agreement >= 0.99
    assert UMD13.ids["lung"] in set(np.unique(ours).tolist())  # lobes merged
    assert len(set(np.unique(ours).tolist()) - {0}) >= 4
    assert {p["organ"]: p["class_ids"] for p in pred.prompts}["lung"] == [28, 29, 30, 31, 32]
