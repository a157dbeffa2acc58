"""Whole-body sliding-window inference: ours (streamed labels) against MONAI's sliding_window_inference.

The case of the issue: a (1, 1, 400, 512, 512) volume, 14 output channels, roi 96^3, sw_batch_size 4,
overlap 0.25, Gaussian blending. Each run happens in its own fresh process with the same imports, the
same seeded network and the same seeded volume; each reports the time of the inference call, the
process' peak RSS (``VmHWM``, reset just before the call, so it covers the call with the volume
already in memory) and, on CUDA, ``torch.cuda.max_memory_allocated``. The parent prints the figures,
their ratios to MONAI's measured in the same run, and the fraction of voxels whose labels agree.

Runs:
    net      only the network on the same windows (sliced from a GPU copy of the volume): the floor
    ours     umd_lightning.models.inference.sliding_window_labels
    monai    MONAI, aggregating where the volume is (CPU runs)
    monai_dev / monai_cpu   on CUDA: MONAI aggregating on the GPU / on the CPU (device="cpu")

Examples:
    python benchmarks/inference_bench.py                                 # CPU: 1x1x1 conv and small UNet
    python benchmarks/inference_bench.py --network conv --size 200 256 256
    python benchmarks/inference_bench.py --device cuda --network segresnet --init-filters 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proc_status import status_kib  # noqa: E402  (beside this script)

from monai.inferers import sliding_window_inference  # noqa: E402  (same imports in every run)
from monai.networks.nets import SegResNet, UNet  # noqa: E402

from umd_lightning.models.inference import plan_windows, sliding_window_labels  # noqa: E402

NETWORKS = ("conv", "unet", "segresnet")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); without it the peak includes set-up.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build_network(name: str, classes: int, init_filters: int) -> torch.nn.Module:
    """The seeded network of a run: ``conv`` (1x1x1), ``unet`` (small MONAI UNet) or ``segresnet``."""
    torch.manual_seed(0)
    if name == "conv":
        net: torch.nn.Module = torch.nn.Conv3d(1, classes, kernel_size=1)
    elif name == "unet":
        net = UNet(spatial_dims=3, in_channels=1, out_channels=classes, channels=(8, 16), strides=(2,), num_res_units=0)
    elif name == "segresnet":
        net = SegResNet(spatial_dims=3, in_channels=1, out_channels=classes, init_filters=init_filters)
    else:
        raise ValueError(f"unknown network {name!r}; expected one of {NETWORKS}")
    return net.eval()


def make_volume(size: tuple[int, int, int]) -> torch.Tensor:
    """A seeded (1, 1, D, H, W) float32 volume, generated in place (no temporary of its size)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn((1, 1, *size), generator=g)


def worker(args: argparse.Namespace) -> None:
    """One run in this (fresh) process; prints one JSON line and saves the labels to ``args.out``."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    image = make_volume(tuple(args.size))
    net = build_network(args.network, args.classes, args.init_filters).to(device)
    roi = (args.roi,) * 3
    with torch.inference_mode():  # warm-up: the first call of a shape pays allocation / algorithm search
        net(torch.zeros((args.sw_batch_size, 1, *roi), device=device))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    kind = args.worker
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    amp = torch.autocast(device.type, dtype=amp_dtype, enabled=args.autocast)
    gpu_image = image.to(device) if kind == "net" and cuda else None
    base_rss = status_kib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    labels = None
    if kind == "ours":
        labels = sliding_window_labels(
            image,
            net,
            roi,
            sw_batch_size=args.sw_batch_size,
            overlap=args.overlap,
            mode=args.mode,
            device=device,
            autocast=amp_dtype if args.autocast else False,
        )
    elif kind in ("monai", "monai_dev", "monai_cpu"):
        out_device = "cpu" if kind == "monai_cpu" else device
        with torch.inference_mode(), amp:
            scores = sliding_window_inference(
                image, roi, args.sw_batch_size, net, args.overlap, args.mode, 0.125, sw_device=device, device=out_device
            )
            labels = scores.argmax(1)[0].to(torch.uint8)
            del scores
            labels = labels.cpu()
    elif kind == "net":
        plan = plan_windows(tuple(args.size), roi, args.overlap, args.sw_batch_size)
        src = gpu_image if gpu_image is not None else image
        with torch.inference_mode(), amp:
            for i in range(0, plan.num_windows, args.sw_batch_size):
                wins = [
                    src[(0, slice(None), *(slice(int(s), int(s) + r) for s, r in zip(start, roi)))]
                    for start in plan.starts[i : i + args.sw_batch_size]
                ]
                net(torch.stack(wins).to(device))
    else:
        raise ValueError(f"unknown run {kind!r}")
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "run": kind,
        "seconds": seconds,
        "peak_rss_gib": status_kib("VmHWM") / 2**20,
        "base_rss_gib": base_rss / 2**20,
        "gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    if labels is not None:
        np.save(args.out, labels.numpy())
    print("RESULT " + json.dumps(result), flush=True)


def run_one(kind: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", kind, "--out", str(out), "--network", args.network_one,
        "--size", *map(str, args.size), "--classes", str(args.classes), "--roi", str(args.roi),
        "--sw-batch-size", str(args.sw_batch_size), "--overlap", str(args.overlap), "--mode", args.mode,
        "--device", args.device, "--init-filters", str(args.init_filters),
    ] + (["--autocast"] if args.autocast else [])  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"run {kind!r} failed with exit code {proc.returncode}")
    return json.loads(lines[-1][len("RESULT ") :])


def agreement(a: Path, b: Path) -> float:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    same = sum(int(np.count_nonzero(x[i] == y[i])) for i in range(x.shape[0]))  # slab by slab
    return same / x.size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--network", nargs="+", default=None, choices=NETWORKS, help="default: conv unet (cpu), segresnet (cuda)"
    )
    p.add_argument("--size", nargs=3, type=int, default=[400, 512, 512], metavar=("D", "H", "W"))
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--mode", default="gaussian", choices=("gaussian", "constant"))
    p.add_argument("--init-filters", type=int, default=32, help="SegResNet init_filters")
    p.add_argument("--autocast", action="store_true", help="run every network under torch.autocast (float16 on CUDA)")
    p.add_argument(
        "--runs", nargs="+", default=None, help="subset of: net ours monai (cpu) / net ours monai_dev monai_cpu (cuda)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.worker:
        args.network = args.network[0]
        return worker(args)
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    networks = args.network or (["segresnet"] if cuda else ["conv", "unet"])
    runs = args.runs or (["net", "ours", "monai_dev", "monai_cpu"] if cuda else ["ours", "monai"])
    print(
        f"case: (1, 1, {' x '.join(map(str, args.size))}) -> {args.classes} classes, roi {args.roi}^3, "
        f"sw_batch_size {args.sw_batch_size}, overlap {args.overlap}, {args.mode}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}{', autocast' if args.autocast else ''}"
        + (f", GPU {torch.cuda.get_device_name(0)}" if cuda else "")
    )
    with tempfile.TemporaryDirectory(prefix="umd_infer_bench_") as tmp:
        for network in networks:
            args.network_one = network
            results = {}
            for kind in runs:
                results[kind] = run_one(kind, args, Path(tmp) / f"{kind}.npy")
                r = results[kind]
                gpu = f", GPU peak {r['gpu_peak_gib']:.2f} GiB" if r["gpu_peak_gib"] is not None else ""
                print(
                    f"  [{network}] {kind:9s} {r['seconds']:7.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
                    f"(before the call {r['base_rss_gib']:.2f}){gpu}",
                    flush=True,
                )
            _summary(network, results, Path(tmp), cuda)
            _checks(network, results, Path(tmp), cuda)


def _summary(network: str, results: dict, tmp: Path, cuda: bool) -> None:
    ours = results.get("ours")
    if ours is None:
        return
    print(f"  [{network}] summary:")
    for ref in ("net", "monai", "monai_dev", "monai_cpu"):
        r = results.get(ref)
        if r is None:
            continue
        line = f"    ours / {ref:9s}: time x{ours['seconds'] / r['seconds']:.2f}"
        line += f", peak RSS x{ours['peak_rss_gib'] / r['peak_rss_gib']:.2f}"
        line += f" ({ours['peak_rss_gib'] - r['peak_rss_gib']:+.2f} GiB)"
        if cuda and r["gpu_peak_gib"] is not None:
            line += f", GPU peak {ours['gpu_peak_gib'] - r['gpu_peak_gib']:+.2f} GiB"
        if ref != "net":
            line += f", same label {agreement(tmp / 'ours.npy', tmp / f'{ref}.npy') * 100:.4f}% of voxels"
        print(line, flush=True)


def _checks(network: str, results: dict, tmp: Path, cuda: bool) -> None:
    """The issue's targets, each marked ok / MISSED (a reference that did not run is skipped)."""
    ours = results.get("ours")
    if ours is None:
        return
    checks = []
    if cuda:
        if "net" in results:
            ok = ours["seconds"] <= 1.10 * results["net"]["seconds"]
            checks.append(("time within 10% of the network calls alone", ok))
        ref = results.get("monai_cpu") or results.get("monai_dev")
        if ref is not None:
            ok = ours["gpu_peak_gib"] <= ref["gpu_peak_gib"] + 1
            checks.append((f"GPU peak within 1 GiB of MONAI's ({ref['run']})", ok))
        ref = results.get("monai_dev") or results.get("monai_cpu")
        if ref is not None:
            ok = ours["peak_rss_gib"] <= ref["peak_rss_gib"] + 0.5
            checks.append((f"host peak within 0.5 GiB of MONAI's ({ref['run']})", ok))
    elif "monai" in results:
        ref = results["monai"]
        checks.append(("peak RSS at most a third of MONAI's", ours["peak_rss_gib"] <= ref["peak_rss_gib"] / 3))
        checks.append(("peak RSS at most a quarter of MONAI's (aim)", ours["peak_rss_gib"] <= ref["peak_rss_gib"] / 4))
        checks.append(("time no worse than MONAI's", ours["seconds"] <= ref["seconds"]))
    for ref in ("monai", "monai_dev", "monai_cpu"):
        if ref in results:
            ok = agreement(tmp / "ours.npy", tmp / f"{ref}.npy") >= 0.9999
            checks.append((f">= 99.99% of voxels with {ref}'s label", ok))
    for text, ok in checks:
        print(f"    [{'ok' if ok else 'MISSED'}] {text}", flush=True)


if __name__ == "__main__":
    main()
