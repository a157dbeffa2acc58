"""CaseMetrics: rows per case with meta, batches, failures, dedupe, summaries, and a 2-process gloo
gather in which every case comes back exactly once."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from umd_lightning.metrics import CaseMetrics, case_metrics, summary, summary_to_log_dict
from umd_lightning.metrics.functional import ROW_KEYS

LABELS = {1: "liver", 2: "spleen", 3: "aorta"}
SPACING = (2.0, 1.0, 1.5)


def make_case(i: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Deterministic case ``i``: two boxes per map, organ 3 absent from both."""
    rng = np.random.default_rng(i)
    shape = (16, 20, 18)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for label in (1, 2):
        lo = rng.integers(1, 6, 3)
        size = rng.integers(4, 9, 3)
        ref[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = label
        lo = lo + rng.integers(-1, 2, 3)
        pred[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = label
    view = ("CT", "PET_CT", "MRI", "PET_MRI")[i % 4]
    meta = {"subject_id": f"sub{i // 2:03d}", "session": "petct", "view": view, "case_id": f"case{i:03d}", "site": i % 3}
    return pred, ref, meta


def expected_rows(i: int) -> list[dict]:
    pred, ref, meta = make_case(i)
    return [{**meta, **row} for row in case_metrics(pred, ref, SPACING, LABELS)]


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    """Row lists equal, NaN equal to NaN."""
    assert [list(r) for r in got] == [list(r) for r in want]
    pd.testing.assert_frame_equal(pd.DataFrame(got), pd.DataFrame(want))


def test_update_returns_rows_and_compute_gives_the_table():
    metric = CaseMetrics(LABELS)
    for i in (2, 0, 1):
        pred, ref, meta = make_case(i)
        rows = metric.update(torch.from_numpy(pred), torch.from_numpy(ref), torch.tensor(SPACING), meta)
        assert_rows_equal(rows, expected_rows(i))
        assert metric.last_rows is rows
    table = metric.compute()
    assert list(table.columns[:5]) == ["subject_id", "session", "view", "case_id", "site"]
    assert list(table.columns[5:]) == list(ROW_KEYS)
    assert len(table) == 3 * len(LABELS)
    assert list(table["case_id"].unique()) == ["case000", "case001", "case002"]  # sorted, not update order
    expected = pd.DataFrame([r for i in range(3) for r in expected_rows(i)])[table.columns]
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    means = metric.summary()
    liver_ct = means[(means.view == "CT") & (means.organ == "liver")].iloc[0]
    assert liver_ct["dice_mean"] == pytest.approx(expected_rows(0)[0]["dice"])  # case 0 is the only CT case
    assert set(means["n_both_empty"][means.organ == "aorta"]) == {1}


def test_batch_update_with_collated_meta():
    cases = [make_case(i) for i in range(3)]
    pred = torch.stack([torch.from_numpy(c[0]) for c in cases])[:, None]  # (B, 1, D, H, W)
    ref = torch.stack([torch.from_numpy(c[1]) for c in cases])[:, None]
    meta = {k: [c[2][k] for c in cases] for k in cases[0][2]}
    meta["site"] = torch.tensor(meta["site"])  # numbers arrive as tensors from default_collate
    metric = CaseMetrics(LABELS)
    rows = metric.update(pred, ref, torch.tensor([SPACING] * 3), meta)
    assert_rows_equal(rows, [r for i in range(3) for r in expected_rows(i)])


def test_single_case_batch_of_one_is_unwrapped():
    pred, ref, meta = make_case(4)
    metric = CaseMetrics(LABELS)
    collated = {k: [v] for k, v in meta.items()}
    rows = metric.update(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None], torch.tensor([SPACING]), collated)
    assert_rows_equal(rows, expected_rows(4))


def test_failed_case_rows_and_duplicates():
    metric = CaseMetrics(LABELS, empty_policy="exclude")
    pred, ref, meta = make_case(0)
    metric.update(pred, ref, SPACING, meta)
    metric.update(pred, ref, SPACING, meta)  # padding by a DistributedSampler repeats a case
    failed = metric.update_failed({"subject_id": "sub9", "view": "CT", "case_id": "bad", "error": "ValueError: x.nii: 4D"})
    assert [r["status"] for r in failed] == ["failed"] * 3
    table = metric.compute()
    assert table.groupby("case_id").size().to_dict() == {"bad": 3, "case000": 3}
    bad = table[table.case_id == "bad"]
    assert set(bad["error"]) == {"ValueError: x.nii: 4D"} and bad["dice"].isna().all()
    assert set(table[table.case_id == "case000"]["error"]) == {""}


def test_state_survives_pickling_and_reset():
    metric = CaseMetrics(LABELS)
    pred, ref, meta = make_case(1)
    metric.update(pred, ref, SPACING, meta)
    clone = pickle.loads(pickle.dumps(metric))
    assert_rows_equal(clone.update(*make_case(2)[:2], SPACING, make_case(2)[2]), expected_rows(2))
    assert len(clone.compute()) == 2 * len(LABELS)
    assert len(copy.deepcopy(metric).compute()) == len(LABELS)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().empty


def test_metadata_carries_the_options():
    metric = CaseMetrics(LABELS, nsd_tolerance={"liver": 3.0, "spleen": 2.0, "aorta": 1.0}, empty_policy="exclude")
    meta = metric.metadata(organ_set="custom")
    assert meta["empty_policy"] == "exclude" and meta["nsd_tolerance_mm"]["liver"] == 3.0
    assert meta["organ_set"] == "custom"
    with pytest.raises(ValueError, match="empty_policy"):
        CaseMetrics(LABELS, empty_policy="drop")


def test_summary_means_exclude_nan_and_count_statuses():
    table = pd.DataFrame(
        [
            {"view": "CT", "organ": "liver", "status": "ok", "dice": 0.8, "hd95": 4.0, "nsd": 0.7, "assd": 1.0},
            {"view": "CT", "organ": "liver", "status": "ok", "dice": 0.6, "hd95": 6.0, "nsd": 0.5, "assd": 2.0},
            {"view": "CT", "organ": "liver", "status": "both_empty", "dice": math.nan, "hd95": math.nan, "nsd": math.nan, "assd": math.nan},
            {"view": "CT", "organ": "liver", "status": "missed", "dice": 0.0, "hd95": 500.0, "nsd": 0.0, "assd": 500.0},
            {"view": "PET_CT", "organ": "liver", "status": "failed", "dice": math.nan, "hd95": math.nan, "nsd": math.nan, "assd": math.nan},
        ]
    )
    s = summary(table)
    ct = s[(s.view == "CT") & (s.organ == "liver")].iloc[0]
    assert ct["dice_mean"] == pytest.approx((0.8 + 0.6 + 0.0) / 3)
    assert ct["hd95_mean"] == pytest.approx((4 + 6 + 500) / 3)
    assert (ct["dice_n"], ct["n_rows"], ct["n_both_empty"], ct["n_missed"], ct["n_ok"]) == (3, 4, 1, 1, 2)
    pet = s[s.view == "PET_CT"].iloc[0]
    assert pet["n_failed"] == 1 and math.isnan(pet["dice_mean"])
    logged = summary_to_log_dict(s, stage="test")
    assert logged["test/dice/CT/liver"] == pytest.approx(ct["dice_mean"])
    assert "test/dice/PET_CT/liver" not in logged


# --------------------------------------------------------------------------- DDP

#: Rank -> cases it evaluates. Rank 1 also gets case 0 again, as a DistributedSampler pads it.
RANK_CASES = {0: [0, 1, 2], 1: [3, 4, 0]}
#: A second metric that rank 1 never updates: the gather must still work.
RANK_CASES_UNEVEN = {0: [5, 6], 1: []}


def _ddp_worker(rank: int, world: int, out_dir: str) -> None:
    init = (Path(out_dir) / "dist_init").as_uri()
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        metric, uneven = CaseMetrics(LABELS), CaseMetrics(LABELS)
        for i in RANK_CASES[rank]:
            pred, ref, meta = make_case(i)
            metric.update(torch.from_numpy(pred), torch.from_numpy(ref), SPACING, meta)
        for i in RANK_CASES_UNEVEN[rank]:
            pred, ref, meta = make_case(i)
            uneven.update(pred, ref, SPACING, meta)
        tables = {"metric": metric.compute(), "uneven": uneven.compute()}
        # compute() restores the local state afterwards: each rank still holds only its own cases.
        tables["local_after"] = len(metric.records)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(tables, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_gather_has_every_case_exactly_once(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    expected = pd.DataFrame([r for i in range(5) for r in expected_rows(i)])
    expected_uneven = pd.DataFrame([r for i in (5, 6) for r in expected_rows(i)])
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            tables = pickle.load(f)
        table = tables["metric"]
        assert table.groupby("case_id").size().to_dict() == {f"case{i:03d}": len(LABELS) for i in range(5)}
        pd.testing.assert_frame_equal(table, expected[table.columns], check_dtype=False)
        pd.testing.assert_frame_equal(tables["uneven"], expected_uneven[tables["uneven"].columns], check_dtype=False)
        assert tables["local_after"] == len(RANK_CASES[rank])
