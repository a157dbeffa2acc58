"""VISTA3D as upstream ships and runs it: a bundle ``models/model.pt`` and the official inference pipeline.

Checkpoint: the MONAI model-zoo bundle ``vista3d`` ships ``models/model.pt``, a plain state dict of
``monai.networks.nets.vista3d132`` (its ``network_def``), loaded by ``CheckpointLoader``. Here the network
is built by MONAI's own ``vista3d132`` (tiny: ``encoder_embed_dim`` 8 instead of 48; otherwise the
released architecture), seeded random weights, saved the same way.

Reference inference: VISTA3D's own pipeline as Project-MONAI/VISTA composes it -- ``vista3d/configs/
infer.yaml``'s ``transforms_infer`` (LoadImaged, EnsureChannelFirstd, ScaleIntensityRanged
-963.82..1053.68 -> [0, 1] clipped, Orientationd RAS, Spacingd 1.5 mm bilinear align_corners,
CastToTyped) and ``scripts/infer.py``'s ``InferClass.infer`` with a class prompt: collate,
``sliding_window_inference`` (Gaussian, overlap 0.625, the model's output transposed), decollate,
``VistaPostTransform``, ``Invertd`` (nearest) onto the original image, ``SaveImaged``. Two ways:

* ``code_dir`` = a checkout of Project-MONAI/VISTA's ``vista3d`` folder: the transforms are parsed from
  its ``configs/infer.yaml`` by ``monai.bundle.ConfigParser`` and the sliding window and post-transform
  are the checkout's own ``scripts/sliding_window.py`` and ``scripts/utils/trans_utils.py``;
* without one: the same MONAI components composed here by hand (``monai.inferers.
  sliding_window_inference``, which the checkout's copy derives from, and MONAI's
  ``monai.apps.vista3d.transforms.VistaPostTransformd``).

Nothing here is copied from those repositories; the checkout is imported where it lies.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

#: encoder width of the tiny test network (the released vista3d132 uses 48).
TINY_EMBED_DIM = 8
#: infer.yaml's ScaleIntensityRanged a_min / a_max.
A_MIN, A_MAX = -963.8247715525971, 1053.678477684517


def make_vista3d_checkpoint(tmp: Path, tiny: bool = True, seed: int = 0) -> Path:
    """A bundle-layout ``vista3d/models/model.pt`` under ``tmp``: ``vista3d132``'s state dict, random weights.

    Args:
        tmp: folder to write into.
        tiny: ``encoder_embed_dim`` :data:`TINY_EMBED_DIM` (else 48, the released size, ~870 MB).
        seed: torch seed of the initialisation.

    Returns:
        The path of ``model.pt``.
    """
    from monai.networks.nets import vista3d132

    torch.manual_seed(seed)
    net = vista3d132(encoder_embed_dim=TINY_EMBED_DIM if tiny else 48, in_channels=1)
    path = Path(tmp) / "vista3d" / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def _import_file(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def infer_transforms(spacing: Sequence[float], code_dir: Path | None = None) -> Any:
    """infer.yaml's ``transforms_infer``: parsed from the checkout's file, or the same list by hand."""
    if code_dir is not None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(Path(code_dir) / "configs" / "infer.yaml"))
        parser.update({"resample_to_spacing": [float(s) for s in spacing]})
        return parser.get_parsed_content("transforms_infer")
    from monai.transforms import (
        CastToTyped,
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return Compose([
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        ScaleIntensityRanged(keys="image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0, clip=True),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys=["image"], pixdim=[float(s) for s in spacing], mode=["bilinear"], align_corners=[True]),
        CastToTyped(keys="image", dtype=torch.float32),
    ])


def run_vista3d_reference(
    image_file: Path,
    checkpoint: Path,
    out_dir: Path,
    class_ids: Sequence[int],
    *,
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    roi_size: Sequence[int] = (128, 128, 128),
    overlap: float = 0.625,
    encoder_embed_dim: int = TINY_EMBED_DIM,
    code_dir: Path | None = None,
) -> Path:
    """VISTA3D's own class-prompt inference on ``image_file``; returns the label file it writes.

    The written labels are VISTA3D class ids on the original image's grid and orientation.
    """
    from monai import transforms
    from monai.data import MetaTensor, decollate_batch, list_data_collate
    from monai.networks.nets import vista3d132

    if code_dir is not None:
        code_dir = Path(code_dir)
        sliding_window_inference = _import_file(
            "vista3d_upstream_sliding_window", code_dir / "scripts" / "sliding_window.py"
        ).sliding_window_inference
        VistaPost = _import_file(  # noqa: N806
            "vista3d_upstream_trans_utils", code_dir / "scripts" / "utils" / "trans_utils.py"
        ).VistaPostTransform
    else:
        from monai.apps.vista3d.transforms import VistaPostTransformd as VistaPost  # noqa: N813
        from monai.inferers import sliding_window_inference

    # the bundle's network_def + CheckpointLoader; infer.py loads with torch.load
    model = vista3d132(encoder_embed_dim=encoder_embed_dim, in_channels=1)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    model.eval()

    def infer_wrapper(inputs: torch.Tensor, model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
        return model(input_images=inputs, **kwargs).transpose(1, 0)

    pre = infer_transforms(spacing, code_dir)
    batch = pre({"image": str(image_file)})
    batch["label_prompt"] = list(class_ids)
    batch = list_data_collate([batch])
    with torch.no_grad():
        pred = sliding_window_inference(
            inputs=batch["image"],
            roi_size=list(roi_size),
            sw_batch_size=1,
            predictor=lambda x, **kw: infer_wrapper(x, model, **kw),
            mode="gaussian",
            overlap=overlap,
            class_vector=torch.tensor(list(class_ids)),
        )
    if not hasattr(pred, "meta"):
        pred = MetaTensor(pred, affine=batch["image"].meta["affine"], meta=batch["image"].meta)
    batch["pred"] = pred
    post = transforms.Compose([
        VistaPost(keys="pred"),
        transforms.Invertd(
            keys="pred", transform=pre, orig_keys="image", meta_keys="pred_meta_dict",
            orig_meta_keys="image_meta_dict", meta_key_postfix="meta_dict", nearest_interp=True, to_tensor=True,
        ),
        transforms.SaveImaged(
            keys="pred", meta_keys="pred_meta_dict", output_dir=str(out_dir), output_postfix="seg",
            resample=False, data_root_dir=None, print_log=False,
        ),
    ])
    items = decollate_batch(batch)
    if code_dir is None:  # MONAI's post-transform takes the prompt as a tensor (the bundle's evaluator's)
        for item in items:
            item["label_prompt"] = torch.as_tensor(list(class_ids))
    for item in items:
        post(item)
    written = sorted(Path(out_dir).rglob("*_seg.nii.gz"))
    if len(written) != 1:
        raise RuntimeError(f"expected one *_seg.nii.gz under {out_dir}, found {written}")
    return written[0]
