"""SAT through the official repository's code: our labels equal SAT's own inference on the same NIfTI file.

SAT (github.com/zhaoziheng/SAT) is not a package: these tests need a checkout named by
``UMD_SAT_CODE_DIR`` and skip, saying so, without one (the missing-``code_dir`` error test runs
everywhere). The checkpoints are SAT-Nano built by the repository's own classes with random seeded
weights, saved in the released layout (``tests/models/upstream/sat.py``). The case files are a small
block of the built-in cohort's CT (int16 HU, as stored) and of its PET (SUV, on the label grid), so
that SAT-Nano runs on two CPU cores; the window is 64x32x32 instead of the official 288x288x96 (the
same code with other constants; the block after SAT's 1x1x3 mm resampling is 46x37x9, two windows).

Reference: the official inference path (``Inference_Dataset`` + ``inference_engine.inference``) in a
subprocess on the files, with the 13 organ prompts and the modality a user would give (ct / pet).
Ours: ``eval_transforms()`` on the same files + ``SATAdapter.predict_volume``. Compared:

- each prompt's mask on SAT's cropped 1x1x3 mm grid (what the official engine writes);
- each prompt's mask mapped back onto the input grid (the reference maps with plain affine
  arithmetic, the adapter with MONAI);
- the adapter's label map against the reference's per-prompt masks: a voxel agrees when it is
  background where no prompt fired, or an organ whose prompt fired there (SAT writes overlapping
  masks; the adapter keeps the most probable organ).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from umd_lightning.extras import MissingExtraError
from umd_lightning.models.adapter import CheckpointError
from umd_lightning.models.sat import SATAdapter
from umd_lightning.organs import UMD13, load_label_map

CODE_DIR_ENV = "UMD_SAT_CODE_DIR"
WINDOW = (64, 32, 32)
#: voxels of the cohort's label grid (9 x 9 x 12 mm at scale 3) kept around the right kidney
BLOCK = (6, 5, 3)
VIEWS = {"CT": ("ct", "ct"), "PET_CT": ("pet", "pet")}  # view -> (file, modality the reference gets)


def _code_dir() -> Path:
    path = os.environ.get(CODE_DIR_ENV, "")
    if not path:
        reason = f"{CODE_DIR_ENV} is not set: SAT's tests need a checkout of github.com/zhaoziheng/SAT"
    elif not (Path(path) / "model" / "maskformer.py").is_file():
        reason = f"{CODE_DIR_ENV}={path} is not a checkout of zhaoziheng/SAT (no model/maskformer.py)"
    else:
        return Path(path)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def test_missing_code_dir_is_one_line_error(tmp_path):
    for code_dir, words in ((tmp_path / "nowhere", "not found"), (tmp_path, "not a checkout"), ("???", "not set")):
        with pytest.raises(MissingExtraError) as exc:
            SATAdapter(checkpoint="a.pth", text_encoder="b.pth", text_model="lm", code_dir=str(code_dir))
        msg = str(exc.value)
        assert "\n" not in msg and words in msg
        if code_dir != "???":
            assert str(code_dir) in msg


def test_config_without_code_dir_says_what_to_clone(compose_cfg, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "model=sat", f"model.checkpoint={tmp_path / 'a.pth'}", f"model.text_encoder={tmp_path / 'b.pth'}", tiny=False
    )
    assert list(cfg.model.window) == [288, 288, 96] and cfg.model.modality.PET_CT == "pet"
    with pytest.raises((MissingExtraError, InstantiationException)) as exc:
        instantiate(cfg.model)
    err = exc.value.__cause__ if isinstance(exc.value, InstantiationException) else exc.value
    assert isinstance(err, MissingExtraError) and "\n" not in str(err) and "zhaoziheng/SAT" in str(err)
    assert set(load_label_map("sat_text").organs_covered(UMD13)) == set(UMD13.organs)


# ------------------------------------------------------------------------------------------- with a checkout


@pytest.fixture(scope="module")
def code_dir() -> Path:
    return _code_dir()


@pytest.fixture(scope="module")
def sat_run(code_dir, tiny_cohort, tmp_path_factory):
    """Case files, random-weight checkpoints, the official run on both files, and our adapter."""
    import nibabel as nib

    from umd_lightning.data.transforms import eval_transforms

    from upstream.sat import make_sat_checkpoints, run_official, text_model_dir

    tmp = tmp_path_factory.mktemp("sat")
    times: dict[str, float] = {}
    session = Path(tiny_cohort).parent / "syn000" / "petct"
    label = nib.load(session / "label.nii.gz")
    lab = np.asarray(label.dataobj)
    centre = np.argwhere(lab == UMD13.ids["kidney_right"]).mean(0).round().astype(int)
    start = np.clip(centre - np.asarray(BLOCK) // 2, 0, np.asarray(lab.shape) - BLOCK)
    box = tuple(slice(int(s), int(s) + b) for s, b in zip(start, BLOCK))
    affine = label.affine.copy()
    affine[:3, 3] = label.affine[:3, :3] @ start + label.affine[:3, 3]
    nib.save(nib.Nifti1Image(lab[box], affine), tmp / "label.nii.gz")
    ct = nib.load(session / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[box].astype(np.int16), affine), tmp / "ct.nii.gz")
    # the PET on the label grid: our data pipeline's resampling, written as the file both sides read
    pet = eval_transforms()({"image": str(session / "pet.nii.gz"), "label": str(tmp / "label.nii.gz")})["image"]
    nib.save(nib.Nifti1Image(np.asarray(pet[0], dtype=np.float32), np.asarray(pet.affine)), tmp / "pet.nii.gz")

    t = time.perf_counter()
    seg, text = make_sat_checkpoints(tmp / "weights", code_dir, variant="nano")
    times["build checkpoints"] = time.perf_counter() - t
    texts = [str(k) for k in load_label_map("sat_text").mapping]
    cases = [{"image": str(tmp / f"{f}.nii.gz"), "label": texts, "modality": m} for f, m in VIEWS.values()]
    t = time.perf_counter()
    masks = run_official(code_dir, seg, text, tmp / "weights" / "hf_cache", cases, tmp / "official", window=WINDOW)
    times["official (2 files)"] = time.perf_counter() - t
    t = time.perf_counter()
    adapter = SATAdapter(
        checkpoint=str(seg), text_encoder=str(text), text_model=str(text_model_dir(tmp / "weights")),
        code_dir=str(code_dir), variant="nano", window=WINDOW,
    )  # fmt: skip
    times["adapter build"] = time.perf_counter() - t
    refs = {view: (dict(np.load(p)), dict(np.load(p.parent / "masks_sat.npz"))) for view, p in zip(VIEWS, masks)}
    return {"tmp": tmp, "adapter": adapter, "refs": refs, "texts": texts, "times": times, "seg": seg}


@pytest.mark.slow
@pytest.mark.parametrize("view", list(VIEWS))
def test_sat_matches_official_inference(sat_run, view):
    from umd_lightning.data.transforms import eval_transforms
    from umd_lightning.models.resample import labels_to_grid

    adapter: SATAdapter = sat_run["adapter"]
    texts, (ref_input, ref_sat) = sat_run["texts"], sat_run["refs"][view]
    tmp = sat_run["tmp"]
    d = eval_transforms()({"image": str(tmp / f"{VIEWS[view][0]}.nii.gz"), "label": str(tmp / "label.nii.gz")})
    image = d["image"].as_tensor()[None].float()
    meta = {"view": view, "affine": np.asarray(d["image"].affine, dtype=np.float64), "case_id": f"syn000_{view}"}

    # one inference: keep what the adapter computes on SAT's grid on the way
    seen: dict[str, object] = {}
    preprocess, probabilities = adapter.preprocess, adapter.probabilities
    adapter.preprocess = lambda *a: seen.setdefault("pre", preprocess(*a))  # type: ignore[method-assign]
    adapter.probabilities = lambda *a: seen.setdefault("probs", probabilities(*a))  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        pred = adapter.predict_volume(image, meta, UMD13)
        elapsed = time.perf_counter() - t
    finally:
        del adapter.preprocess, adapter.probabilities
    probs: torch.Tensor = seen["probs"]  # type: ignore[assignment]
    _, sat_affine = seen["pre"]  # type: ignore[misc]
    assert [p["modality"] for p in pred.prompts] == [VIEWS[view][1]] * len(pred.prompts)

    # non-trivial: the official masks vary across voxels and prompts, and several organs win
    frac = {t: float(ref_sat[t].mean()) for t in texts}
    assert sum(0.05 < f < 0.95 for f in frac.values()) >= 5, frac
    labels = pred.labels.numpy()
    assert labels.shape == tuple(image.shape[-3:]) and labels.dtype == np.uint8
    assert len(set(np.unique(labels).tolist()) - {0}) >= 3, np.unique(labels)

    # 1) each prompt's mask on SAT's grid
    ours_sat = {t: (probs[i] > 0.5).numpy() for i, t in enumerate(texts)}
    sat_agree = np.mean([(ours_sat[t] == ref_sat[t]).mean() for t in texts])
    # 2) each prompt's mask on the input grid
    shape = tuple(image.shape[-3:])
    ours_in = {t: labels_to_grid(torch.as_tensor(ours_sat[t], dtype=torch.uint8), sat_affine, meta["affine"], shape)
               for t in texts}  # fmt: skip
    in_agree = np.mean([(ours_in[t].numpy().astype(bool) == ref_input[t]).mean() for t in texts])
    # 3) our label map against the reference's (overlapping) per-prompt masks, through the label map
    lm = load_label_map("sat_text")
    fired = np.zeros((len(UMD13.organs) + 1, *shape), dtype=bool)
    for t in texts:
        fired[UMD13.ids[lm.mapping[t]]] |= ref_input[t]
    fired[0] = ~fired[1:].any(0)
    label_agree = float(np.take_along_axis(fired, labels[None].astype(np.int64), 0).mean())
    print(
        f"\nSAT {view}: per-prompt agreement on SAT's grid {sat_agree:.4%} ({ref_sat[texts[0]].size} voxels x "
        f"{len(texts)} prompts), on the input grid {in_agree:.4%}; labels consistent with the official masks "
        f"{label_agree:.4%} ({labels.size} voxels, organs {sorted(set(np.unique(labels).tolist()) - {0})}); "
        f"predict_volume {elapsed:.1f} s; setup {', '.join(f'{k} {v:.1f} s' for k, v in sat_run['times'].items())}"
    )
    assert sat_agree >= 0.99 and in_agree >= 0.99 and label_agree >= 0.99


def test_sat_checkpoint_errors_are_one_line(sat_run, code_dir, tmp_path):
    from upstream.sat import text_model_dir

    kwargs = dict(text_model=str(text_model_dir(sat_run["tmp"] / "weights")), code_dir=str(code_dir), variant="nano")
    bad = tmp_path / "bad.pth"
    torch.save({"step": 1, "model_state_dict": {"module.foo": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError) as exc:
        SATAdapter(checkpoint=str(bad), text_encoder=str(bad), **kwargs)
    assert "\n" not in str(exc.value) and str(bad) in str(exc.value) and "missing" in str(exc.value)
    torch.save({"weights": {}}, bad)
    with pytest.raises(CheckpointError, match="model_state_dict"):
        SATAdapter(checkpoint=str(bad), text_encoder=str(bad), **kwargs)


def test_sat_code_is_imported_in_a_scope(code_dir):
    """SAT's generic top-level packages and its own dynamic_network_architectures leave no trace."""
    import importlib
    import sys

    from umd_lightning.models.sat import import_sat_code

    path, before = list(sys.path), {n for n in sys.modules if n.split(".")[0] in ("model", "data", "train", "evaluate")}
    sat = import_sat_code(code_dir)
    assert sys.path == path
    assert {n for n in sys.modules if n.split(".")[0] in ("model", "data", "train", "evaluate")} == before
    assert Path(sat.maskformer.__file__).is_relative_to(code_dir)
    unet = sys.modules.get(sat.maskformer.PlainConvUNet.__module__)
    assert unet is None or not Path(unet.__file__).is_relative_to(code_dir)  # SAT's copy is not cached
    dna = importlib.util.find_spec("dynamic_network_architectures")
    if dna is not None:  # the installed one (nnU-Net's) is what everyone else still gets
        assert not Path(dna.origin).is_relative_to(code_dir)
