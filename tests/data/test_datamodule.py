"""UMDDataModule on a tiny cohort: paired patch shapes and alignment, whole-volume eval items, k-shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umd_lightning.data.datamodule import UMDDataModule
from umd_lightning.organs import UMD13, VIEWS


def _dm(cache_dir, splits=None, **kw):
    source = {"layout": "synthetic", "n_subjects": 3, "scale": 3.0}
    return UMDDataModule(
        source, cache_dir=str(cache_dir), splits=splits or {"n_test": 1}, patch_size=(32, 32, 32),
        samples_per_volume=2, batch_size=2, train_spacing=None, **kw,
    )


@pytest.fixture(scope="module")
def paired_dm(tiny_cohort, cache_dir):
    dm = _dm(cache_dir, train_views=["CT", "PET_CT", "MRI", "PET_MRI"])
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_training_batches_are_paired_patches(paired_dm):
    batch = next(iter(paired_dm.train_dataloader()))
    # batch_size sessions x samples_per_volume patches each
    assert batch["anat"].shape == batch["pet"].shape == batch["label"].shape == (4, 1, 32, 32, 32)
    assert batch["anat"].dtype == torch.float32 and batch["label"].dtype == torch.uint8  # widened on the device
    assert set(batch["view_of_anat"]) <= {"CT", "MRI"} and set(batch["view_of_pet"]) <= {"PET_CT", "PET_MRI"}
    for anat_view, pet_view in zip(batch["view_of_anat"], batch["view_of_pet"]):
        assert pet_view == f"PET_{anat_view}"
    # [0, 1] after normalisation, then at most +-10% scaling and +-0.05 shift of augmentation
    assert float(batch["anat"].min()) >= -0.05 - 1e-6 and float(batch["anat"].max()) <= 1.1 + 0.05 + 1e-6


def test_cached_session_pet_lies_on_the_label_grid(paired_dm):
    """The PET is resampled onto its session's label grid: hot organs (brain, bladder) are hot under their
    labels, and the lung is cold, in every cached session."""
    ids = UMD13.ids
    for item in paired_dm._train_ds._cache:
        anat, pet, label = item["anat"], item["pet"], item["label"]
        assert anat.shape == pet.shape == label.shape
        lab = np.asarray(label[0])
        pet = np.asarray(pet[0])
        hot = np.isin(lab, [ids["brain"], ids["urinary_bladder"]])
        assert pet[hot].mean() > 3 * pet[lab == ids["lung"]].mean()


def test_sessions_and_subjects_in_training(paired_dm):
    items = paired_dm._paired_items("train")
    assert {i["subject_id"] for i in items} == set(paired_dm.splits["train"])
    assert {i["session"] for i in items} == {"petct", "petmri"}
    assert not set(paired_dm.splits["train"]) & set(paired_dm.splits["test"])


def test_eval_items_are_whole_volumes_on_the_label_grid(tiny_cohort, cache_dir):
    dm = _dm(cache_dir)
    dm.setup("test")
    items = list(dm.test_dataloader())
    assert sorted(b["view"][0] for b in items) == sorted(VIEWS)
    for b in items:
        assert b["image"].shape == b["label"].shape and b["image"].shape[:2] == (1, 1)
        assert b["case_id"][0] == f"{b['subject_id'][0]}_{b['view'][0]}"
        assert b["subject_id"][0] in dm.splits["test"]
        affine = np.asarray(b["image"].affine[0])
        # RAS orientation: positive diagonal, whatever the file's orientation (the MRI session is stored LPS)
        assert np.all(np.diag(affine)[:3] > 0)


def test_eval_items_in_physical_units_and_stacked_for_a_multichannel_model(tiny_cohort, cache_dir):
    single = _dm(cache_dir)
    single.setup("test")
    by_view = {b["view"][0]: b for b in single.test_dataloader()}
    # preprocessing belongs to the model: CT in HU (air about -1000), PET in SUV (>= 0, not scaled to [0, 1])
    assert float(by_view["CT"]["image"].min()) < -900 and float(by_view["PET_CT"]["image"].max()) > 1.0
    dm = _dm(cache_dir)
    dm.channels = ("anatomical", "PET")  # what run() sets from an AutoPET-style nnU-Net model's info
    dm.setup("test")
    items = list(dm.test_dataloader())
    # a session is one case: its anatomical scan, with the session's PET stacked on the same grid
    assert sorted(b["view"][0] for b in items) == ["CT", "MRI"]
    for b in items:
        anat, pet = by_view[b["view"][0]], by_view[f"PET_{b['view'][0]}"]
        assert b["image"].shape[:2] == (1, 2) and b["image"].shape[2:] == anat["image"].shape[2:]
        torch.testing.assert_close(b["image"][:, :1], anat["image"].float())  # the CT stored int16, stacked as float32
        torch.testing.assert_close(b["image"][:, 1:], pet["image"])
        torch.testing.assert_close(b["label"], anat["label"])


def test_k_shot_subjects_per_view(tiny_cohort, cache_dir):
    dm = _dm(cache_dir, train_views=["CT", "PET_CT"], k_shot=1)
    dm.setup("fit")
    per_view = dm.train_subjects_per_view
    assert set(per_view) == {"CT", "PET_CT"} and all(len(v) == 1 for v in per_view.values())
    assert per_view["CT"] == per_view["PET_CT"]  # the same subject: its CT and PET form one pair
    items = dm._paired_items("train")
    assert len(items) == 1 and items[0]["session"] == "petct"
    assert items[0]["use_anat"] and items[0]["use_pet"]


def test_resume_skips_finished_cases(tiny_cohort, cache_dir):
    dm = _dm(cache_dir)
    dm.setup("test")
    first = [r.case_id for r in dm.eval_records()]
    dm.exclude_cases(first[:2])
    assert [r.case_id for r in dm.eval_records()] == first[2:]
    assert [r.case_id for r in dm.eval_records(include_finished=True)] == first  # the run's whole scope


def test_epoch_batches_revisits_sessions_in_shuffled_rounds(tiny_cohort, cache_dir):
    dm = _dm(cache_dir, epoch_batches=5)
    dm.setup("fit")
    sessions = len(dm._train_ds)
    loader = dm.train_dataloader()
    assert len(loader) == 5 and 2 * 5 > sessions  # batches of 2 sessions: more than one pass
    seen = [s + "/" + x for b in loader for s, x in zip(b["subject_id"], b["session"])]
    counts = {k: seen.count(k) for k in set(seen)}
    assert len(counts) == sessions and max(counts.values()) - min(counts.values()) <= 1
    with pytest.raises(ValueError, match="epoch_batches"):
        _dm(cache_dir, epoch_batches=0)


def test_eval_volumes_keep_their_stored_dtypes(tiny_cohort, cache_dir):
    """A clinical session is held at the dtype it is stored in: the CT as its int16 file holds it, the
    label as uint8; only the PET, resampled onto the label grid, is float32."""
    import nibabel as nib

    dm = _dm(cache_dir)
    dm.setup("test")
    by_view = {b["view"][0]: b for b in dm.test_dataloader()}
    ct = by_view["CT"]
    stored = nib.load(ct["image_path"][0])
    assert stored.get_data_dtype() == np.int16 and ct["image"].dtype == torch.int16
    # the same numbers as the file (the CT session is stored RAS: no flip), not a float copy of them
    np.testing.assert_array_equal(ct["image"][0, 0].numpy(), np.asanyarray(stored.dataobj))
    for view, b in by_view.items():
        assert b["label"].dtype == torch.uint8, view
        np.testing.assert_array_equal(np.unique(b["label"].numpy()), np.unique(np.asanyarray(nib.load(b["label_path"][0]).dataobj)))
    assert by_view["PET_CT"]["image"].dtype == by_view["PET_MRI"]["image"].dtype == torch.float32
    assert by_view["MRI"]["image"].dtype == torch.float32  # stored float32


def test_evaluation_caches_no_session_and_training_cache_is_bounded(tiny_cohort, cache_dir):
    """Evaluation reads each case when it comes (a plain Dataset of paths, a new tensor at every read);
    training caches only the sessions that fit in train_cache_gb, and nothing once fit is over."""
    import nibabel as nib
    from monai.data import CacheDataset

    dm = _dm(cache_dir)
    dm.setup("test")
    dataset = dm.test_dataloader().dataset
    assert not isinstance(dataset, CacheDataset)
    assert all(isinstance(v, str) for item in dataset.data for v in item.values())  # paths and names only
    first, again = dataset[0], dataset[0]
    assert first["image"].data_ptr() != again["image"].data_ptr()
    assert dm.test_dataloader().prefetch_factor is None  # no worker: nothing read ahead

    items = _dm(cache_dir, train_views=["CT", "MRI"])
    items.setup("test")
    sessions = items._paired_items("train")
    # one session cached = its label grid's voxels x (float32 scan + float32 PET + uint8 label)
    one = int(np.prod(nib.load(sessions[0]["label"]).shape)) * 9
    dm = _dm(cache_dir, train_views=["CT", "MRI"], train_cache_gb=(one + 1) / 2**30)
    dm.setup("fit")
    assert len(sessions) > 1 and dm._train_ds.cache_num == 1 and len(dm._train_ds._cache) == 1
    assert dm._train_ds._cache[0]["label"].dtype == torch.uint8
    assert next(iter(dm.train_dataloader()))["label"].dtype == torch.uint8  # patches stay small; widened on the device
    train_ds = dm._train_ds
    dm.teardown("fit")
    assert train_ds.cache_num == 0 and len(train_ds._cache) == 0

    # One budget for train and val: the validation session finds it spent by the training one.
    with_val = _dm(cache_dir, splits={"n_test": 1, "n_val": 1}, train_views=["CT"], train_cache_gb=(one + 1) / 2**30)
    with_val.setup("fit")
    assert with_val._train_ds.cache_num == 1 and with_val._val_ds.cache_num == 0
    with pytest.raises(ValueError, match="train_cache_gb"):
        _dm(cache_dir, train_cache_gb=-1)


def test_eval_loader_reads_one_case_ahead(tiny_cohort, cache_dir):
    dm = _dm(cache_dir, num_workers=1)
    dm.setup("test")
    loader = dm.test_dataloader()
    assert loader.num_workers == 1 and loader.prefetch_factor == 1


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_blocked_reader_gives_nibabels_voxels_in_c_order(tmp_path, dtype):
    """The loader's tiled Fortran-to-C copy: the voxels nibabel reads, on a grid that is no multiple of
    the tile (and a 4D file, which takes numpy's copy)."""
    import nibabel as nib

    from umd_lightning.data.transforms import BlockedNibabelReader, c_contiguous

    rng = np.random.default_rng(1)
    vol = rng.integers(0, 200, (37, 29, 70)).astype(dtype)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 0.8, 2.0, 1.0])), path)
    reader = BlockedNibabelReader()
    data, _ = reader.get_data(reader.read(str(path)))
    assert data.flags.c_contiguous and data.dtype == dtype and np.array_equal(data, vol)
    four_d = np.asfortranarray(rng.random((5, 4, 3, 2)))
    assert np.array_equal(c_contiguous(four_d), four_d) and c_contiguous(four_d).flags.c_contiguous
