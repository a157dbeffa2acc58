"""Random-weight SAT checkpoints in the released layout, and SAT's own inference as the reference.

The released SAT files (huggingface.co/zzh99/SAT) are what SAT's trainer (``train/trainer.py``) saves:
the segmentation model as ``{"step", "model_state_dict", "optimizer_state_dict"}`` and the text
encoder as ``{"step", "model_state_dict"}``, both state dicts of DDP-wrapped modules (``module.``
prefix). The networks here are built by the repository's own classes (``model.maskformer.Maskformer``
as ``build_maskformer`` builds it, ``model.knowledge_encoder.Knowledge_Encoder`` as ``Text_Encoder``
builds it for ``--text_encoder ours``), from a checkout (``code_dir``), never copied.

The text encoder's language model is BioLORD-2023-C (an MPNet) in the official code, fetched from
the hub by name. Here it is a tiny MPNet (hidden size 768 as the SAT heads need, one layer, a small
word-level vocabulary): :func:`make_sat_checkpoints` writes its config and tokenizer to
``tmp/BioLORD-2023-C`` (the folder the adapter's ``text_model`` points to) and, for the official code,
the same files with weights into a hub-cache layout under ``tmp/hf_cache`` (``HF_HUB_CACHE``), so
``from_pretrained("FremyCompany/BioLORD-2023-C")`` resolves offline.

Weights: the official constructors run with ``torch.nn.init`` switched off (their He/Xavier init of
110M parameters takes minutes on two cores) and every parameter is then drawn here, seeded: He-normal
for convolutions and linear layers, zero biases, unit norms. The last linear layer of the query head
(``mask_embed_proj``) gets a negative bias so that the per-query embeddings, after its GELU, take both
signs: prompts then disagree from voxel to voxel and the masks are neither empty nor full (-1.5
gives masks over 50-75 % of a CT or PET crop; at -0.6 they are nearly full).

:func:`run_official` drives the repository's ``inference.py`` path in a subprocess (this file run as a
script): ``Inference_Dataset``, ``build_maskformer``, ``Text_Encoder``, ``load_checkpoint`` and
``evaluate.inference_engine.inference`` unchanged, with these shims because the official script
needs CUDA and ``torchrun``: DDP replaced by a wrapper that only adds the ``module.`` level, CUDA's
``current_device`` answering the CPU, no process group, ``torch.nn.init`` off while building (every
parameter is loaded from the checkpoints, which is checked). A window other than the official
288x288x96 replaces the constants of ``split_3d`` and ``compute_gaussian`` (only for small tests).
The official engine writes per-prompt masks on its cropped 1x1x3 mm grid (identity affine); the
runner maps them back onto the input file's grid by nearest neighbour with plain affine arithmetic
(independent of the adapter's MONAI-based mapping) and saves them as ``masks.npz``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

TEXT_MODEL_ID = "FremyCompany/BioLORD-2023-C"
#: Words of the tiny vocabulary: the prompt words of ``labelmaps/sat_text.yaml`` and a few more.
VOCAB_WORDS = (
    "brain heart lung liver spleen left right kidney pancreas stomach esophagus aorta colon urinary bladder "
    "gland adrenal gallbladder duodenum trachea"
).split()
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
#: A fixed fake commit for the hub-cache snapshot.
_SNAPSHOT = "0" * 40


def text_model_dir(tmp: Path) -> Path:
    """The local BioLORD stand-in (config and tokenizer, no weights) the adapter's ``text_model`` names."""
    return Path(tmp) / "BioLORD-2023-C"


def hf_cache_dir(tmp: Path) -> Path:
    """A hub cache (``HF_HUB_CACHE``) holding the stand-in, weights included, under the official hub id."""
    return Path(tmp) / "hf_cache"


def _write_text_model(tmp: Path, seed: int) -> Path:
    """Tiny MPNet config + tokenizer in ``text_model_dir``; with weights in the hub-cache snapshot."""
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    words = SPECIAL + list(VOCAB_WORDS) + ["<mask>"]
    tok = MPNetTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = MPNetConfig(
        vocab_size=len(words), hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=128,
        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    lm = MPNetModel(config).eval()
    local = text_model_dir(tmp)
    config.save_pretrained(local)
    tok.save_pretrained(local)
    repo = hf_cache_dir(tmp) / ("models--" + TEXT_MODEL_ID.replace("/", "--"))
    snap = repo / "snapshots" / _SNAPSHOT
    lm.save_pretrained(snap)
    tok.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_SNAPSHOT)
    return snap


class _NoInit:
    """``torch.nn.init`` functions as no-ops inside the block (weights are drawn or loaded afterwards)."""

    def __enter__(self) -> None:
        self.saved = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")}
        for n in self.saved:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)

    def __exit__(self, *exc: Any) -> None:
        for n, f in self.saved.items():
            setattr(torch.nn.init, n, f)


def _draw(module: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: He-normal weights, zero biases, unit norm scales, N(0, 1) embeddings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, (torch.nn.LayerNorm, torch.nn.InstanceNorm3d, torch.nn.GroupNorm)):
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif isinstance(owner, torch.nn.Embedding):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = p[0].numel() if not isinstance(owner, torch.nn.ConvTranspose3d) else p.shape[0] * p[0, 0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(2.0 / max(fan_in, 1)))
            else:
                p.zero_()


def make_sat_checkpoints(
    tmp: Path, code_dir: Path, *, variant: str = "nano", seed: int = 0, query_bias: float = -1.5
) -> tuple[Path, Path]:
    """Write a random-weight SAT (``tmp/SAT_Nano.pth`` or ``tmp/SAT_Pro.pth``) and its text encoder
    (``tmp/text_encoder.pth``) in the released layout, plus the BioLORD stand-in (see module doc).

    Args:
        tmp: output folder.
        code_dir: a checkout of zhaoziheng/SAT.
        variant: ``nano`` (``UNET``, 110M parameters) or ``pro`` (``UNET-L``).
        seed: seeds every weight.
        query_bias: bias of the query head's last linear layer (before its GELU), see module doc.

    Returns:
        (segmentation checkpoint, text-encoder checkpoint).
    """
    from umd_lightning.models.sat import VARIANTS, import_sat_code

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    snap = _write_text_model(tmp, seed)
    sat = import_sat_code(code_dir)
    backbone = VARIANTS[variant]
    with _NoInit():
        net = sat.maskformer.Maskformer(backbone, [288, 288, 96], [32, 32, 32], False)
    _draw(net, seed)
    with torch.no_grad():
        net.mask_embed_proj[2].bias.fill_(query_bias)
    # the text encoder as Text_Encoder builds it for --text_encoder ours (its BioLORD from the snapshot)
    te = sat.knowledge_encoder.Knowledge_Encoder(biolord_checkpoint=str(snap))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for lin in (te.projection_layer[0], te.projection_layer[2]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.in_features))
            lin.bias.zero_()
    name = {"UNET": "SAT_Nano.pth", "UNET-L": "SAT_Pro.pth"}.get(backbone, f"SAT_{backbone}.pth")
    seg_path, text_path = tmp / name, tmp / "text_encoder.pth"
    params = [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-5, "amsgrad": False,
               "params": list(range(len(list(net.parameters()))))}]  # fmt: skip
    torch.save(
        {
            "step": 1,
            "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
            "optimizer_state_dict": {"state": {}, "param_groups": params},
        },
        seg_path,
    )
    text_state = {f"module.{k}": v for k, v in te.state_dict().items()}
    # what the released file also holds: the contrastive temperature the official loader drops, and
    # the position_ids buffer older transformers saved (unexpected keys, ignored as partial_load does)
    text_state["module.temperature"] = torch.tensor(0.07)
    text_state["module.text_tower.biolord.embeddings.position_ids"] = torch.arange(66)[None]
    torch.save({"step": 1, "model_state_dict": text_state}, text_path)
    return seg_path, text_path


def run_official(
    code_dir: Path,
    checkpoint: Path,
    text_encoder: Path,
    hf_cache: Path,
    cases: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    variant: str = "nano",
    window: Sequence[int] = (288, 288, 96),
    batchsize_3d: int = 2,
    timeout: float = 900,
) -> list[Path]:
    """SAT's own inference on NIfTI files, in a subprocess; returns one ``masks.npz`` per case.

    Args:
        cases: ``{"image": path, "label": [texts], "modality": "ct" | "pet" | "mri"}`` each (the
            official jsonl's fields); ``dataset`` is filled in.
        out_dir: holds the jsonl and the official ``--rcd_dir`` (``out_dir/rcd``);
            ``out_dir/rcd/case<i>/masks.npz`` holds each prompt's mask on the input file's grid (keys =
            the prompt texts).
    """
    out_dir = Path(out_dir)
    rcd_dir = out_dir / "rcd"
    rcd_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "cases.jsonl"
    with jsonl.open("w") as f:
        for i, case in enumerate(cases):
            f.write(json.dumps({**case, "image": str(case["image"]), "dataset": f"case{i}"}) + "\n")
    env = dict(os.environ, HF_HUB_CACHE=str(hf_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--code-dir", str(code_dir), "--jsonl", str(jsonl),
        "--rcd-dir", str(rcd_dir), "--checkpoint", str(checkpoint), "--text-encoder", str(text_encoder),
        "--backbone", {"nano": "UNET", "pro": "UNET-L"}.get(variant, variant), "--batchsize-3d", str(batchsize_3d),
        "--window", *[str(int(w)) for w in window],
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"official SAT inference failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("[sat-official]")))
    return [rcd_dir / f"case{i}" / "masks.npz" for i in range(len(cases))]


# --------------------------------------------------------------------------- the subprocess side
class _DDP(torch.nn.Module):
    """What DistributedDataParallel adds for one process: the ``module.`` level and a forward through it."""

    def __init__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def _official_main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--code-dir", required=True)
    p.add_argument("--jsonl", required=True)
    p.add_argument("--rcd-dir", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--text-encoder", required=True)
    p.add_argument("--backbone", default="UNET")
    p.add_argument("--batchsize-3d", type=int, default=2)
    p.add_argument("--window", type=int, nargs=3, default=[288, 288, 96])
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    root = Path(a.code_dir)
    # as the README installs it: the checkout on the path, its dynamic-network-architectures first
    sys.path[:0] = [str(root), str(root / "model" / "dynamic-network-architectures-main")]
    torch.nn.parallel.DistributedDataParallel = _DDP  # type: ignore[misc]
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]

    import data.inference_dataset as inference_dataset
    import evaluate.inference_engine as inference_engine
    from data.inference_dataset import Inference_Dataset, collate_fn
    from evaluate.params import parse_args
    from model.build_model import build_maskformer, load_checkpoint
    from model.text_encoder import Text_Encoder
    from torch.utils.data import DataLoader

    print(f"[sat-official] imported in {time.perf_counter() - t0:.1f} s", flush=True)
    window = [int(w) for w in a.window]
    if window != [288, 288, 96]:  # the official constants, for small tests only
        split, gauss = inference_dataset.split_3d, inference_engine.compute_gaussian
        inference_dataset.split_3d = lambda img, crop_size=None: split(img, crop_size=window)
        inference_engine.compute_gaussian = lambda tile_size, *args, **kw: gauss(tuple(window), *args, **kw)

    # inference.py's main() with device = CPU and no process group
    sys.argv = [
        "inference.py", "--rcd_dir", a.rcd_dir, "--datasets_jsonl", a.jsonl, "--vision_backbone", a.backbone,
        "--checkpoint", a.checkpoint, "--text_encoder", "ours", "--text_encoder_checkpoint", a.text_encoder,
        "--max_queries", "256", "--batchsize_3d", str(a.batchsize_3d), "--crop_size", *map(str, window),
    ]  # fmt: skip
    args = parse_args()
    device = torch.device("cpu")
    testset = Inference_Dataset(args.datasets_jsonl, args.max_queries, args.batchsize_3d, patch_size=window)
    testloader = DataLoader(testset, batch_size=1, pin_memory=args.pin_memory, num_workers=0, collate_fn=collate_fn)
    with _NoInit():
        model = build_maskformer(args, device, 0)
        text_encoder = Text_Encoder(
            text_encoder=args.text_encoder, checkpoint=args.text_encoder_checkpoint,
            partial_load=args.text_encoder_partial_load, open_bert_layer=12, open_modality_embed=False,
            gpu_id=0, device=device,
        )  # fmt: skip
    model, _, _ = load_checkpoint(
        checkpoint=args.checkpoint, resume=False, partial_load=args.partial_load, model=model, device=device
    )
    # init was off: every parameter must have come from the checkpoints (partial_load would hide a gap)
    seg_keys, txt_keys = (
        set(torch.load(f, map_location="cpu", weights_only=True, mmap=True)["model_state_dict"])  # keys only: mmap
        for f in (args.checkpoint, args.text_encoder_checkpoint)
    )
    for net, keys in ((model, seg_keys), (text_encoder.model, txt_keys)):
        missing = [k for k, _ in net.named_parameters() if k not in keys]
        if missing:
            raise SystemExit(f"parameters not in the checkpoint: {missing[:5]}")
    print(f"[sat-official] built and loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    inference_engine.inference(
        model=model, text_encoder=text_encoder, device=device, testset=testset, testloader=testloader,
        nib_dir=args.rcd_dir,
    )  # fmt: skip
    print(f"[sat-official] inference done at {time.perf_counter() - t0:.1f} s", flush=True)
    _map_back(testset, Path(a.rcd_dir))


def _map_back(testset: Any, rcd_dir: Path) -> None:
    """Each prompt's mask from the official cropped 1x1x3 mm grid onto the input file's grid (nearest)."""
    import monai
    import nibabel as nib
    import numpy as np

    for i, datum in enumerate(testset.lines):
        # the grid the official load_image produced (its transforms, again, for the affine they track)
        xform = monai.transforms.Compose([
            monai.transforms.LoadImaged(keys=["image"]),
            monai.transforms.EnsureChannelFirstd(keys=["image"]),
            monai.transforms.Orientationd(axcodes="RAS", keys=["image"]),
            monai.transforms.Spacingd(keys=["image"], pixdim=(1, 1, 3), mode=("bilinear")),
            monai.transforms.CropForegroundd(keys=["image"], source_key="image"),
        ])  # fmt: skip
        proc = xform({"image": datum["image"]})["image"]
        sat_affine = np.asarray(proc.affine, dtype=np.float64)
        src = nib.load(datum["image"])
        if nib.aff2axcodes(src.affine) != ("R", "A", "S"):
            raise SystemExit(f"{datum['image']}: the reference mapping expects a RAS file")
        shape, affine = src.shape[:3], np.asarray(src.affine, dtype=np.float64)
        ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        sat_ijk = (world - sat_affine[:3, 3]) @ np.linalg.inv(sat_affine[:3, :3]).T
        idx = np.rint(sat_ijk).astype(np.int64)
        sample_id = Path(datum["image"]).name.replace(".nii.gz", "")
        out: dict[str, np.ndarray] = {}
        sat: dict[str, np.ndarray] = {}
        for text in datum["label"]:
            m = np.asarray(nib.load(rcd_dir / f"case{i}" / f"seg_{sample_id}" / f"{text}.nii.gz").dataobj)
            if m.shape != tuple(proc.shape[1:]):
                raise SystemExit(f"official mask {m.shape} vs processed image {tuple(proc.shape[1:])}")
            inside = np.all((idx >= 0) & (idx < np.asarray(m.shape)), axis=1)
            flat = np.zeros(len(idx), dtype=bool)
            j = idx[inside]
            flat[inside] = m[j[:, 0], j[:, 1], j[:, 2]] > 0.5
            out[text] = flat.reshape(shape)
            sat[text] = m > 0.5
        np.savez_compressed(rcd_dir / f"case{i}" / "masks.npz", **out)
        np.savez_compressed(rcd_dir / f"case{i}" / "masks_sat.npz", **sat)


if __name__ == "__main__":
    _official_main()
