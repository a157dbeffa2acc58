"""Fine-tuning recipes, trainer and launcher configs compose; encoder init and freezing do what they
say (checked against MONAI's module structure). The device augmentation: test_augment.py."""

from __future__ import annotations

import functools
import importlib.util
import itertools

import pytest
import torch
from hydra.utils import instantiate
from monai.networks.nets import DynUNet, UNet

from umd_lightning.lit.augment import DeviceAugment
from umd_lightning.lit.finetune import encoder_parameter_names, freeze_parameters, load_matching
from umd_lightning.lit.module import SegmentationModule
from umd_lightning.models.adapter import CheckpointError
from umd_lightning.models.networks import MonaiNetworkAdapter

RECIPES = {
    "finetune_ct": ["CT"],
    "finetune_pet": ["PET_CT", "PET_MRI"],
    "finetune_mri": ["MRI"],
    "finetune_all": ["CT", "PET_CT", "MRI", "PET_MRI"],
    "finetune_paired": ["CT", "PET_CT", "MRI", "PET_MRI"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_composes_and_instantiates(compose_cfg, recipe):
    cfg = compose_cfg(f"+experiment={recipe}", "data.k_shot=1", tiny=False)  # nothing is loaded here
    assert cfg.train and cfg.test and cfg.task_name == recipe and cfg.model.name == recipe
    assert list(cfg.data.train_views) == RECIPES[recipe]
    assert list(cfg.data.eval_views) == ["CT", "PET_CT", "MRI", "PET_MRI"]
    assert cfg.model.checkpoint is None  # from scratch unless asked
    # the same number of patches per step whatever the number of trained views per session
    views_per_session = 2 if recipe in ("finetune_all", "finetune_paired") else 1
    assert cfg.data.samples_per_volume * views_per_session * cfg.data.batch_size == 8
    assert (cfg.module.consistency_weight > 0) == (recipe == "finetune_paired")
    assert cfg.module.scheduler.total_iters == cfg.trainer.max_steps and cfg.module.scheduler_interval == "step"
    dm = instantiate(cfg.data)
    assert dm.k_shot == 1 and dm.train_views == RECIPES[recipe]
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    assert isinstance(module.augment, DeviceAugment) and not module.augment.enabled_on(torch.device("cpu"))
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_steps == cfg.trainer.max_steps


def test_transfer_matrix_sweep_composes_every_job(cache_dir, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from umd_lightning.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        sweep = compose("transfer_matrix", overrides=[f"paths.output_dir={tmp_path}"], return_hydra_config=True)
        params = sweep.hydra.sweeper.params
        recipes = params["+experiment"].split(",")
        ks = params["data.k_shot"].split(",")
        assert sorted(recipes) == sorted(RECIPES) and ks == ["1", "5", "10", "all"]
        assert str(sweep.hydra.mode) == "RunMode.MULTIRUN"
        for recipe, k in itertools.product(recipes, ks):
            cfg = compose("transfer_matrix", overrides=[f"+experiment={recipe}", f"data.k_shot={k}", f"paths.output_dir={tmp_path}"])
            assert cfg.task_name == recipe and str(cfg.data.k_shot) == k
    GlobalHydra.instance().clear()


def test_k_shot_all_means_every_training_subject(compose_cfg):
    from umd_lightning.lit.run import data_kwargs

    cfg = compose_cfg("+experiment=finetune_pet", "data.k_shot=all")
    dm = instantiate(cfg.data, **data_kwargs(cfg))
    dm.setup("test")
    assert dm.train_subjects_per_view == {v: dm.splits["train"] for v in ("PET_CT", "PET_MRI")}
    with pytest.raises(ValueError, match="k_shot"):
        data_kwargs(compose_cfg("+experiment=finetune_pet", "data.k_shot=most"))


@pytest.mark.parametrize("name", ["gpu", "ddp", "ddp_cpu", "slurm"])
def test_trainer_configs_compose(compose_cfg, monkeypatch, name):
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    cfg = compose_cfg("+experiment=finetune_all", f"trainer={name}")
    t = cfg.trainer
    assert t.use_distributed_sampler is False  # evaluation shards cases itself
    if name == "gpu":
        assert (t.accelerator, t.devices, t.precision) == ("gpu", 1, "bf16-mixed")
    elif name == "ddp":
        assert (t.accelerator, t.strategy, t.devices) == ("gpu", "ddp", -1)
    elif name == "ddp_cpu":
        assert (t.accelerator, t.devices, t.strategy) == ("cpu", 2, "ddp_spawn")
        trainer = instantiate(t, logger=False, callbacks=[])  # builds without starting processes
        assert trainer.world_size == 2
    else:
        assert (t.devices, t.num_nodes, t.strategy) == (4, 2, "ddp")
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        (plugin,) = instantiate(t.plugins)
        assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue


def _has_submitit_plugin() -> bool:
    # find_spec of a submodule raises (not returns None) when the parent namespace is missing.
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_submitit_plugin(), reason="hydra-submitit-launcher not installed")
def test_submitit_launcher_config_composes(cache_dir, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from umd_lightning.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "transfer_matrix",
            overrides=["hydra/launcher=slurm", "trainer=slurm", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # one SLURM task per GPU: what trainer=slurm's devices read back from SLURM_NTASKS_PER_NODE
    assert launcher.tasks_per_node == launcher.gpus_per_node and launcher.nodes >= 1
    assert launcher.timeout_min > 0


def test_recipe_from_a_foundation_encoder_through_hydra(compose_cfg, tmp_path):
    """model=segresnet with its encoder from another checkpoint (under a ``module.`` prefix), frozen."""
    cfg = compose_cfg("+experiment=finetune_pet", "model=segresnet", "model.net.init_filters=8", tiny=False)
    torch.manual_seed(1)
    source = instantiate(cfg.model).net
    encoder = set(encoder_parameter_names(source))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items() if k in encoder}}, tmp_path / "enc.pt")
    cfg = compose_cfg(
        "+experiment=finetune_pet", "model=segresnet", "model.net.init_filters=8", f"module.init_checkpoint={tmp_path / 'enc.pt'}",
        "++module.init_rename={module.:''}", "module.freeze=[encoder]", tiny=False,
    )
    torch.manual_seed(2)
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    params = dict(module.model.net.named_parameters())
    assert set(module.frozen) == encoder
    for name, p in source.named_parameters():
        if name in encoder:
            assert torch.equal(params[name], p), name
        elif p.dim() > 1:  # randomly initialised weights keep their own init (norm weights start at 1 anyway)
            assert not torch.equal(params[name], p), name
        assert params[name].requires_grad == (name not in encoder)
    assert module.hparams.init_rename == {"module.": ""} and module.hparams.freeze == ["encoder"]


# ---------------------------------------------------------------------------- init and freezing
def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=0)


def test_unet_encoder_is_the_down_path():
    net = _unet()
    # MONAI's UNet: model = (down1, SkipConnection(Sequential(down2, SkipConnection(bottom), up2)), up1)
    down = [net.model[0], net.model[1].submodule[0], net.model[1].submodule[1].submodule]
    expected = {id(p) for m in down for p in m.parameters()}
    params = dict(net.named_parameters())
    got = {id(params[n]) for n in encoder_parameter_names(net)}
    assert got == expected and len(got) < len(params)


def test_freeze_encoder_trains_only_the_decoder():
    net = _unet()
    module = SegmentationModule(MonaiNetworkAdapter(net), organ_set={1: "liver", 2: "spleen"},
                                optimizer=functools.partial(torch.optim.SGD, lr=0.5), freeze=["encoder"])
    frozen = set(module.frozen)
    assert frozen == set(encoder_parameter_names(net))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = module.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for n, p in net.named_parameters() if n not in frozen}
    x = torch.rand(2, 1, 16, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16))
    module.loss(module(x), y).backward()
    opt.step()
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name]) == (name in frozen), name


def test_freeze_prefix_that_matches_nothing_fails():
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_parameters(_unet(), ["encoder_typo."])
    with pytest.raises(ValueError, match="not known"):
        freeze_parameters(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1)), ["encoder"])


def _dynunet(seed: int) -> DynUNet:
    torch.manual_seed(seed)
    return DynUNet(3, 1, 3, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16])


def test_encoder_init_from_a_renamed_checkpoint(tmp_path):
    source, target = _dynunet(1), _dynunet(2)
    encoder = set(encoder_parameter_names(source))
    # a foundation model's encoder, saved under its own prefix (as the Swin UNETR SSL weights are)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if k in encoder}
    state["module.head.weight"] = torch.zeros(7)  # not in the network: skipped
    path = tmp_path / "encoder.pt"
    torch.save(state, path)
    before = {k: v.detach().clone() for k, v in target.named_parameters()}
    report = load_matching(target, path, rename={"module.": ""})
    assert set(report["loaded"]) == encoder and report["skipped"] == ["head.weight"]
    source_params = dict(source.named_parameters())
    for k, v in target.named_parameters():
        assert torch.equal(v, source_params[k] if k in encoder else before[k]), k
    assert not set(report["missing"]) & encoder
    with pytest.raises(CheckpointError, match="no entry matches"):
        load_matching(_dynunet(3), path)  # without the rename nothing matches
    with pytest.raises(CheckpointError, match="not in the checkpoint"):
        load_matching(_dynunet(3), path, rename={"module.": ""}, strict=True)


def test_patch_batch_crosses_slimmed_and_stacks_the_trained_rows():
    module = SegmentationModule(MonaiNetworkAdapter(_unet()), organ_set={1: "liver", 2: "spleen"})
    module.model = torch.nn.Identity()  # logits = the stacked inputs
    g = torch.Generator().manual_seed(0)
    batch = {
        "anat": torch.rand(3, 1, 4, 4, 4, generator=g), "pet": torch.rand(3, 1, 4, 4, 4, generator=g),
        "label": torch.randint(0, 3, (3, 1, 4, 4, 4), generator=g),
        "use_anat": torch.tensor([True, False, True]), "use_pet": torch.tensor([False, False, True]),
    }
    moved = module.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["label"].dtype == torch.uint8 and torch.equal(moved["label"].long(), batch["label"])
    moved = module.on_after_batch_transfer(moved, 0)
    assert moved["label"].dtype == torch.long  # class indices for the loss
    wide = module.on_after_batch_transfer({**batch, "label": batch["label"].to(torch.int16)}, 0)
    assert wide["label"].dtype == torch.long  # an organ set past 255 ids travels as int16
    logits, labels, anat_rows, pet_rows = module._patch_logits(moved)
    assert torch.equal(logits, torch.cat([batch["anat"][[0, 2]], batch["pet"][[2]]]))
    assert torch.equal(labels, batch["label"][[0, 2, 2]])
    # sample 2 trains on both views: rows 1 (its anat) and 2 (its PET) of the stack
    assert anat_rows.tolist() == [1] and pet_rows.tolist() == [2]
    # a CT-only batch leaves the PET on the host
    ct_only = {**batch, "use_anat": torch.ones(3, dtype=torch.bool), "use_pet": torch.zeros(3, dtype=torch.bool)}
    moved = module.on_after_batch_transfer(module.transfer_batch_to_device(ct_only, torch.device("cpu"), 0), 0)
    assert moved["pet"] is None
    logits, labels, anat_rows, _ = module._patch_logits(moved)
    assert torch.equal(logits, batch["anat"]) and torch.equal(labels, batch["label"]) and len(anat_rows) == 0
