"""Failure-mode table, Bland-Altman volume agreement (against numpy and scipy by hand) and their figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from umd_lightning.analysis.failure import (
    FAILURE_MODES,
    failure_figures,
    failure_modes,
    volume_agreement,
)
from umd_lightning.analysis.report import TABLE_FILES, analyze, write_analysis
from umd_lightning.results import FAILURE_COLUMNS

NAN = float("nan")


def _row(case, organ, status, dice, ref_ml, pred_ml, n=1, far=0.0, suv_p=NAN, suv_r=NAN, view="PET_CT", subject="s1"):
    return dict(model="m", subject_id=subject, view=view, case_id=case, organ=organ, label_id=1 if organ == "liver" else 2,
                status=status, dice=dice, hd95=NAN, nsd=NAN, ref_volume_ml=ref_ml, pred_volume_ml=pred_ml,
                n_components=n, farthest_component_mm=far, suv_mean_pred=suv_p, suv_mean_ref=suv_r)


def _modes_table() -> pd.DataFrame:
    return pd.DataFrame([
        _row("c1", "liver", "ok", 0.9, 100.0, 110.0, suv_p=2.0, suv_r=2.5),  # none
        _row("c1", "spleen", "missed", 0.0, 50.0, 0.0, n=0, far=NAN),
        _row("c2", "liver", "ok", 0.0, 100.0, 30.0, far=80.0),  # no overlap: elsewhere (stray too, elsewhere wins)
        _row("c2", "spleen", "false_positive", 0.0, 0.0, 20.0, far=NAN),
        _row("c3", "liver", "ok", 0.5, 100.0, 250.0, n=3, far=40.0),  # over-segmented and stray: over wins
        _row("c3", "spleen", "ok", 0.8, 50.0, 55.0, n=2, far=12.0),  # stray only
        _row("c4", "liver", "ok", 0.8, 100.0, 120.0, n=2, far=9.0),  # a detached piece within 10 mm: none
        _row("c4", "spleen", "both_empty", NAN, 0.0, 0.0, n=0, far=NAN),
        _row("c5", "liver", "failed", NAN, NAN, NAN, n=NAN, far=NAN),
    ])


def test_failure_modes_classified_by_hand():
    modes = failure_modes(_modes_table())
    assert list(modes["failure_mode"]) == [
        "none", "missed", "false_positive_elsewhere", "false_positive", "over_segmented", "stray_component",
        "none", "both_empty", "failed",
    ]
    flags = modes.set_index(["case_id", "organ"])[list(FAILURE_MODES)]
    assert flags.loc[("c2", "liver")].tolist() == [False, False, True, False, True]
    assert flags.loc[("c3", "liver")].tolist() == [False, False, False, True, True]
    assert modes.loc[4, "volume_ratio"] == 2.5 and math.isnan(modes.loc[3, "volume_ratio"])  # empty reference
    assert modes.loc[0, "suv_diff"] == pytest.approx(-0.5)


def test_thresholds_are_parameters():
    modes = failure_modes(_modes_table(), over_ratio=3.0, stray_mm=5.0)
    by = modes.set_index(["case_id", "organ"])["failure_mode"]
    assert by[("c3", "liver")] == "stray_component" and by[("c4", "liver")] == "stray_component"


def test_a_table_without_the_failure_columns_still_classifies():
    old = _modes_table().drop(columns=list(FAILURE_COLUMNS))
    modes = failure_modes(old)
    assert not modes["stray_component"].any() and modes[list(FAILURE_COLUMNS)].isna().all().all()
    assert list(modes["failure_mode"])[:5] == ["none", "missed", "false_positive_elsewhere", "false_positive",
                                               "over_segmented"]


def _volume_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for view in ("CT", "PET_CT"):
        for organ in ("liver", "spleen"):
            for s in range(6):
                ref = rng.uniform(50, 1500)
                rows.append(_row(f"s{s}_{view}", organ, "ok", 0.8, ref, ref * rng.uniform(0.7, 1.4), view=view,
                                 subject=f"s{s}"))
    rows.append(_row("s9_CT", "liver", "both_empty", NAN, 0.0, 0.0, view="CT", subject="s9"))  # not counted
    rows.append(_row("s8_CT", "liver", "failed", NAN, NAN, NAN, view="CT", subject="s8"))  # not counted
    rows.append(_row("s7_CT", "liver", "missed", 0.0, 300.0, 0.0, view="CT", subject="s7"))  # counted: -300 ml
    return pd.DataFrame(rows)


def test_bland_altman_against_numpy_and_scipy():
    df = _volume_table()
    table = volume_agreement(df).set_index(["view", "organ"])
    assert list(table.index) == [("CT", "liver"), ("CT", "spleen"), ("PET_CT", "liver"), ("PET_CT", "spleen")]
    g = df[(df.view == "CT") & (df.organ == "liver") & df.status.isin(["ok", "missed"])]
    diff = (g.pred_volume_ml - g.ref_volume_ml).to_numpy()
    row = table.loc[("CT", "liver")]
    assert row["n"] == 7 == len(diff)
    assert row["bias_ml"] == pytest.approx(diff.mean(), rel=1e-12)
    assert row["sd_diff_ml"] == pytest.approx(np.std(diff, ddof=1), rel=1e-12)
    assert row["loa_low_ml"] == pytest.approx(diff.mean() - 1.959963984540054 * np.std(diff, ddof=1), rel=1e-12)
    assert row["loa_high_ml"] == pytest.approx(diff.mean() + 1.959963984540054 * np.std(diff, ddof=1), rel=1e-12)
    ci = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    assert (row["bias_ci_low_ml"], row["bias_ci_high_ml"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert row["relative_bias_pct"] == pytest.approx(100 * diff.mean() / g.ref_volume_ml.mean(), rel=1e-12)


def test_one_case_gives_a_bias_without_limits():
    table = volume_agreement(pd.DataFrame([_row("c1", "liver", "ok", 0.9, 100.0, 130.0)]))
    assert table.loc[0, "n"] == 1 and table.loc[0, "bias_ml"] == 30.0
    assert table[["sd_diff_ml", "loa_low_ml", "loa_high_ml", "bias_ci_low_ml"]].isna().all(axis=None)


def test_figures_are_named_per_model_and_skip_what_is_not_there():
    df = _volume_table()
    modes, agree = failure_modes(df), volume_agreement(df)
    figs = failure_figures(df, modes, agree)
    assert set(figs) == {"dice_vs_volume_m", "bland_altman_m"}  # no SUV in this table
    assert sum(ax.get_visible() for ax in figs["bland_altman_m"].axes) == 2  # one panel per organ
    df.loc[df.view == "PET_CT", ["suv_mean_pred", "suv_mean_ref"]] = [2.0, 2.5]
    figs = failure_figures(df, failure_modes(df), agree)
    points = figs["suv_agreement_m"].axes[0].collections[0].get_offsets()
    assert len(points) == 12 and np.allclose(points, [[2.5, 2.0]])  # x reference, y prediction


def test_analyze_writes_both_tables(tmp_path):
    df = _volume_table()
    analysis = analyze(df, {"empty_policy": "worst"}, metrics=("dice",), n_boot=50, figures=False)
    assert {"failure_modes", "volume_agreement"} <= set(analysis.tables())
    paths = write_analysis(analysis, tmp_path, write_report_html=False)
    back = pd.read_csv(paths["tables"]["volume_agreement"])
    assert TABLE_FILES["failure_modes"] == "failure_modes.csv" and len(back) == 4
    assert len(pd.read_csv(paths["tables"]["failure_modes"])) == len(df)
