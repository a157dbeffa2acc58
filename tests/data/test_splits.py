from __future__ import annotations

import pytest

from umd_lightning.data.splits import (
    SplitError,
    assert_no_leakage,
    few_shot,
    read_split_file,
    split_subjects,
    write_split_file,
)

SUBJECTS = [f"s{i:02d}" for i in range(20)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_subject_in_two_splits(seed):
    splits = split_subjects(SUBJECTS, n_test=5, n_val=3, seed=seed)
    sets = [set(v) for v in splits.values()]
    assert sum(len(s) for s in sets) == len(SUBJECTS)
    assert set().union(*sets) == set(SUBJECTS)
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert (len(splits["test"]), len(splits["val"]), len(splits["train"])) == (5, 3, 12)


def test_seeded_and_fraction():
    assert split_subjects(SUBJECTS, n_test=0.25, seed=3) == split_subjects(SUBJECTS, n_test=0.25, seed=3)
    assert split_subjects(SUBJECTS, n_test=0.25, seed=3) != split_subjects(SUBJECTS, n_test=0.25, seed=4)
    assert len(split_subjects(SUBJECTS, n_test=0.25)["test"]) == 5


def test_fixed_splits_are_kept():
    splits = split_subjects(SUBJECTS, n_test=4, seed=0, fixed={"s00": "test", "s01": "train"})
    assert "s00" in splits["test"] and "s01" in splits["train"] and len(splits["test"]) == 4


def test_impossible_and_leaking_splits_fail():
    with pytest.raises(SplitError, match="cannot take 15 test"):
        split_subjects(SUBJECTS[:10], n_test=15)
    with pytest.raises(SplitError, match="'s1' is in both"):
        assert_no_leakage({"train": ["s1", "s2"], "test": ["s1"]})
    with pytest.raises(SplitError, match="unknown split name"):
        split_subjects(SUBJECTS, fixed={"s00": "holdout"})


def test_few_shot_k_per_view_nested():
    train = SUBJECTS[:10]
    k1, k5 = few_shot(train, ["CT", "PET_CT"], 1), few_shot(train, ["CT", "PET_CT"], 5)
    assert all(len(v) == 1 for v in k1.values()) and all(len(v) == 5 for v in k5.values())
    assert set(k1["CT"]) <= set(k5["CT"]) and set(k1["PET_CT"]) <= set(k5["PET_CT"])
    assert few_shot(train, ["CT"], None)["CT"] == sorted(train)
    assert set(k5["CT"]) <= set(train)


def test_few_shot_shares_subjects_across_views_and_recipes():
    train = SUBJECTS[:10]
    all_views = few_shot(train, ["CT", "PET_CT", "MRI", "PET_MRI"], 3, seed=4)
    assert len({tuple(v) for v in all_views.values()}) == 1  # one draw: paired sessions of the same people
    assert few_shot(train, ["PET_CT"], 3, seed=4)["PET_CT"] == all_views["PET_CT"]
    assert few_shot(train, ["CT"], 3, seed=5)["CT"] != all_views["CT"]  # the seed matters
    apart = few_shot(train, ["CT", "PET_CT", "MRI", "PET_MRI"], 3, seed=4, shared=False)
    assert len({tuple(v) for v in apart.values()}) > 1
    # drawn apart, a view's subjects depend on its name, not on its place in the recipe's list
    assert few_shot(train, ["PET_MRI", "CT"], 3, seed=4, shared=False) == {v: apart[v] for v in ("PET_MRI", "CT")}


def test_split_file_roundtrip(tmp_path):
    splits = split_subjects(SUBJECTS, n_test=4, n_val=2)
    path = write_split_file(tmp_path / "splits.json", splits, few_shot(splits["train"], ["CT"], 3))
    assert read_split_file(path) == splits
