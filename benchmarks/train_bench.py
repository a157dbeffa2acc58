"""Training throughput: a real fit through the data module against the bare training step, same run.

The bare step is the floor: network + DiceCE + SGD on one batch already on the device, nothing else.
The fit is what ``+experiment=finetune_*`` runs: a Lightning ``Trainer`` on ``SegmentationModule``
with ``UMDDataModule`` (volumes cached in memory, crops cut by ``--workers`` CPU workers) and the
device augmentation (random affine, brightness, gamma, noise) after transfer. Both use the same
network, batch (``--batch`` patches of ``--patch``^3), loss, optimizer and precision. Also printed:
the loader alone (batches/s the workers deliver with no model) and the augmentation's time per batch.

The target of the issue: on one GPU the fit reaches >= 90% of the bare step rate with <= 4 workers.

Examples:
    python benchmarks/train_bench.py                          # CPU: small UNet, patch 32, about a minute
    python benchmarks/train_bench.py --device cuda --workers 4 --patch 128 --network dynunet
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import DynUNet, UNet  # noqa: E402

from umd_lightning.data.datamodule import UMDDataModule  # noqa: E402
from umd_lightning.lit.augment import DeviceAugment  # noqa: E402
from umd_lightning.lit.module import SegmentationModule  # noqa: E402
from umd_lightning.models.networks import MonaiNetworkAdapter  # noqa: E402
from umd_lightning.organs import UMD13  # noqa: E402

NETWORKS = ("unet", "dynunet")
TARGET = 0.90


def build_network(name: str, patch: int, classes: int) -> torch.nn.Module:
    """``dynunet``: nnU-Net's 3d_fullres plan for a 128^3 patch (filters 32..320, 6 levels, 31M
    parameters); ``unet``: a small MONAI UNet for CPU runs."""
    torch.manual_seed(0)
    if name == "dynunet":
        levels = 6 if patch >= 64 else 4
        strides = [1] + [2] * (levels - 1)
        return DynUNet(3, 1, classes, [3] * levels, strides, strides[1:], filters=[32, 64, 128, 256, 320, 320][:levels])
    if name == "unet":
        return UNet(3, 1, classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0)
    raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def make_optimizer(params, lr: float = 0.01) -> torch.optim.Optimizer:
    # nnU-Net's optimizer
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=3e-5)


def bare_step_seconds(net: torch.nn.Module, batch: dict, device: torch.device, precision: str, warmup: int, steps: int) -> float:
    """Seconds per training step on a batch already on the device."""
    net = net.to(device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = make_optimizer(net.parameters())
    x, y = batch["anat"].to(device), batch["label"].to(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def augment_seconds(augment: DeviceAugment, batch: dict, device: torch.device, steps: int) -> float:
    on_device = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    augment(on_device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        augment(on_device)
    _sync(device)
    return (time.perf_counter() - start) / steps


def loader_batches_per_second(loader, steps: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch out
    start = time.perf_counter()
    n = 0
    while n < steps:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += 1
    return steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Wall time of the fit's steps ``warmup`` to ``warmup + steps``; the device is synchronised only
    at both ends, so the host may run ahead of the device as in any fit."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: float | None = None
        self.end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None and self.end is None and trainer.global_step >= self.warmup + self.steps:
            _sync(pl_module.device)
            self.end = time.perf_counter()

    @property
    def seconds_per_step(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the fit ended before the timed steps")
        return (self.end - self.start) / self.steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--network", default=None, choices=NETWORKS, help="default: dynunet on cuda, unet on cpu")
    p.add_argument("--patch", type=int, default=None, help="patch edge in voxels (default 128 cuda, 32 cpu)")
    p.add_argument("--batch", type=int, default=2, help="patches per step (cut from one cached volume)")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (default 4 cuda, 0 cpu)")
    p.add_argument("--precision", default=None, choices=("32", "bf16"), help="default bf16 on cuda, 32 on cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 60 cuda, 8 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 cuda, 2 cpu)")
    p.add_argument("--subjects", type=int, default=None,
                   help="synthetic subjects cached for training (default 8 cuda, 4 cpu)")
    p.add_argument("--scale", type=float, default=None, help="cohort voxel-size factor (default 1 cuda, 3 cpu)")
    p.add_argument("--epoch-batches", type=int, default=250,
                   help="training batches per epoch (nnU-Net's 250; 0 = one pass over the cached subjects)")
    p.add_argument("--no-augment", action="store_true", help="fit without the device augmentation")
    p.add_argument("--cache-dir", default=os.environ.get("UMD_CACHE_DIR", str(Path.home() / ".cache" / "umd_lightning")))
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("train_bench: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    network = args.network or ("dynunet" if cuda else "unet")
    patch = args.patch or (128 if cuda else 32)
    workers = args.workers if args.workers is not None else (4 if cuda else 0)
    precision = args.precision or ("bf16" if cuda else "32")
    steps = args.steps or (60 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    scale = args.scale or (1.0 if cuda else 3.0)
    subjects = args.subjects or (8 if cuda else 4)
    device = torch.device("cuda:0" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    L.seed_everything(0, workers=True)
    spacing = [3.0 * scale, 3.0 * scale, 4.0 * scale]

    t0 = time.perf_counter()
    dm = UMDDataModule(
        source={"layout": "synthetic", "n_subjects": subjects, "scale": scale, "workers": min(8, os.cpu_count() or 1)},
        cache_dir=args.cache_dir,
        splits={"n_test": 0, "seed": 0},
        train_views=["CT"],
        eval_views=["CT"],
        patch_size=[patch] * 3,
        samples_per_volume=args.batch,
        batch_size=1,
        epoch_batches=args.epoch_batches or None,
        num_workers=workers,
        train_spacing=spacing,
    )
    dm.prepare_data()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    augment = DeviceAugment(device_types=(device.type,))

    net = build_network(network, patch, UMD13.num_classes)
    n_params = sum(p.numel() for p in net.parameters()) / 1e6
    bare = bare_step_seconds(net, batch, device, precision, warmup, steps)
    aug = augment_seconds(augment, batch, device, max(3, steps // 4))
    loader_rate = loader_batches_per_second(loader, max(4, steps // 2))
    steps_per_epoch = len(loader)
    del loader

    module = SegmentationModule(
        MonaiNetworkAdapter(build_network(network, patch, UMD13.num_classes), name=network),
        train_views=["CT"],
        optimizer=functools.partial(make_optimizer),
        augment=None if args.no_augment else augment,
        save_predictions=False,
    )
    timer = StepTimer(warmup, steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision="bf16-mixed" if precision == "bf16" else "32-true",
            max_steps=warmup + steps,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            benchmark=True,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        trainer.fit(module, datamodule=dm)
    fit = timer.seconds_per_step
    ratio = bare / fit
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "network": network,
        "params_m": round(n_params, 2),
        "patch": patch,
        "batch": args.batch,
        "precision": precision,
        "workers": workers,
        "steps_per_epoch": steps_per_epoch,
        "augment": not args.no_augment,
        "bare_step_s": bare,
        "fit_step_s": fit,
        "fit_over_bare": ratio,
        "loader_batches_per_s": loader_rate,
        "augment_s_per_batch": aug,
        "setup_s": setup_s,
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"device={figures['device']} network={network} ({n_params:.1f}M params) patch={patch}^3 "
        f"batch={args.batch} precision={precision} workers={workers} augment={'off' if args.no_augment else 'device'} "
        f"steps/epoch={steps_per_epoch}"
    )
    print(f"bare step:            {bare:.4f} s  ({1 / bare:.2f} steps/s)")
    print(f"fit step:             {fit:.4f} s  ({1 / fit:.2f} steps/s)")
    print(f"loader alone:         {loader_rate:.2f} batches/s with {workers} workers")
    print(f"device augmentation:  {aug:.4f} s per batch")
    if cuda:
        verdict = f"target >= {TARGET:.2f} on one GPU with <= 4 workers: " + (
            "ok" if ratio >= TARGET and workers <= 4 else "MISSED"
        )
    else:
        verdict = f"the >= {TARGET:.2f} target is for one GPU; on the CPU the loader and the step share the cores"
    print(f"fit / bare step rate: {ratio:.3f} with {workers} workers ({verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
