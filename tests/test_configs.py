"""Every experiment composes and instantiates; the wheel ships conf/ so installs run from anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from umd_lightning.config import config_dir, missing_values

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
DATA_CONFIGS = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))


def test_experiments_are_found():
    assert {"zero_shot_pet", "pretrain_ct"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(compose_cfg, experiment):
    cfg = compose_cfg(f"+experiment={experiment}")
    assert cfg.task_name == experiment
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert isinstance(datamodule, L.LightningDataModule)
    assert isinstance(module, L.LightningModule) and isinstance(trainer, L.Trainer)
    assert module.model.info.name == cfg.model.name
    if cfg.train:
        module.trainer = trainer
        assert module.configure_optimizers() is not None


@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_data_configs_share_one_base_and_hold_only_their_source(compose_cfg, data):
    """Every data config is the shared datamodule base plus its source: a layout carries no synthetic key,
    and the one value left to the user is data.root, named as such (not the key that refers to it)."""
    base = OmegaConf.load(config_dir() / "data" / "base" / "datamodule.yaml")
    cfg = compose_cfg(f"data={data}", tiny=False)
    assert cfg.data._target_ == "umd_lightning.data.datamodule.UMDDataModule" and cfg.data._convert_ == "all"
    assert set(base) <= set(cfg.data)
    if data == "synthetic":
        assert set(cfg.data.source) == {"layout", "n_subjects", "seed", "scale", "workers"}
        assert missing_values(cfg) == []
    else:
        assert cfg.data.source.layout == data and set(cfg.data.source) <= {"layout", "options"}
        assert set(cfg.data) - set(base) == {"root", "source"}
        assert missing_values(cfg) == ["data.root"]


def test_layouts_do_not_import_the_datamodule():
    probe = "import sys, umd_lightning.data.layouts; print('umd_lightning.data.datamodule' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_small_transfer_matrix_sweep_composes_every_run_at_its_small_size(cache_dir, tmp_path):
    """Each run of conf/transfer_matrix_small.yaml's sweep, composed as Hydra's sweeper composes it (the
    sweep's values as overrides after the recipe): the small settings win over each recipe's own."""
    from itertools import product

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    params = OmegaConf.load(config_dir() / "transfer_matrix_small.yaml").hydra.sweeper.params
    parent = OmegaConf.load(config_dir() / "transfer_matrix.yaml").hydra.sweeper.params
    sweep = {**parent, **params}
    choices = [[f"{k}={v}" for v in str(value).split(",")] if "[" not in str(value) else [f"{k}={value}"]
               for k, value in sweep.items()]
    runs = list(product(*choices))
    assert len(runs) == 10
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for overrides in runs:
            cfg = compose("transfer_matrix_small", overrides=[*overrides, f"paths.output_dir={tmp_path}",
                                                              f"paths.cache_dir={cache_dir}"])
            assert cfg.train and cfg.trainer.max_steps == 20 and cfg.data.source.n_subjects == 4
            assert cfg.module.scheduler.total_iters == 20 and list(cfg.data.patch_size) == [32, 32, 32]
        # what a multirun composes once before its jobs: the sweep config without a recipe
        assert compose("transfer_matrix", overrides=["trainer.max_steps=3"]).trainer.max_steps == 3
    GlobalHydra.instance().clear()


def test_shipped_reference_checkpoint_loads(compose_cfg):
    cfg = compose_cfg("+experiment=zero_shot_pet", tiny=False)
    checkpoint = Path(cfg.model.checkpoint)
    assert checkpoint.is_file() and checkpoint.stat().st_size < 5_000_000
    model = instantiate(cfg.model)  # load_state_dict_checked: strict, weights_only
    assert model.checkpoint == str(checkpoint)


@pytest.mark.slow
def test_wheel_ships_conf_and_runs_from_another_directory(tmp_path, cache_dir):
    """A non-editable install (the built wheel, unpacked onto PYTHONPATH) composes its own conf/."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(repo)],
        check=True,
    )
    wheel = next(tmp_path.glob("umd_lightning-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "umd_lightning/conf/config.yaml" in names
    assert "umd_lightning/conf/experiment/zero_shot_pet.yaml" in names
    assert "umd_lightning/checkpoints/unet_ct.pt" in names and "umd_lightning/labelmaps/total.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import umd_lightning, umd_lightning.config as c; "
        "print(umd_lightning.__file__); print(c.config_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "umd_lightning" / "conf")
