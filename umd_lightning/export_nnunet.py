"""Write a run's k-shot training subjects as an nnU-Net v2 raw dataset: ``python -m umd_lightning.export_nnunet``.

So that ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` train the real nnU-Net on exactly our
subjects (the paper's strongest baseline: nnU-Net on k cases per view)::

    # the split of a run folder (its splits.json; its data config from run_manifest.json)
    python -m umd_lightning.export_nnunet outputs/2026-01-01/12-00-00 --out $nnUNet_raw
    # or the split a run with these overrides would make (nothing is trained)
    python -m umd_lightning.export_nnunet +experiment=finetune_paired data.k_shot=10 --out $nnUNet_raw
    # or a config file (a run folder's .hydra/config.yaml, or run_manifest.json)
    python -m umd_lightning.export_nnunet run/.hydra/config.yaml --out $nnUNet_raw --multichannel

One dataset per training view (``Dataset901_UMD_CT_k10``, ...), or with ``--multichannel`` one per
session with its anatomical scan and PET as two channels (channel_names CT/MRI and PET). Each holds
dataset.json, imagesTr, labelsTr and splits_final.json (fold 0: train = the k-shot subjects; val = the
run's val subjects when it has some, else the training cases, nnU-Net's ``fold all`` convention; see
:mod:`umd_lightning.data.nnunet_export`). The command prints the nnU-Net commands that follow and the
override that evaluates the trained model folder on the run's test subjects.

Exit status: 0 when the datasets are written, 2 on a user mistake (no split, unknown view, output exists,
unreadable data), with one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from umd_lightning.organs import VIEWS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m umd_lightning.export_nnunet",
        description="A run's k-shot training subjects as nnU-Net v2 raw datasets (dataset.json, imagesTr, "
        "labelsTr, splits_final.json).",
    )
    parser.add_argument(
        "source", nargs="+", metavar="RUN_FOLDER_OR_CONFIG",
        help="a run folder (holding splits.json), a config file (.yaml, or run_manifest.json), or Hydra "
        "overrides of the main config (+experiment=NAME data.k_shot=10 ...); overrides may also follow a "
        "run folder or config file (e.g. data.root=NEW_PLACE)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the nnUNet_raw folder the datasets go into")
    parser.add_argument("--dataset-id", type=int, default=901, help="id of the first dataset (default 901)")
    parser.add_argument("--multichannel", action="store_true",
                        help="one dataset per session, anatomical scan and PET as two channels")
    parser.add_argument("--views", nargs="+", choices=VIEWS, help="training views to export (default: all of the split)")
    parser.add_argument("--val", choices=("auto", "run", "train"), default="auto",
                        help="nnU-Net's validation cases: the run's val subjects (run), the training cases (train), "
                        "or run when the split has val subjects, else train (auto, default)")
    parser.add_argument("--overwrite", action="store_true", help="replace dataset folders that exist")
    return parser


def _overrides(args: Sequence[str]) -> list[str]:
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ValueError(f"{bad[0]!r} is neither a run folder, a config file nor a key=value override")
    return list(args)


def load_config(source: Sequence[str]) -> tuple[Any, dict | None, str]:
    """The data config and, for a run folder, its split file's payload; plus a description of the source.

    Raises:
        FileNotFoundError: a run folder without splits.json or without a config.
        ValueError: an argument that is neither a path nor an override.
    """
    from omegaconf import OmegaConf

    first = Path(source[0]).expanduser()
    if first.is_dir():
        split_file = first / "splits.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file}: no split file (is {first} a run folder?)")
        cfg = _config_file(first / "run_manifest.json") if (first / "run_manifest.json").is_file() else None
        if cfg is None and (first / ".hydra" / "config.yaml").is_file():
            cfg = _config_file(first / ".hydra" / "config.yaml")
        if cfg is None:
            raise FileNotFoundError(f"{first}: no run_manifest.json or .hydra/config.yaml to read the data config from")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(_overrides(source[1:])))
        return cfg, json.loads(split_file.read_text()), str(first)
    if first.is_file():
        cfg = OmegaConf.merge(_config_file(first), OmegaConf.from_dotlist(_overrides(source[1:])))
        return cfg, None, str(first)
    if "=" not in source[0] and not source[0].startswith(("+", "~")):
        raise FileNotFoundError(f"{source[0]}: no such run folder or config file")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from umd_lightning.config import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=_overrides(source))
    finally:
        GlobalHydra.instance().clear()
    return cfg, None, "python -m umd_lightning " + " ".join(source)


def _config_file(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        if path.suffix == ".json":
            payload = json.loads(path.read_text())
            return OmegaConf.create(payload.get("config", payload))
        return OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ValueError(f"{path}: unreadable config ({type(exc).__name__}: {exc})") from exc


def datamodule_and_split(cfg: Any, split: dict | None) -> tuple[Any, dict]:
    """The run's datamodule (manifest read) and split payload (the run folder's, or the one it would write)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from umd_lightning.lit.run import data_kwargs

    if OmegaConf.select(cfg, "data") is None:
        raise ValueError("the config has no data section")
    datamodule = instantiate(cfg.data, **data_kwargs(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        computed = json.loads(datamodule.write_splits(Path(tmp) / "splits.json").read_text())
    return datamodule, split if split is not None else computed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; return the exit status."""
    from rich.console import Console

    from umd_lightning.data.manifest import ManifestError
    from umd_lightning.data.nnunet_export import CASE_PATTERN, NnUNetExportError, export_nnunet
    from umd_lightning.data.splits import SplitError

    args = build_parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    out = Console(soft_wrap=True)
    try:
        cfg, split, where = load_config(args.source)
        datamodule, split = datamodule_and_split(cfg, split)
        per_view = split.get("train_subjects_per_view") or {}
        if not per_view:
            raise NnUNetExportError(f"{where}: the split names no training subjects per view (a zero-shot run?)")
        written = export_nnunet(
            datamodule.manifest,
            split["splits"],
            per_view,
            args.out,
            dataset_id=args.dataset_id,
            multichannel=args.multichannel,
            organ_set=datamodule.organ_set,
            val=args.val,
            views=args.views,
            overwrite=args.overwrite,
            source=where,
        )
    except (NnUNetExportError, SplitError, ManifestError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        return 2
    for ds in written:
        out.print(
            f"{ds.folder}: views {', '.join(ds.views)}, {len(ds.train)} training subject(s) "
            f"({', '.join(ds.train)}), validation: {ds.val_source}"
        )
    ids = " ".join(str(ds.dataset_id) for ds in written)
    out.print("\nnext, with nnUNet_raw, nnUNet_preprocessed and nnUNet_results set:")
    out.print(f"  export nnUNet_raw={args.out.resolve()}")
    out.print(f"  nnUNetv2_plan_and_preprocess -d {ids} -c 3d_fullres")
    for ds in written:
        out.print(f"  nnUNetv2_train {ds.dataset_id} 3d_fullres 0")
    out.print(
        "then evaluate on the run's test subjects (same data config and seed; train=false):\n"
        "  python -m umd_lightning <the run's overrides> train=false model=nnunet "
        f"model.model_folder=$nnUNet_results/{written[0].folder.name}/nnUNetTrainer__nnUNetPlans__3d_fullres"
    )
    out.print(f"(read a dataset back: data=nnunet data.root=DIR 'data.source.options.case_pattern={CASE_PATTERN}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
