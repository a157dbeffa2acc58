"""SegVol from the official repository (BAAI-DCAI/SegVol) checked out at ``code_dir``: a random-weight
checkpoint in the released layout, and the official demo's own inference as the reference.

The released ``SegVol_v1.pth`` is what the official ``train.py`` writes: ``{"model": ddp.state_dict(),
"optimizer": AdamW state, "epoch", "scheduler": LinearWarmupCosineAnnealingLR state}``, the weights with
the ``module.`` prefix of the (Distributed)DataParallel wrapper. The network here is built as
``inference_demo.py`` builds it (``sam_model_registry["vit"](args)``, ``SegVol(...)``), PyTorch's default
init, seeded; small ``spatial_size``/``patch_size`` (the official arguments) keep the tests fast, the
rest is the released architecture (ViT-B, CLIP text model): a file of about 700 MB.

The reference (:class:`OfficialSegVol`) runs the demo's own functions on a NIfTI file:
``process_ct_gt`` then ``zoom_in_zoom_out`` with the flags ``main`` sets, text prompts only. Two
compatibility steps are needed to run the official code in this environment at all, and the adapter
takes the same ones: the official ``segment_anything_volumetric/__init__`` imports the 2D predictor
(torchvision, not installed here; the 3D path never uses it), so the package is entered without it; and
MONAI >= 1.3 renamed ``ViT(pos_embed=)`` to ``proj_type=``. ``process_ct_gt`` needs two more MONAI 0.9
behaviours (:class:`_Monai09Transforms`): ``LoadImage()`` returning ``(image, meta)``, ``Orientationd``
returning numpy for numpy and ``ToTensord`` returning contiguous tensors. Its ``.cuda()`` calls go to the CPU. The
demo keeps each category's logits on its cropped, transposed grid; they are put back on the file's
voxel grid here with plain index arithmetic (written independently of the adapter's).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import sys
import types
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

#: Small official ``-spatial_size`` / ``-patch_size`` for tests (released: (32, 256, 256) / (4, 16, 16)).
SMALL_SPATIAL_SIZE = (96, 64, 64)
SMALL_PATCH_SIZE = (24, 16, 16)
_TOP = ("segment_anything_volumetric", "network", "utils", "data_process", "inference_demo")


class _Monai09Transforms:
    """``monai.transforms`` as the official ``demo_data_process`` module expects it (MONAI 0.9): ``LoadImage()``
    returns ``(image, meta)``, which the official code unpacks; ``Orientationd`` hands a numpy array
    back as a numpy array (MONAI >= 1.0 returns a tensor, on which the official ``ForegroundNormalization``
    fails; on the affine-less arrays the official code passes it, it changes nothing either way); and
    ``ToTensord`` gives contiguous tensors (the demo's Dice calls ``.view`` on the cropped label).
    """

    def __init__(self, transforms: types.ModuleType) -> None:
        self._transforms = transforms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transforms, name)

    def LoadImage(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the MONAI name
        kwargs.setdefault("image_only", False)
        return self._transforms.LoadImage(*args, **kwargs)

    def Orientationd(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the MONAI name
        inner = self._transforms.Orientationd(*args, **kwargs)

        def apply(data: Any) -> Any:
            was_numpy = {k for k in inner.keys if isinstance(data.get(k), np.ndarray)}
            out = inner(data)
            for k in was_numpy:
                out[k] = np.asarray(out[k].detach().cpu().numpy() if isinstance(out[k], torch.Tensor) else out[k])
            return out

        return apply

    def ToTensord(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the MONAI name
        inner = self._transforms.ToTensord(*args, **kwargs)

        def apply(data: Any) -> Any:
            out = inner(data)
            for k in inner.keys:
                out[k] = out[k].contiguous()
            return out

        return apply


@contextlib.contextmanager
def official_modules(code_dir: Path) -> Iterator[types.SimpleNamespace]:
    """Import the checkout's modules with ``code_dir`` on ``sys.path``; both undone on exit."""
    code_dir = Path(code_dir).resolve()
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _TOP}
    sys.path.insert(0, str(code_dir))
    try:
        pkg = types.ModuleType("segment_anything_volumetric")  # skip its torchvision-importing __init__
        pkg.__path__ = [str(code_dir / "segment_anything_volumetric")]
        sys.modules[pkg.__name__] = pkg
        with contextlib.redirect_stdout(io.StringIO()):
            build_sam = importlib.import_module("segment_anything_volumetric.build_sam")
            if "pos_embed" not in inspect.signature(build_sam.ViT.__init__).parameters:
                vit = build_sam.ViT

                def compat_vit(*args: Any, pos_embed: str | None = None, **kwargs: Any) -> Any:
                    return vit(*args, proj_type=pos_embed, **kwargs)

                build_sam.ViT = compat_vit
            pkg.sam_model_registry = build_sam.sam_model_registry
            process = importlib.import_module("data_process.demo_data_process")
            process.transforms = _Monai09Transforms(process.transforms)
            yield types.SimpleNamespace(
                build_sam=build_sam,
                model=importlib.import_module("network.model"),
                lr_scheduler=importlib.import_module("utils.lr_scheduler"),
                process=process,
                demo=importlib.import_module("inference_demo"),
            )
    finally:
        sys.path.remove(str(code_dir))
        for k in [k for k in sys.modules if k.split(".")[0] in _TOP]:
            del sys.modules[k]
        sys.modules.update(saved)


@contextlib.contextmanager
def cuda_on_cpu() -> Iterator[None]:
    """The official code calls ``.cuda()``; on a CPU-only machine it stays on the CPU."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def _demo_args(code_dir: Path, spatial_size: Sequence[int], patch_size: Sequence[int]) -> argparse.Namespace:
    """``inference_demo.set_parse()`` defaults with the given sizes, plus the flags ``main`` sets (text only)."""
    return argparse.Namespace(
        test_mode=True, resume="", infer_overlap=0.5, spatial_size=tuple(spatial_size), patch_size=tuple(patch_size),
        work_dir="./work_dir", demo_config="", clip_ckpt=str(Path(code_dir) / "config" / "clip"),
        use_zoom_in=True, use_text_prompt=True, use_box_prompt=False, use_point_prompt=False, visualize=False,
    )  # fmt: skip


def _build(mods: types.SimpleNamespace, args: argparse.Namespace) -> torch.nn.Module:
    """The model as ``inference_demo.main`` builds it (DataParallel around SegVol), on the CPU."""
    sam = mods.demo.sam_model_registry["vit"](args=args)
    segvol = mods.demo.SegVol(
        image_encoder=sam.image_encoder,
        mask_decoder=sam.mask_decoder,
        prompt_encoder=sam.prompt_encoder,
        clip_ckpt=args.clip_ckpt,
        roi_size=args.spatial_size,
        patch_size=args.patch_size,
        test_mode=args.test_mode,
    )
    return torch.nn.DataParallel(segvol)


def make_segvol_checkpoint(
    tmp: Path,
    code_dir: Path,
    *,
    spatial_size: Sequence[int] = SMALL_SPATIAL_SIZE,
    patch_size: Sequence[int] = SMALL_PATCH_SIZE,
    seed: int = 0,
    name: str = "SegVol_v1.pth",
) -> Path:
    """Write ``tmp/<name>``: a random-weight SegVol, built by the official code, in the released layout."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    with official_modules(code_dir) as mods, contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        model = _build(mods, _demo_args(code_dir, spatial_size, patch_size))
        # train.py's optimizer and scheduler with its defaults (lr 1e-4, wd 1e-5, warmup 10 of 500 epochs)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
        scheduler = mods.lr_scheduler.LinearWarmupCosineAnnealingLR(optimizer, warmup_epochs=10, max_epochs=500)
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 9,
            "scheduler": scheduler.state_dict(),
        }
    path = tmp / name
    torch.save(checkpoint, path)
    return path


class OfficialSegVol:
    """The official demo, loaded once: the model as ``inference_demo.main`` builds and loads it (weights
    read with ``torch.load(weights_only=True)``), and its ``process_ct_gt`` + ``zoom_in_zoom_out``.

    Args:
        checkpoint: a checkpoint in the released layout.
        code_dir: the official checkout.
        spatial_size, patch_size: the official ``-spatial_size`` / ``-patch_size``.
    """

    def __init__(
        self,
        checkpoint: Path,
        code_dir: Path,
        *,
        spatial_size: Sequence[int] = SMALL_SPATIAL_SIZE,
        patch_size: Sequence[int] = SMALL_PATCH_SIZE,
    ) -> None:
        with official_modules(code_dir) as mods, contextlib.redirect_stdout(io.StringIO()):
            self.args = _demo_args(code_dir, spatial_size, patch_size)
            model = _build(mods, self.args)
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"], strict=True)
        self.model = model if not torch.cuda.is_available() else model.module  # stays on the CPU
        self.model.eval()
        # the functions keep their modules' globals after the import scope has closed
        self.process_ct_gt = mods.demo.process_ct_gt
        self.zoom_in_zoom_out = mods.demo.zoom_in_zoom_out

    def __call__(self, image_path: Path, categories: Sequence[str], work: Path) -> dict[str, np.ndarray]:
        """The demo on ``image_path`` with text prompts: each category's logits on the file's voxel grid.

        The demo's ground truth only decides which categories run (an empty one is skipped) and prints a
        Dice; a label file holding every category everywhere (``work/all_categories.nii.gz``) runs them all.
        """
        import nibabel as nib

        img = nib.load(str(image_path))
        shape = tuple(int(s) for s in img.shape[:3])
        gt = (np.arange(int(np.prod(shape))) % len(categories) + 1).reshape(shape).astype(np.uint8)
        Path(work).mkdir(parents=True, exist_ok=True)
        gt_path = Path(work) / "all_categories.nii.gz"
        nib.save(nib.Nifti1Image(gt, img.affine), str(gt_path))

        args = self.args
        with cuda_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
            item = self.process_ct_gt(str(image_path), str(gt_path), list(categories), args.spatial_size)
            # inference_single_ct's body, keeping the record it would only visualise
            image, gt3d = item["image"].float(), item["label"]
            record = self.zoom_in_zoom_out(
                args, self.model, image.unsqueeze(0), item["zoom_out_image"].float().unsqueeze(0),
                gt3d.unsqueeze(0), item["zoom_out_label"].unsqueeze(0), categories=list(categories),
            )  # fmt: skip

        # undo CropForegroundd, SpatialPadd (symmetric: floor half before) and DimTranspose
        transposed = shape[::-1]
        padded = [max(s, z) for s, z in zip(transposed, args.spatial_size)]
        before = [(p - s) // 2 for p, s in zip(padded, transposed)]
        lo = [int(v) for v in item["foreground_start_coord"]]
        hi = [int(v) for v in item["foreground_end_coord"]]
        out: dict[str, np.ndarray] = {}
        for category in categories:
            logits = np.asarray(record[category][4], dtype=np.float32)
            full = np.full(padded, -np.inf, dtype=np.float32)
            full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = logits
            crop = full[tuple(slice(b, b + s) for b, s in zip(before, transposed))]
            out[category] = np.swapaxes(crop, 0, 2)
        return out


def merge_organs(logits: dict[str, np.ndarray], organs: Sequence[tuple[int, Sequence[str]]]) -> np.ndarray:
    """Per-organ label map: an organ's score is the max over its texts; a voxel takes the first organ
    with the highest score above 0 (sigmoid > 0.5), else 0.
    """
    scores = np.stack([np.max(np.stack([logits[t] for t in texts]), axis=0) for _, texts in organs])
    ids = np.array([label for label, _ in organs], dtype=np.uint8)
    best = np.argmax(scores, axis=0)
    return np.where(np.max(scores, axis=0) > 0, ids[best], 0).astype(np.uint8)
