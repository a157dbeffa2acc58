"""The headline: organ-averaged paired difference, subject-clustered bootstrap, mixed-model check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.regression.mixed_linear_model import MixedLM

from umd_lightning.analysis.demo import demo_results
from umd_lightning.analysis.discrepancy import row_seed
from umd_lightning.analysis.headline import cluster_bootstrap_ci, headline_table, mixed_view_effect

ORGANS = ("liver", "spleen", "kidney_left", "aorta", "heart", "stomach")


def planted(n_subjects: int, shift: float = -0.3, seed: int = 0) -> pd.DataFrame:
    """CT Dice per subject x organ with a subject effect, PET_CT = CT + shift + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        u = rng.normal(0, 0.04)
        for i, organ in enumerate(ORGANS):
            ct = 0.85 - 0.02 * i + u + rng.normal(0, 0.02)
            for view, dice in (("CT", ct), ("PET_CT", ct + shift + rng.normal(0, 0.06))):
                rows.append({"model": "m", "subject_id": f"s{s:02d}", "view": view, "case_id": f"s{s:02d}_{view}",
                             "organ": organ, "label_id": i + 1, "dice": dice, "status": "ok"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def twelve():
    df = planted(12)
    return df, headline_table(df, ["dice"], n_boot=1000, seed=3).iloc[0]


def test_twelve_subjects_with_a_planted_shift_cover_it_and_are_not_underpowered(twelve):
    df, h = twelve
    assert (h.pair_kind, h.n_subjects, h.n_organs) == ("CT_vs_PET_CT", 12, len(ORGANS))
    assert h.ci_low < -0.3 < h.ci_high
    assert not bool(h.underpowered) and h.p_holm < 0.05 and h.subjects_needed == 6  # a family of one pair kind
    assert "underpowered" not in h.sentence and "Dice is 0.3" in h.sentence and "lower than on CT" in h.sentence


def test_headline_numbers_recompute_from_the_table(twelve):
    df, h = twelve
    wide = df.pivot_table(index=["subject_id", "organ"], columns="view", values="dice")
    d = (wide["PET_CT"] - wide["CT"]).unstack("organ")  # subjects x organs, complete
    assert h.mean_diff == pytest.approx(d.to_numpy().mean())
    subject_avg = d.mean(axis=1).to_numpy()
    assert h.p == pytest.approx(sps.wilcoxon(subject_avg).pvalue)
    ci = sps.ttest_1samp(subject_avg, 0).confidence_interval(0.95)
    assert (h.t_ci_low, h.t_ci_high) == pytest.approx((ci.low, ci.high))
    assert (h.k_worse, h.n_worse_of) == (int((subject_avg < 0).sum()), 12)
    assert h.organs_worse == int((d.mean(axis=0) < 0).sum())


def test_cluster_bootstrap_equals_a_loop_over_resampled_subjects():
    rng = np.random.default_rng(5)
    diffs = rng.normal(-0.3, 0.1, (7, 4))
    diffs[2, 1] = diffs[5, 3] = np.nan  # missing pairs
    draws = np.random.default_rng(11).integers(0, 7, size=(300, 7))
    stats = []
    for idx in draws:  # the statistic by hand: per organ the mean over drawn subjects, then over organs
        sample = diffs[idx]
        stats.append(np.mean([np.nanmean(sample[:, o]) for o in range(4) if np.isfinite(sample[:, o]).any()]))
    lo, hi = np.quantile(stats, [0.025, 0.975])
    assert cluster_bootstrap_ci(diffs, 300, 11) == pytest.approx((lo, hi))


@pytest.mark.filterwarnings("ignore:The MLE may be on the boundary")
def test_mixed_model_check_equals_statsmodels_on_the_design_matrix(twelve):
    df, h = twelve
    # independent route: MixedLM on explicit arrays (intercept, PET indicator, organ dummies)
    d = df.sort_values(["subject_id", "organ", "view"])
    organ_dummies = [(d["organ"] == o).to_numpy(float) for o in sorted(ORGANS)[1:]]
    exog = np.column_stack([np.ones(len(d)), (d["view"] == "PET_CT").to_numpy(float), *organ_dummies])
    fit = MixedLM(d["dice"].to_numpy(), exog, groups=d["subject_id"].to_numpy()).fit(reml=True, method=["powell", "bfgs"])
    assert h.mixed_coef == pytest.approx(fit.params[1], abs=1e-6)
    assert h.mixed_coef == pytest.approx(h.mean_diff, abs=1e-6)  # balanced: the fixed effect is the mean difference
    ci = fit.conf_int(0.05)[1]
    assert (h.mixed_ci_low, h.mixed_ci_high) == pytest.approx((ci[0], ci[1]), abs=1e-5)
    assert h.mixed_ci_low < -0.3 < h.mixed_ci_high


def test_the_main_jobs_four_subjects_are_underpowered():
    df, _ = demo_results(n_subjects=4)
    h = headline_table(df, ["dice", "hd95"], n_boot=300)
    assert set(h["pair_kind"]) == {"CT_vs_PET_CT", "MRI_vs_PET_MRI", "CT_vs_MRI", "PET_CT_vs_PET_MRI"}
    assert h["underpowered"].all() and (h["n_worse_of"] == 4).all()
    pet = h[(h.pair_kind == "CT_vs_PET_CT") & (h.metric == "dice")].iloc[0]
    assert pet.min_attainable_p == 0.125 and pet.subjects_needed == 8  # Holm over 4 pair kinds: 4 * 2/2^n < 0.05
    assert "underpowered: n=4 cannot reach p<0.05 after Holm, needs 8 subjects" in pet.sentence
    assert "t interval" in pet.sentence  # beside the narrow bootstrap of 4 subjects
    hd = h[(h.pair_kind == "CT_vs_PET_CT") & (h.metric == "hd95")].iloc[0]
    assert np.isnan(hd.mixed_coef) and hd.mixed_note.startswith("not fitted")
    assert hd.k_worse == int(hd.n_worse_of) and "mm higher" in hd.sentence  # HD95: higher is worse


def test_mixed_model_guards_give_notes_never_errors():
    two = pd.DataFrame({"subject_id": ["a", "a", "b", "b"], "organ": ["liver"] * 4, "view": ["CT", "PET_CT"] * 2,
                        "value": [0.9, 0.5, 0.8, 0.4]})
    assert "too few groups" in mixed_view_effect(two, "CT")["mixed_note"]
    flat = pd.DataFrame({"subject_id": list("aabbccdd"), "organ": ["liver"] * 8, "view": ["CT", "PET_CT"] * 4,
                         "value": [0.5] * 8})
    out = mixed_view_effect(flat, "CT")
    assert np.isnan(out["mixed_coef"]) and out["mixed_note"]
    # no subject variance at all (identical subjects): a fit on the boundary, said in the note
    rng = np.random.default_rng(0)
    same = pd.DataFrame({"subject_id": np.repeat(list("abcd"), 6), "organ": np.tile(np.repeat(["x", "y", "z"], 2), 4),
                         "view": ["CT", "PET_CT"] * 12})
    same["value"] = np.where(same["view"] == "CT", 0.8, 0.5) + np.tile(rng.normal(0, 0.01, 6), 4)
    out = mixed_view_effect(same, "CT")
    assert out["mixed_coef"] == pytest.approx(-0.3, abs=0.02) and "subject variance 0" in out["mixed_note"]


def test_headline_rows_are_seeded_per_row():
    df = planted(8)
    a = headline_table(df, ["dice"], n_boot=200, seed=1)
    b = headline_table(pd.concat([df.assign(model="other"), df]), ["dice"], n_boot=200, seed=1)
    pd.testing.assert_frame_equal(a, b[b.model == "m"].reset_index(drop=True))
    assert row_seed(1, "m", "CT_vs_PET_CT", "dice", "headline") != row_seed(2, "m", "CT_vs_PET_CT", "dice", "headline")
