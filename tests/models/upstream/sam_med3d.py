"""A random-weight SAM-Med3D checkpoint laid out the way the released ``sam_med3d_turbo.pth`` is.

The released file is what SAM-Med3D's trainer (``train.py``, ``BaseTrainer.save_checkpoint``) writes:
a dict with ``epoch``, ``model_state_dict``, ``optimizer_state_dict`` (AdamW), ``lr_scheduler_state_dict``
(MultiStepLR, whose milestones are a ``collections.Counter``), ``losses``, ``dices``, ``best_loss``,
``best_dice``, ``args`` (the training ``argparse.Namespace``) and ``used_datas`` (dataset paths). The
network here is built by the ``medim`` package's own builder (``medim.create_model("SAM-Med3D")``,
the registry entry SAM-Med3D's ``medim_val_single.py`` uses), with PyTorch's default init, seeded.

``full=True`` gives the released architecture (ViT-B image encoder, about 100M parameters; a file of
about 1.2 GB with the optimizer state); the default is a tiny variant through medim's builder
arguments (:data:`TINY_KWARGS`) that keeps the 128^3 input, 16^3 patches and 32^3 low-resolution
masks of the real one, so the preprocessing, prompts and mapping back are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import Any

import torch

#: medim builder arguments of the tiny variant (the released model: 768 / 12 / 12 / [2, 5, 8, 11] / 384).
#: Both blocks attend globally: medim's windowed blocks pad the 8^3 tokens to 14^3 windows, 5x slower.
TINY_KWARGS: dict[str, Any] = {
    "encoder_embed_dim": 48,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [0, 1],
    "prompt_embed_dim": 48,
}


def build_sam_med3d(*, full: bool = False, seed: int = 0) -> torch.nn.Module:
    """The network from medim's own builder, random weights (PyTorch's default init) from ``seed``."""
    import medim

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        net = medim.create_model("SAM-Med3D", pretrained=False, **({} if full else TINY_KWARGS))
    return net.eval()


def _training_args() -> argparse.Namespace:
    """The Namespace SAM-Med3D's ``train.py`` parser produces with its defaults (a subset)."""
    return argparse.Namespace(
        task_name="union_train", click_type="random", multi_click=False, model_type="vit_b_ori",
        checkpoint="ckpt/sam_med3d.pth", device="cuda", work_dir="work_dir", num_workers=24, gpu_ids=[0, 1],
        multi_gpu=False, resume=False, allow_partial_weight=False, lr_scheduler="multisteplr",
        step_size=[120, 180], gamma=0.1, num_epochs=200, img_size=128, batch_size=12, accumulation_steps=20,
        lr=8e-4, weight_decay=0.1, port=12361,
    )  # fmt: skip


def make_sam_med3d_checkpoint(tmp: Path, *, full: bool = False, seed: int = 0, name: str = "sam_med3d_turbo.pth") -> Path:
    """Write ``tmp/<name>``: a random-weight SAM-Med3D in the released checkpoint's layout.

    Args:
        tmp: folder to write into.
        full: the released architecture (slow on a CPU; the default is :data:`TINY_KWARGS`).
        seed: weight init seed.
        name: file name.

    Returns:
        The checkpoint path.
    """
    net = build_sam_med3d(full=full, seed=seed)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # an optimizer and scheduler state as training leaves them: one AdamW step on zero gradients
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[120, 180], gamma=0.1)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    scheduler.step()
    ckpt = {
        "epoch": 200,
        "model_state_dict": state,
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": scheduler.state_dict(),
        "losses": [0.9, 0.5, 0.31],
        "dices": [0.2, 0.6, 0.78],
        "best_loss": 0.31,
        "best_dice": 0.78,
        "args": _training_args(),
        "used_datas": ["data/medical_preprocessed/liver/ct_AMOS/imagesTr/amos_0001.nii.gz"],
    }
    path = Path(tmp) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
