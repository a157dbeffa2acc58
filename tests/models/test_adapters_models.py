"""Every adapter through its Hydra config: tiny network, random weights, checkpoint round trip, a small
volume in, a label map on the organ set out; clear errors for missing packages and checkpoints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from monai.inferers import sliding_window_inference

from umd_lightning.extras import MissingExtraError
from umd_lightning.models.adapter import CheckpointError
from umd_lightning.organs import UMD13

SHAPE = (20, 24, 18)
ORGAN_IDS = set(UMD13.labels)

TINY = {
    "segresnet": ["model.net.init_filters=8", "model.net.blocks_down=[1,1]", "model.net.blocks_up=[1]", "model.roi_size=[16,16,16]"],
    # batch norm (eval: running stats) lets the 1-voxel bottleneck of a 32^3 window through
    "swinunetr": ["model.net.feature_size=12", "+model.net.depths=[1,1,1,1]", "+model.net.norm_name=batch",
                  "model.roi_size=[32,32,32]"],
    "dynunet": [
        "model.net.kernel_size=[3,3,3]", "model.net.strides=[1,2,2]", "model.net.upsample_kernel_size=[2,2]",
        "model.net.filters=[8,16,32]", "model.roi_size=[16,16,16]",
    ],
    "unet_ct": ["model.net.channels=[4,8]", "model.net.strides=[2]", "model.roi_size=[16,16,16]"],
}
SAM_KW = (
    "++model.model_kwargs={encoder_embed_dim:48,encoder_depth:2,encoder_num_heads:2,"
    "encoder_global_attn_indexes:[1],prompt_embed_dim:48,image_size:32,vit_patch_size:8}"
)


def _cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _build(compose_cfg, *overrides: str):
    cfg = compose_cfg(*overrides, tiny=False)
    try:
        return instantiate(cfg.model)
    except InstantiationException as exc:
        raise _cause(exc) from None


def _volume(seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed))


def _reference_organs(shape=SHAPE) -> torch.Tensor:
    ref = torch.zeros(shape, dtype=torch.uint8)
    ref[2:9, 3:11, 2:9] = UMD13.ids["liver"]
    ref[11:18, 12:21, 8:16] = UMD13.ids["spleen"]
    return ref


# ------------------------------------------------------------------------- MONAI networks


@pytest.mark.parametrize("name", ["segresnet", "swinunetr", "dynunet", "unet_ct"])
def test_monai_network_round_trip_through_hydra(compose_cfg, tmp_path, name):
    torch.manual_seed(0)
    tiny = [f"model={name}", *TINY[name], "model.target_spacing=null"]
    fresh = _build(compose_cfg, *tiny, "model.checkpoint=null")
    ckpt = tmp_path / f"{name}.ckpt"
    # a Lightning-style checkpoint: the loader must strip the "model.net." prefix
    torch.save({"state_dict": {f"model.net.{k}": v for k, v in fresh.net.state_dict().items()}, "epoch": 1}, ckpt)
    adapter = _build(compose_cfg, *tiny, f"model.checkpoint={ckpt}").eval()
    for k, v in fresh.net.state_dict().items():
        torch.testing.assert_close(adapter.net.state_dict()[k], v)
    assert adapter.info.prompt_kind == "automatic" and adapter.info.oracle is False
    assert adapter.organs_predicted(UMD13) == UMD13.organs
    image = _volume()
    # the adapter receives HU and applies its own CT window (-1000..1000 -> [0, 1]): the network sees `image`
    hu = image * 2000.0 - 1000.0
    pred = adapter.predict_volume(hu, {"case_id": "c", "view": "CT", "spacing": (3.0, 3.0, 3.0)}, UMD13)
    assert pred.labels.shape == SHAPE and pred.labels.dtype == torch.uint8
    assert set(pred.labels.unique().tolist()) <= {0} | ORGAN_IDS
    with torch.no_grad():
        ref = sliding_window_inference(image, adapter.roi_size, 4, adapter.net, overlap=adapter.overlap,
                                       mode="gaussian", sigma_scale=0.125).argmax(1)[0]
    assert (pred.labels.long() == ref).float().mean() > 0.999
    # forward is the network (the training path)
    assert adapter(torch.zeros(1, 1, *adapter.roi_size)).shape[1] == UMD13.num_classes


def test_wrong_checkpoint_path_is_one_line_naming_it(compose_cfg, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(CheckpointError) as err:
        _build(compose_cfg, "model=segresnet", *TINY["segresnet"], f"model.checkpoint={missing}")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_mismatched_checkpoint_names_file_and_keys(compose_cfg, tmp_path):
    other = _build(compose_cfg, "model=dynunet", *TINY["dynunet"], "model.checkpoint=null")
    ckpt = tmp_path / "dynunet.pt"
    torch.save(other.net.state_dict(), ckpt)
    with pytest.raises(CheckpointError) as err:
        _build(compose_cfg, "model=segresnet", *TINY["segresnet"], f"model.checkpoint={ckpt}")
    msg = str(err.value)
    assert str(ckpt) in msg and "missing keys" in msg and "unexpected keys" in msg and "\n" not in msg
    # same keys, other shapes (another channel count)
    torch.save(other.net.state_dict(), ckpt)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        _build(compose_cfg, "model=dynunet", *TINY["dynunet"], "model.net.filters=[8,16,48]", f"model.checkpoint={ckpt}")


def test_checkpoints_are_loaded_weights_only(tmp_path):
    """A pickle that would run code is refused (torch.load(weights_only=True))."""
    from monai.networks.nets import UNet

    from umd_lightning.models.adapter import load_state_dict_checked

    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0)
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": net.state_dict(), "hook": _Evil()}, ckpt)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict_checked(net, ckpt)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


# ------------------------------------------------------------------------- VISTA3D

VISTA_TINY = ["model=vista3d", "model.net.encoder_embed_dim=16", "model.net.blocks_down=[1,1,1]",
              "model.roi_size=[16,16,16]", "model.target_spacing=null"]
# VISTA3D label dictionary (MONAI model zoo vista3d), written out by hand for the independent check.
VISTA_IDS = {"liver": [1], "spleen": [3], "pancreas": [4], "kidney_right": [5], "aorta": [6], "esophagus": [11],
             "stomach": [12], "kidney_left": [14], "urinary_bladder": [15], "brain": [22],
             "lung": [28, 29, 30, 31, 32], "colon": [62], "heart": [115]}


@pytest.fixture(scope="module")
def vista_ckpt(tmp_path_factory):
    from umd_lightning.models.vista3d import build_vista3d

    torch.manual_seed(1)
    net = build_vista3d(encoder_embed_dim=16, blocks_down=(1, 1, 1))
    path = tmp_path_factory.mktemp("vista") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_vista3d_class_prompts(compose_cfg, vista_ckpt):
    adapter = _build(compose_cfg, *VISTA_TINY, f"model.checkpoint={vista_ckpt}", "model.prompt=class").eval()
    assert adapter.info.prompt_kind == "class" and adapter.info.oracle is False
    assert adapter.info.vocabulary == "vista3d"
    image = _volume(2, (16, 16, 16))  # one window: the blend is a positive factor, argmax unchanged
    pred = adapter.predict_volume(image, {"case_id": "c"}, UMD13)
    assert pred.labels.shape == (16, 16, 16) and set(pred.labels.unique().tolist()) <= {0} | ORGAN_IDS
    sent = {p["organ"]: p["class_ids"] for p in pred.prompts}
    assert sent == VISTA_IDS
    # independent: VISTA3D's own post-processing (max over an organ's classes, background if all <= 0)
    organs = list(VISTA_IDS)
    classes = [c for o in organs for c in VISTA_IDS[o]]
    lo, hi = adapter.intensity_range  # VISTA3D's own ScaleIntensityRanged, applied by the adapter
    with torch.no_grad():
        logits = adapter.net(((image - lo) / (hi - lo)).clamp(0, 1), class_vector=torch.tensor(classes)[:, None],
                             transpose=True)[0]
    per_organ, i = [], 0
    for o in organs:
        n = len(VISTA_IDS[o])
        per_organ.append(logits[i:i + n].max(0).values)
        i += n
    scores = torch.stack(per_organ)
    expected = torch.tensor([UMD13.ids[o] for o in organs])[scores.argmax(0)]
    expected[(scores <= 0).all(0)] = 0
    assert (pred.labels.long() == expected).float().mean() > 0.999


def test_vista3d_point_prompts_are_oracle(compose_cfg, vista_ckpt):
    adapter = _build(compose_cfg, *VISTA_TINY, f"model.checkpoint={vista_ckpt}", "model.prompt=point",
                     "model.prompts.corrective_clicks=1").eval()
    assert adapter.info.prompt_kind == "point" and adapter.info.oracle is True
    ref = _reference_organs()
    pred = adapter.predict_volume(_volume(3), {"case_id": "c"}, UMD13, reference=ref)
    assert pred.labels.shape == SHAPE
    assert set(pred.labels.unique().tolist()) <= {0, UMD13.ids["liver"], UMD13.ids["spleen"]}
    centres = [p for p in pred.prompts if p["source"] == "center"]
    assert {p["organ"] for p in centres} == {"liver", "spleen"}
    for p in centres:
        assert ref[tuple(p["coords"])] == p["label"]
    json.dumps(pred.prompts)


# ------------------------------------------------------------------------- MONAI bundle


def test_monai_bundle_folder(compose_cfg, tmp_path):
    from monai.networks.nets import UNet

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    net_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 5,
               "channels": [4, 8], "strides": [2], "num_res_units": 0}
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"network_def": net_def, "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]}}))
    channels = {"0": "background", "1": "spleen", "2": "kidney", "3": "left kidney", "4": "liver"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(
        {"network_data_format": {"outputs": {"pred": {"type": "image", "channel_def": channels}}}}))
    torch.manual_seed(0)
    net = UNet(3, 1, 5, (4, 8), (2,), num_res_units=0)
    # bias the output so that all five channels win somewhere
    torch.save(net.state_dict(), bundle / "models" / "model.pt")

    adapter = _build(compose_cfg, "model=monai_bundle", f"model.bundle_dir={bundle}").eval()
    assert adapter.roi_size == (16, 16, 16)
    # a side-less "kidney" names neither kidney of the organ set
    assert adapter.organs_predicted(UMD13) == ("liver", "spleen", "kidney_left")
    image = _volume(4)
    pred = adapter.predict_volume(image * 2000.0 - 1000.0, {"case_id": "c", "view": "CT"}, UMD13)  # HU in
    with torch.no_grad():
        raw = sliding_window_inference(image, (16, 16, 16), 4, net, overlap=adapter.overlap, mode="gaussian").argmax(1)[0]
    lut = torch.tensor([0, UMD13.ids["spleen"], 0, UMD13.ids["kidney_left"], UMD13.ids["liver"]])
    assert (pred.labels.long() == lut[raw]).float().mean() > 0.999

    with pytest.raises(CheckpointError, match="bundle folder not found"):
        _build(compose_cfg, "model=monai_bundle", f"model.bundle_dir={tmp_path / 'nope'}")
    # a "$" expression is Python that MONAI runs while parsing: refused in one line before it runs
    marker = tmp_path / "code_ran"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["side_effect"] = f"$open({str(marker)!r}, 'w').write('x')"
    config["network_def"]["out_channels"] = "$5"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        _build(compose_cfg, "model=monai_bundle", f"model.bundle_dir={bundle}")
    assert "model.trust_code=true" in str(err.value) and "\n" not in str(err.value) and "$" in str(err.value)
    assert not marker.exists()
    trusted = _build(compose_cfg, "model=monai_bundle", f"model.bundle_dir={bundle}", "model.trust_code=true")
    assert trusted.organs_predicted(UMD13) == ("liver", "spleen", "kidney_left")

    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match="model.pt"):
        _build(compose_cfg, "model=monai_bundle", f"model.bundle_dir={bundle}", "model.trust_code=true")


# ------------------------------------------------------------------------- SAM-Med3D (medim)


def test_sam_med3d_through_medim(compose_cfg, tmp_path):
    medim = pytest.importorskip("medim")
    kw = dict(encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1],
              prompt_embed_dim=48, image_size=32, vit_patch_size=8)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        net = medim.create_model("SAM-Med3D", pretrained=False, **kw)
    ckpt = tmp_path / "sam_med3d.pth"
    torch.save({"model_state_dict": net.state_dict(), "epoch": 7, "best_dice": np.float64(0.5)}, ckpt)
    adapter = _build(compose_cfg, "model=sam_med3d", f"model.checkpoint={ckpt}", SAM_KW,
                     "model.prompts.corrective_clicks=1", "model.prompts.k_random=1")
    assert adapter.info.prompt_kind == "point" and adapter.info.oracle is True
    assert adapter.info.target_spacing is None  # it resamples to 1.5 mm itself
    torch.testing.assert_close(adapter.net.state_dict()["mask_decoder.iou_token.weight"],
                               net.state_dict()["mask_decoder.iou_token.weight"])
    ref = _reference_organs()
    meta = {"case_id": "c", "affine": np.diag([2.0, 2.0, 2.0, 1.0])}
    pred = adapter.predict_volume(_volume(5) * 100, meta, UMD13, reference=ref)
    assert pred.labels.shape == SHAPE
    assert set(pred.labels.unique().tolist()) <= {0, UMD13.ids["liver"], UMD13.ids["spleen"]}
    assert {(p["organ"], p["source"]) for p in pred.prompts} >= {("liver", "center"), ("liver", "random")}

    turbo = compose_cfg("model=sam_med3d_turbo", f"model.checkpoint={ckpt}", tiny=False).model
    assert turbo.name == "sam_med3d_turbo" and turbo._target_.endswith("SamMed3DAdapter")


def test_sam_med3d_without_medim_names_the_extra(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medim", None)  # import medim -> ImportError
    with pytest.raises(MissingExtraError, match=r"umd_lightning\[sam_med3d\]"):
        _build(compose_cfg, "model=sam_med3d", f"model.checkpoint={tmp_path / 'x.pth'}")


# ------------------------------------------------------------------------- packages not installed


@pytest.mark.parametrize(
    "name, module, extra, paths",
    [
        ("nnunet", "nnunetv2", "nnunet", ["model.model_folder={d}"]),
        ("totalsegmentator", "totalsegmentator", "totalsegmentator", ["model.weights_dir={d}"]),
        ("nninteractive", "nnInteractive", "nninteractive", ["model.model_folder={d}"]),
    ],
)
def test_missing_package_error_names_the_extra(compose_cfg, tmp_path, monkeypatch, name, module, extra, paths):
    # CI installs every extra: hide the package (and its loaded submodules) as if it were not installed
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, loaded, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as err:
        _build(compose_cfg, f"model={name}", *(p.format(d=tmp_path) for p in paths))
    assert f"umd_lightning[{extra}]" in str(err.value) and module in str(err.value)


def test_sat_error_says_what_to_install(compose_cfg, tmp_path):
    if importlib.util.find_spec("model") is not None:
        pytest.skip("a module named 'model' is importable here")
    with pytest.raises(MissingExtraError, match="zhaoziheng/SAT"):
        _build(compose_cfg, "model=sat", f"model.checkpoint={tmp_path / 'a'}", f"model.text_encoder={tmp_path / 'b'}")
