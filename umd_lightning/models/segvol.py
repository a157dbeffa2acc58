"""SegVol (text prompts) run by the official code of BAAI-DCAI/SegVol from a local checkout.

SegVol is not on a package registry: ``code_dir`` is a checkout of https://github.com/BAAI-DCAI/SegVol
and the adapter imports its modules from there (``network/model.py``,
``segment_anything_volumetric/build_sam.py``, ``data_process/demo_data_process.py``,
``inference_demo.py``; the CLIP tokenizer files in ``config/clip``). Nothing is downloaded.

The model is built as ``inference_demo.py`` builds it: ``sam_model_registry["vit"](args)`` with
``spatial_size``/``patch_size``, then ``SegVol(image_encoder, mask_decoder, prompt_encoder,
clip_ckpt=<code_dir>/config/clip, roi_size, patch_size, test_mode=True)``. The official text encoder
already builds CLIP's text model from a local ``CLIPTextConfig()`` (no hub download) and reads the
tokenizer from ``config/clip``. Weights: the released ``SegVol_v1.pth`` layout (weights under
``model``, keys with the ``module.`` prefix of ``DataParallel``), read with
``torch.load(weights_only=True)``; the ``position_ids`` buffer of CLIP's text embeddings, saved by
the transformers version SegVol pins (4.18) but no longer part of the state dict of newer ones, is
dropped; every other key must fit (strict).

Per case, as the official demo (``process_ct_gt`` then ``zoom_in_zoom_out`` with text prompts only):

1. the volume in the voxel order of its file (``orientation="stored"``): the official loader turns
   the image into a plain array before ``Orientationd("RAS")``, which then sees no affine and keeps
   the stored order (SegVol's training data were prepared the same way). The RAS input is flipped and
   permuted back to the axis codes of the file the grid comes from (``meta["label_path"]``, else
   ``meta["image_path"]``);
2. the official transforms, in the official order: ``ForegroundNormalization`` (clip to the
   0.05-99.95 percentiles of the voxels above the mean, z-score with their mean and std),
   ``DimTranspose`` (x, y, z -> z, y, x), ``MinMaxNormalization`` to [0, 1], ``SpatialPadd(spatial_size)``,
   ``CropForegroundd`` (voxels > 0), ``ToTensord`` (contiguous, as MONAI 0.9's), and the zoomed-out
   copy ``Resized(spatial_size, "nearest-exact")``. The official ``Orientationd`` before them is left
   out: on the plain array it gets it changes nothing, and under MONAI >= 1.0 it would hand the
   official ``ForegroundNormalization`` a tensor, which that numpy code cannot take;
3. per text: the official ``inference_demo.zoom_in_zoom_out`` (zoom-out logits, nearest-resized to
   the crop, then sliding-window zoom-in over the predicted region), whose text encoder asks for
   "A computerized tomography of a {text}.". Its ``.cuda()`` calls move tensors to the adapter's
   device instead (within the call only); its ground-truth argument only decides whether a category
   is skipped and gets a Dice, so it is given a mask of ones (no category is skipped; nothing reads
   the reference);
4. the logits put back where the crop came from (outside: background), the padding removed, the axes
   transposed back and the volume re-oriented to RAS: index operations only, no resampling. Several
   texts for one organ merge by their maximum logit; a voxel goes to the organ with the highest logit
   above 0 (sigmoid > 0.5, the official threshold).

The official demo stops at per-category logits on the cropped grid; step 4's mapping back and the
merge of organs are this adapter's.

Verified (``tests/models/test_segvol_adapter.py``, random weights built by the official code): the
labels equal the official demo's on a synthetic CT (stored RAS) and PET (stored LPS), 100% of voxels,
with the official code running under this environment's MONAI and transformers (the repository pins
MONAI 0.9.0 and transformers 4.18.0, which were not run here).

Dependencies: the ``segvol`` extra (``transformers``; ``matplotlib`` and ``scipy``, which the
official modules import, are dependencies of this package). The official code targets MONAI 0.9,
whose ``ViT`` took ``pos_embed=``; MONAI >= 1.3 calls it ``proj_type=`` (same layers and keys), so
the imported ``build_sam`` gets a ``ViT`` that renames the argument. The official package's
``__init__`` imports its 2D predictor (torchvision), which SegVol's 3D inference never uses: the
package is entered without running that ``__init__``. The checkout's top-level modules (``utils``,
``network``, ...) are imported with ``code_dir`` first on ``sys.path`` and removed from
``sys.modules`` afterwards: generic names, which must not shadow or be shadowed by other modules.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import logging
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.extras import MissingExtraError, require_extra
from umd_lightning.models.adapter import (
    CheckpointError,
    Prediction,
    load_checkpoint_file,
)
from umd_lightning.models.foundation import FoundationAdapter, ScoreAccumulator, require_path
from umd_lightning.organs import OrganSet

__all__ = ["OFFICIAL_FILES", "SegVolAdapter", "SegVolCode", "import_segvol_code", "official_runtime"]

log = logging.getLogger(__name__)

#: Files of the official checkout the adapter needs (relative to ``code_dir``).
OFFICIAL_FILES = (
    "inference_demo.py",
    "network/model.py",
    "data_process/demo_data_process.py",
    "utils/monai_inferers_utils.py",
    "segment_anything_volumetric/build_sam.py",
    "config/clip/tokenizer_config.json",
    "config/clip/vocab.json",
)
#: Top-level module names of the checkout; generic names (``utils``, ``network``), so they are
#: imported in a scope that hides other modules of the same names and removes its own afterwards.
_TOP_LEVEL = ("segment_anything_volumetric", "network", "utils", "data_process", "inference_demo")
_IMPORT_LOCK = threading.Lock()
_CACHE: dict[str, "SegVolCode"] = {}

PREPROCESSING = (
    "SegVol's own (official demo): the volume in its file's stored voxel order, clipped to the 0.05-99.95 "
    "percentiles of the voxels above its mean, z-scored with their mean and std, min-max scaled to [0, 1], "
    "cropped to its foreground, plus a (32, 256, 256) nearest-resized copy; zoom-out-zoom-in inference "
    "per text prompt"
)


@dataclass(frozen=True)
class SegVolCode:
    """The official functions and classes, imported from one checkout."""

    code_dir: Path
    sam_model_registry: Mapping[str, Callable[..., Any]]
    SegVol: type
    ForegroundNormalization: type
    DimTranspose: type
    MinMaxNormalization: type
    zoom_in_zoom_out: Callable[..., Any]


def _vit_accepting_pos_embed(vit_cls: type) -> Callable[..., Any]:
    """MONAI's ViT with the MONAI 0.9 keyword ``pos_embed`` renamed to ``proj_type`` (same network)."""

    def vit(*args: Any, pos_embed: str | None = None, **kwargs: Any) -> Any:
        if pos_embed is not None:
            kwargs.setdefault("proj_type", pos_embed)
        return vit_cls(*args, **kwargs)

    return vit


@contextlib.contextmanager
def _scoped_modules(code_dir: Path) -> Iterator[None]:
    """``code_dir`` first on ``sys.path`` and its top-level names free, only while importing."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _TOP_LEVEL}
    sys.path.insert(0, str(code_dir))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(code_dir))
        for k in [k for k in sys.modules if k.split(".")[0] in _TOP_LEVEL]:
            del sys.modules[k]
        sys.modules.update(saved)


def import_segvol_code(code_dir: str | Path | None) -> SegVolCode:
    """Import the official SegVol modules from a checkout (cached per folder).

    Raises:
        CheckpointError: no folder given, the folder is missing, or official files are missing
            (checked first, so these errors need no extra installed).
        MissingExtraError: ``transformers`` (or another module the official code imports) is missing.
    """
    what = "SegVol code_dir (a checkout of github.com/BAAI-DCAI/SegVol)"
    folder = require_path(code_dir, what, is_dir=True).resolve()
    missing = [f for f in OFFICIAL_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{what} {folder}: missing {', '.join(missing)}")
    require_extra("transformers", "segvol", needed_by="SegVol", hint=f"Its model code comes from {folder}.")
    key = str(folder)
    with _IMPORT_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        with _scoped_modules(folder), contextlib.redirect_stdout(io.StringIO()):
            try:
                # the package's __init__ imports the 2D predictor (torchvision); enter it without it
                pkg = types.ModuleType("segment_anything_volumetric")
                pkg.__path__ = [str(folder / "segment_anything_volumetric")]
                sys.modules["segment_anything_volumetric"] = pkg
                build_sam = importlib.import_module("segment_anything_volumetric.build_sam")
                if "pos_embed" not in inspect.signature(build_sam.ViT.__init__).parameters:
                    build_sam.ViT = _vit_accepting_pos_embed(build_sam.ViT)
                pkg.sam_model_registry = build_sam.sam_model_registry  # inference_demo imports it from there
                network = importlib.import_module("network.model")
                process = importlib.import_module("data_process.demo_data_process")
                demo = importlib.import_module("inference_demo")
            except ImportError as exc:
                raise MissingExtraError(
                    f"SegVol's official code in {folder} cannot be imported: {type(exc).__name__}: {exc} "
                    f"(install the extra: pip install 'umd_lightning[segvol]')"
                ) from exc
        code = SegVolCode(
            code_dir=folder,
            sam_model_registry=build_sam.sam_model_registry,
            SegVol=network.SegVol,
            ForegroundNormalization=process.ForegroundNormalization,
            DimTranspose=process.DimTranspose,
            MinMaxNormalization=process.MinMaxNormalization,
            zoom_in_zoom_out=demo.zoom_in_zoom_out,
        )
        _CACHE[key] = code
        return code


@contextlib.contextmanager
def official_runtime(device: torch.device | str) -> Iterator[io.StringIO]:
    """Run official code that hard-codes ``.cuda()``: within the block, ``Tensor.cuda()`` moves to
    ``device`` (a CPU, or the adapter's GPU), and the code's prints are captured (yielded).
    """
    target = torch.device(device)
    original = torch.Tensor.cuda

    def to_device(self: torch.Tensor, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> torch.Tensor:
        return self.to(target, non_blocking=non_blocking)

    out = io.StringIO()
    torch.Tensor.cuda = to_device  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(out):
            yield out
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _stored_axcodes(meta: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Axis codes of the file whose grid the input lies on (the label's, else the image's)."""
    import nibabel as nib

    for key in ("label_path", "image_path"):
        path = meta.get(key)
        if isinstance(path, (list, tuple)):
            path = path[0] if path else None
        if path and Path(str(path)).is_file():
            with contextlib.suppress(Exception):
                return tuple(nib.aff2axcodes(nib.load(str(path)).affine))
    return None


def _reorient(volume: np.ndarray, src: Sequence[str], dst: Sequence[str]) -> np.ndarray:
    """Flip/permute a 3D array from axis codes ``src`` to ``dst`` (same grid, other storage)."""
    import nibabel.orientations as nio

    ornt = nio.ornt_transform(nio.axcodes2ornt(tuple(src)), nio.axcodes2ornt(tuple(dst)))
    return np.ascontiguousarray(nio.apply_orientation(volume, ornt))


class SegVolAdapter(FoundationAdapter):
    """SegVol with text prompts (automatic from the organs' text names, not oracle).

    Args:
        checkpoint: the official checkpoint file (``SegVol_v1.pth``: weights under ``model``, keys
            prefixed ``module.``).
        code_dir: local checkout of github.com/BAAI-DCAI/SegVol (the code is imported from it).
        name: name in results tables.
        label_map: text prompts -> organ names.
        spatial_size: the official ``-spatial_size`` (zoom-out size and zoom-in window, z, y, x).
        patch_size: the official ``-patch_size`` of the ViT (the released weights: (4, 16, 16)).
        infer_overlap: the official ``-infer_overlap`` of the zoom-in sliding window.
        use_zoom_in: the official ``use_zoom_in`` (True in the demo).
        orientation: ``stored`` (the file's voxel order, as the official loader sees it) or axis
            codes to feed the model in (e.g. ``RAS``: the input as given).
        target_spacing: None: SegVol does not resample (its zoom-out resizes).
        reported_dice: Dice its paper reports.
    """

    def __init__(
        self,
        checkpoint: str,
        code_dir: str,
        name: str = "segvol",
        label_map: str = "segvol_text",
        spatial_size: Sequence[int] = (32, 256, 256),
        patch_size: Sequence[int] = (4, 16, 16),
        infer_overlap: float = 0.5,
        use_zoom_in: bool = True,
        orientation: str = "stored",
        target_spacing: Sequence[float] | None = None,
        reported_dice: Mapping[str, float] | None = None,
    ) -> None:
        code = import_segvol_code(code_dir)
        ckpt = require_path(checkpoint, "SegVol checkpoint (SegVol_v1.pth)")
        if orientation != "stored" and (len(orientation) != 3 or not set(orientation.upper()) <= set("RLAPSI")):
            raise ValueError(f"orientation must be 'stored' or three axis codes such as 'RAS', got {orientation!r}")
        super().__init__(
            name,
            prompt_kind="text",
            target_spacing=target_spacing,
            reported_dice=reported_dice,
            label_map=label_map,
            preprocessing=PREPROCESSING.replace("(32, 256, 256)", str(tuple(int(s) for s in spatial_size))),
        )
        self.code = code
        self.checkpoint = str(ckpt)
        self.orientation = orientation if orientation == "stored" else orientation.upper()
        # the official argparse namespace: build_sam reads spatial_size/patch_size, zoom_in_zoom_out the rest
        self.args = argparse.Namespace(
            test_mode=True,
            spatial_size=tuple(int(s) for s in spatial_size),
            patch_size=tuple(int(s) for s in patch_size),
            infer_overlap=float(infer_overlap),
            clip_ckpt=str(code.code_dir / "config" / "clip"),
            use_zoom_in=bool(use_zoom_in),
            use_text_prompt=True,
            use_box_prompt=False,
            use_point_prompt=False,
            visualize=False,
        )
        with official_runtime("cpu"):
            sam = code.sam_model_registry["vit"](args=self.args)
            self.model = code.SegVol(
                image_encoder=sam.image_encoder,
                mask_decoder=sam.mask_decoder,
                prompt_encoder=sam.prompt_encoder,
                clip_ckpt=self.args.clip_ckpt,
                roi_size=self.args.spatial_size,
                patch_size=self.args.patch_size,
                test_mode=True,
            )
        self._load_weights(ckpt)
        self.model.eval()

    def _load_weights(self, path: Path) -> None:
        obj = load_checkpoint_file(path)
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            found = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path}: no 'model' entry with the weights (as SegVol_v1.pth has); found {found}")
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj["model"].items()}
        own = self.model.state_dict()
        # CLIP's position_ids: a saved buffer in transformers 4.18 (SegVol's pin), not in newer versions
        state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]  # fmt: skip
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{path}: checkpoint does not fit SegVol(spatial_size={self.args.spatial_size}, "
                f"patch_size={self.args.patch_size}): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"shapes (checkpoint vs network) {wrong[:2]}"
            )
        self.model.load_state_dict(state, strict=True)

    def text_prompts(self, organ_set: OrganSet) -> list[dict[str, Any]]:
        """One record per organ: its label id and the texts (several merge into one organ)."""
        return [
            {"kind": "text", "organ": o, "label": organ_set.ids[o], "texts": [str(t) for t in self.source_keys(o)]}
            for o in self.organs_predicted(organ_set)
        ]

    def preprocess(self, volume: np.ndarray) -> dict[str, Any]:
        """The official transforms of ``process_ct_gt`` on a (X, Y, Z) array in the model's voxel order.

        Returns the official item: ``image`` (1, D, H, W) on the cropped grid, ``zoom_out_image``,
        ``foreground_start_coord``/``foreground_end_coord`` and the padded shape ``padded_shape``.
        """
        import monai.transforms as mt

        code, size = self.code, self.args.spatial_size
        transform = mt.Compose(
            [
                # the official Orientationd("RAS") comes first; on the affine-less array it is given it
                # changes nothing (and under MONAI >= 1.0 it would return a tensor, which the official
                # ForegroundNormalization cannot take), so it is left out
                code.ForegroundNormalization(keys=["image"]),
                code.DimTranspose(keys=["image"]),
                code.MinMaxNormalization(),
                mt.SpatialPadd(keys=["image"], spatial_size=size, mode="constant"),
                mt.CropForegroundd(keys=["image"], source_key="image"),
                mt.ToTensord(keys=["image"]),
            ]
        )
        item = transform({"image": np.asarray(volume, dtype=np.float32)[None]})
        item["image"] = item["image"].contiguous()  # MONAI 0.9's ToTensord made arrays contiguous
        item["zoom_out_image"] = mt.Resized(keys=["image"], spatial_size=size, mode="nearest-exact")(item)["image"]
        transposed = tuple(int(s) for s in volume.shape[::-1])
        item["padded_shape"] = tuple(max(s, z) for s, z in zip(transposed, size))
        return item

    def restore(self, logits: torch.Tensor, item: Mapping[str, Any], shape: Sequence[int]) -> torch.Tensor:
        """Cropped-grid logits (D', H', W') -> (X, Y, Z) on the model's voxel order (outside the crop: -inf)."""
        import monai.transforms as mt

        full = torch.full(item["padded_shape"], -torch.inf, dtype=torch.float32)
        start = [int(s) for s in item["foreground_start_coord"]]
        end = [int(e) for e in item["foreground_end_coord"]]
        full[start[0]:end[0], start[1]:end[1], start[2]:end[2]] = torch.as_tensor(logits, dtype=torch.float32)
        transposed = tuple(int(s) for s in shape[::-1])
        pads = mt.SpatialPad(spatial_size=self.args.spatial_size).compute_pad_width(transposed)[-3:]
        region = tuple(slice(int(b), int(b) + s) for (b, _), s in zip(pads, transposed))
        return full[region].permute(2, 1, 0).contiguous()

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        ras = image[0, 0].detach().to("cpu", torch.float32).numpy()
        codes = ("R", "A", "S")
        if self.orientation == "stored":
            stored = _stored_axcodes(meta)
            target = stored if stored is not None else codes
            if stored is None:
                log.warning("%s: no readable NIfTI in meta (label_path/image_path): the RAS array is used as stored",
                            self.info.name)  # fmt: skip
        else:
            target = tuple(self.orientation)
        volume = _reorient(ras, codes, target)
        item = self.preprocess(volume)
        img = item["image"].float()[None]  # (1, 1, D', H', W'), as inference_single_ct passes it
        zoomed = item["zoom_out_image"].float()[None]
        # zoom_in_zoom_out reads the ground truth only to skip empty categories and print a Dice
        ones = torch.ones((1, 1, *img.shape[2:]), dtype=torch.uint8)
        ones_zoomed = torch.ones((1, 1, *zoomed.shape[2:]), dtype=torch.uint8)
        prompts = self.text_prompts(organ_set)
        acc = ScoreAccumulator(ras.shape)
        self.model.to(self.device)
        for p in prompts:
            for text in p["texts"]:
                with official_runtime(self.device) as printed:
                    record = self.code.zoom_in_zoom_out(self.args, self.model, img, zoomed, ones, ones_zoomed, categories=[text])
                log.debug("%s", printed.getvalue())
                logits = self.restore(record[text][4], item, volume.shape)
                acc.add(p["label"], torch.from_numpy(_reorient(logits.numpy(), target, codes)))
        for p in prompts:
            p["orientation"] = "".join(target)
        return Prediction(labels=acc.labels, prompts=prompts)
