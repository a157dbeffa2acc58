"""Shared fixtures: the real scans beside the project, a tiny synthetic cohort, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
# Real TotalSegmentator test scans (wasserth/TotalSegmentator, tests/reference_files, Apache-2.0).
REAL_DATA = REPO.parent / "shared" / "data" / "real"

#: Overrides that shrink the synthetic cohort (a dataset layout's source has no such keys).
TINY_COHORT = [
    "data.source.n_subjects=3",
    "data.source.scale=3.0",
    "data.source.workers=1",
]
#: Overrides that shrink any experiment to a tiny cohort that runs in seconds on 2 cores.
TINY_OVERRIDES = [
    *TINY_COHORT,
    "data.splits.n_test=1",
    "data.patch_size=[32,32,32]",
    "data.batch_size=2",
    "data.samples_per_volume=2",
    "model.roi_size=[32,32,32]",
    "model.target_spacing=[9.0,9.0,12.0]",
    "logger=csv",
]


def tiny_overrides(*overrides: str) -> list[str]:
    """:data:`TINY_OVERRIDES` for a job given ``overrides``: the cohort's keys unless it reads a dataset layout."""
    layout = any(o.startswith("data=") and o != "data=synthetic" for o in overrides)
    return [o for o in TINY_OVERRIDES if not (layout and o in TINY_COHORT)]


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"real test scans not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cohort cache for the whole session, so each tiny cohort is generated once."""
    return tmp_path_factory.mktemp("umd_cache")


@pytest.fixture(scope="session")
def tiny_cohort(cache_dir) -> Path:
    """Manifest path of a 3-subject cohort at 1/27 of the default voxel count."""
    from umd_lightning.data.synthetic import CohortConfig, ensure_cohort

    return ensure_cohort(cache_dir / "synthetic", CohortConfig(n_subjects=3, scale=3.0))


@pytest.fixture()
def compose_cfg(cache_dir, tmp_path):
    """Compose the real Hydra config with overrides, outputs in tmp_path, caches shared."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from umd_lightning.config import config_dir

    def _compose(*overrides: str, tiny: bool = True):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=[
                    f"paths.output_dir={tmp_path / 'run'}",
                    f"paths.cache_dir={cache_dir}",
                    *(tiny_overrides(*overrides) if tiny else []),
                    *overrides,
                ],
            )
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------ helpers of the inference and augmentation tests
# (CPU and CUDA: tests/models/test_inference.py, tests/lit/test_augment.py, tests/test_cuda_paths.py)


def small_net(in_channels: int = 2, classes: int = 5, seed: int = 0):
    """A random 3x3x3 two-layer net: logits depend on the neighbourhood, so border windows differ."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 6, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv3d(6, classes, 3, padding=1),
    ).eval()


def assert_same_labels(ours, scores) -> None:
    """>= 99.99 % equal to MONAI's argmax, and every differing voxel a near-tie in MONAI's scores."""
    import torch

    ref = scores.argmax(0)
    assert ours.shape == ref.shape
    differ = ours.long() != ref
    assert differ.float().mean().item() <= 1e-4
    if differ.any():
        top = scores.max(0).values[differ]
        mine = scores.gather(0, ours.long()[None])[0][differ]
        assert torch.all(top - mine <= 1e-5 * (1 + top.abs())), (top - mine).max()


def paired_batch(n: int = 2, size: int = 12) -> dict:
    """A paired patch batch whose images are its labels scaled (PET = 2 x anatomical)."""
    import torch

    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (n, 1, size, size, size), generator=g)
    anat = label.float() / 4
    return {"anat": anat, "pet": 2 * anat, "label": label, "use_anat": torch.ones(n, dtype=torch.bool)}
