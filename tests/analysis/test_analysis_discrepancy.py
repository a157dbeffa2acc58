"""Discrepancy tables on small hand-built results tables, checked against hand counts and scipy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from umd_lightning.analysis.demo import demo_results
from umd_lightning.analysis.discrepancy import (
    apply_empty_policy,
    discrepancy_table,
    generalisation_gap,
    reported_from_meta,
    select_cases,
    sensitivity_table,
    view_summary,
)
from umd_lightning.analysis.stats import holm

NAN = float("nan")


def row(subject, view, organ, dice, status="ok", hd95=None, nsd=None, model="m", case=None, label=""):
    if hd95 is None:
        hd95 = NAN if np.isnan(dice) else 10.0 * (1.0 - dice)
    if nsd is None:
        nsd = dice
    return {"model": model, "subject_id": subject, "view": view, "case_id": case or f"{subject}_{view}",
            "organ": organ, "label_id": {"liver": 4, "spleen": 5}[organ], "dice": dice, "hd95": hd95,
            "nsd": nsd, "status": status, "image": "", "label": label, "prediction": ""}


LIVER_CT = {"s1": 0.9, "s2": 0.8, "s3": 0.7, "s4": 0.6}
LIVER_PET = {"s1": 0.5, "s2": 0.6, "s3": 0.4, "s4": 0.55}
SPLEEN_CT = {"s1": 0.85, "s2": 0.75, "s3": 0.95, "s4": 0.8}
SPLEEN_PET = {"s1": 0.80, "s2": 0.77, "s3": 0.50}


def paired_table(model="m") -> pd.DataFrame:
    rows = []
    for s, v in LIVER_CT.items():
        rows.append(row(s, "CT", "liver", v, model=model))
    for s, v in LIVER_PET.items():
        rows.append(row(s, "PET_CT", "liver", v, model=model))
    for s, v in SPLEEN_CT.items():
        rows.append(row(s, "CT", "spleen", v, model=model))
    for s, v in SPLEEN_PET.items():
        rows.append(row(s, "PET_CT", "spleen", v, model=model))
    rows.append(row("s4", "PET_CT", "spleen", NAN, status="both_empty", model=model))
    rows.append(row("s5", "CT", "liver", 0.99, model=model))  # no PET_CT: not a pair
    rows.append(row("s5", "CT", "spleen", 0.99, model=model))
    return pd.DataFrame(rows)


def test_paired_differences_by_hand_independent_of_row_order():
    df = paired_table().sample(frac=1.0, random_state=3)  # pairing must go by subject, not row order
    d = discrepancy_table(df, metrics=["dice", "hd95"], n_boot=300, seed=1)
    assert set(d["pair_kind"]) == {"CT_vs_PET_CT"}  # no MRI views: other pair kinds are absent
    liver = d[(d.organ == "liver") & (d.metric == "dice")].iloc[0]
    diffs = np.array([LIVER_PET[s] - LIVER_CT[s] for s in ("s1", "s2", "s3", "s4")])
    assert liver.n == 4
    assert liver.mean_diff == pytest.approx(-0.2375)
    assert liver.mean_ref == pytest.approx(0.75) and liver.mean_cmp == pytest.approx(0.5125)
    assert liver.p == pytest.approx(0.125)  # all 4 negative: exact two-sided 2/2^4
    assert liver.effect_dz == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    assert liver.ci_low <= liver.mean_diff <= liver.ci_high
    assert bool(liver.cmp_worse)
    spleen = d[(d.organ == "spleen") & (d.metric == "dice")].iloc[0]
    sd = np.array([SPLEEN_PET[s] - SPLEEN_CT[s] for s in ("s1", "s2", "s3")])
    assert spleen.n == 3  # s4's PET_CT spleen is both_empty
    assert spleen.mean_diff == pytest.approx(sd.mean())
    assert spleen.p == pytest.approx(sps.wilcoxon(sd).pvalue)
    # Holm across the organs of one model x pair kind x metric
    dice = d[d.metric == "dice"].set_index("organ")
    np.testing.assert_allclose(dice.loc[["liver", "spleen"], "p_holm"], holm(dice.loc[["liver", "spleen"], "p"]))
    # HD95: lower is better, so a positive difference means PET is worse
    hd = d[(d.organ == "liver") & (d.metric == "hd95")].iloc[0]
    assert hd.mean_diff == pytest.approx(2.375) and bool(hd.cmp_worse)


def test_bootstrap_rows_are_reproducible_and_independent_of_other_models():
    a = demo_results(n_subjects=12, models=("a",), seed=0)[0]
    b = demo_results(n_subjects=12, models=("b",), seed=1)[0]
    one = discrepancy_table(a, ["dice"], n_boot=400, seed=5)
    again = discrepancy_table(a, ["dice"], n_boot=400, seed=5)
    both = discrepancy_table(pd.concat([b, a]), ["dice"], n_boot=400, seed=5)
    pd.testing.assert_frame_equal(one, again)
    a_in_both = both[both.model == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, a_in_both)
    other = discrepancy_table(a, ["dice"], n_boot=400, seed=6)
    assert not np.allclose(one["ci_low"], other["ci_low"])


def test_repeat_cases_of_a_view_are_averaged_per_subject():
    rows = [row("s1", "CT", "liver", 0.9, case="c1"), row("s1", "CT", "liver", 0.7, case="c2"),
            row("s1", "PET_CT", "liver", 0.5), row("s2", "CT", "liver", 0.6), row("s2", "PET_CT", "liver", 0.6)]
    d = discrepancy_table(pd.DataFrame(rows), ["dice"], n_boot=50)
    r = d.iloc[0]
    assert r.n == 2
    assert r.mean_diff == pytest.approx(((0.5 - 0.8) + 0.0) / 2)


def test_degenerate_organs_get_nan_and_a_reason():
    rows = [row("s1", "CT", "liver", 0.9), row("s1", "PET_CT", "liver", 0.5),  # n = 1
            row("s1", "CT", "spleen", 0.9), row("s2", "CT", "spleen", 0.8),
            row("s1", "PET_CT", "spleen", NAN, status="failed"), row("s2", "PET_CT", "spleen", NAN, status="failed")]
    d = discrepancy_table(pd.DataFrame(rows), ["dice"], n_boot=50).set_index("organ")
    assert d.loc["liver", "n"] == 1 and np.isnan(d.loc["liver", "p"]) and np.isnan(d.loc["liver", "ci_low"])
    assert "n=1" in d.loc["liver", "reason"]
    assert d.loc["spleen", "n"] == 0 and "no subject with both views" in d.loc["spleen", "reason"]
    assert np.isnan(d["p_holm"]).all() and not d["significant"].any()


def summary_table() -> pd.DataFrame:
    rows = [row("s1", "PET_CT", "liver", 0.5), row("s2", "PET_CT", "liver", 0.05),
            row("s3", "PET_CT", "liver", 0.6), row("s4", "PET_CT", "liver", 0.0, status="missed", hd95=500.0, nsd=0.0),
            row("s5", "PET_CT", "liver", NAN, status="both_empty"), row("s6", "PET_CT", "liver", NAN, status="failed"),
            row("s1", "CT", "liver", 0.9), row("s2", "CT", "liver", 0.8)]
    return pd.DataFrame(rows)


def test_view_summary_counts_and_quartiles_by_hand():
    vs = view_summary(summary_table(), metrics=["dice"]).set_index(["view", "organ"])
    r = vs.loc[("PET_CT", "liver")]
    assert (r.n_rows, r.n_ok, r.n_missed, r.n_both_empty, r.n_failed) == (6, 3, 1, 1, 1)
    assert r.failure_rate == pytest.approx(2 / 4)  # missed + Dice 0.05, over ok + missed
    assert r.missed_rate == pytest.approx(1 / 4)
    assert r.dice_n == 4
    assert r.dice_mean == pytest.approx((0.5 + 0.05 + 0.6 + 0.0) / 4)
    assert r.dice_median == pytest.approx(0.275)
    assert r.dice_q1 == pytest.approx(0.0375) and r.dice_q3 == pytest.approx(0.525)
    assert r.dice_iqr == pytest.approx(0.4875)
    assert vs.loc[("PET_CT", "all"), "n_rows"] == 6
    assert vs.loc[("CT", "liver"), "failure_rate"] == 0.0


def test_failure_rate_does_not_depend_on_the_empty_policy():
    df = summary_table()
    worst = view_summary(df, ["dice"])
    excl = view_summary(apply_empty_policy(df, "exclude"), ["dice"])
    np.testing.assert_allclose(worst["failure_rate"], excl["failure_rate"])


def test_generalisation_gap_by_hand():
    df = paired_table()
    rep = reported_from_meta({"model": "m", "reported_dice": {"CT": 0.9, "overall": 0.85}}, ["m"])
    gap = generalisation_gap(df, rep).set_index("view")
    ct_macro = (np.mean([*LIVER_CT.values(), 0.99]) + np.mean([*SPLEEN_CT.values(), 0.99])) / 2
    pet_macro = (np.mean(list(LIVER_PET.values())) + np.mean(list(SPLEEN_PET.values()))) / 2
    assert gap.loc["CT", "measured_dice"] == pytest.approx(ct_macro)
    assert gap.loc["CT", "gap"] == pytest.approx(0.9 - ct_macro) and gap.loc["CT", "reported_key"] == "CT"
    assert gap.loc["PET_CT", "gap"] == pytest.approx(0.85 - pet_macro)
    assert gap.loc["PET_CT", "reported_key"] == "overall"
    none = generalisation_gap(df, {}).set_index("view")
    assert np.isnan(none.loc["CT", "gap"]) and none.loc["CT", "reported_key"] == ""


def test_generalisation_gap_uses_organ_values_where_given():
    df = paired_table()
    rep = {"m": {"CT/liver": 0.95, "CT": 0.9}}
    gap = generalisation_gap(df, rep).set_index("view")
    liver_ct, spleen_ct = np.mean([*LIVER_CT.values(), 0.99]), np.mean([*SPLEEN_CT.values(), 0.99])
    # liver against its own reported value, spleen against the view's mean: like with like
    assert gap.loc["CT", "reported_dice"] == pytest.approx((0.95 + 0.9) / 2)
    assert gap.loc["CT", "gap"] == pytest.approx((0.95 - liver_ct + 0.9 - spleen_ct) / 2)
    assert gap.loc["CT", "n_organs_reported"] == 1
    assert gap.loc["CT", "reported_key"] == "CT/<organ> for 1 of 2 organs, CT for the rest"
    # without a fallback, a partial organ list gives no mean rather than a biased one
    partial = generalisation_gap(df, {"m": {"CT/liver": 0.95}}).set_index("view")
    assert np.isnan(partial.loc["CT", "gap"])


def test_reported_from_meta_accepts_flat_and_per_model_forms():
    assert reported_from_meta({"reported_dice": {"CT": 0.9}}, ["a", "b"]) == {"a": {"CT": 0.9}, "b": {"CT": 0.9}}
    assert reported_from_meta({"model": "a", "reported_dice": {"CT": 0.9}}, ["a", "b"]) == {"a": {"CT": 0.9}}
    assert reported_from_meta({"reported_dice": {"a": {"overall": 0.8}}}, ["a"]) == {"a": {"overall": 0.8}}
    assert reported_from_meta({}, ["a"]) == {}


def test_empty_policy_switch_and_sensitivity_by_hand():
    df = summary_table()
    excl = apply_empty_policy(df, "exclude")
    missed = excl[excl.status == "missed"].iloc[0]
    assert np.isnan(missed.dice) and np.isnan(missed.hd95) and np.isnan(missed.nsd)
    back = apply_empty_policy(excl, "worst")
    assert np.isnan(back[back.status == "missed"].iloc[0].hd95)  # no diagonal source: NaN, not inf
    sens = sensitivity_table(df, "worst", metrics=["dice"]).set_index(["scope", "quantity"])
    r = sens.loc[("PET_CT", "mean")]
    assert r.value_worst == pytest.approx((0.5 + 0.05 + 0.6 + 0.0) / 4)
    assert r.value_exclude == pytest.approx((0.5 + 0.05 + 0.6) / 3)
    assert r.delta == pytest.approx(r.value_exclude - r.value_worst)
    # from the exclude side the same two numbers come back, worst recomputed with Dice 0
    sens2 = sensitivity_table(excl, "exclude", metrics=["dice"]).set_index(["scope", "quantity"])
    assert sens2.loc[("PET_CT", "mean"), "value_worst"] == pytest.approx(r.value_worst)
    assert sens2.loc[("PET_CT", "mean"), "policy_run"] == "exclude"
    pair = sens.loc[("CT_vs_PET_CT", "mean_paired_diff")]
    # worst: pairs s1 (0.5-0.9), s2 (0.05-0.8); exclude: the same (s4 has no CT)
    assert pair.value_worst == pytest.approx(((0.5 - 0.9) + (0.05 - 0.8)) / 2)


def test_exclude_to_worst_takes_the_diagonal_from_the_label_header(tmp_path):
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 20, 30), np.uint8), np.diag([1.0, 2.0, 3.0, 1.0])), str(path))
    df = pd.DataFrame([row("s1", "PET_CT", "liver", NAN, status="missed", hd95=NAN, nsd=NAN, label=str(path))])
    worst = apply_empty_policy(df, "worst").iloc[0]
    assert worst.dice == 0.0 and worst.nsd == 0.0
    assert worst.hd95 == pytest.approx(np.sqrt(10**2 + 40**2 + 90**2))  # |shape * spacing|
    with pytest.raises(ValueError, match="unknown empty policy"):
        apply_empty_policy(df, "zero")


def test_select_cases_best_median_worst_by_hand():
    rows = []
    for s, (a, b) in {"s1": (0.9, 0.7), "s2": (0.2, 0.4), "s3": (0.6, 0.6), "s4": (0.5, NAN)}.items():
        rows += [row(s, "CT", "liver", a), row(s, "CT", "spleen", b, status="ok" if np.isfinite(b) else "both_empty")]
    sel = select_cases(pd.DataFrame(rows)).set_index("which")
    # case means: s1 0.8, s2 0.3, s3 0.6, s4 0.5 -> best s1, lower median of 4 = 2nd best s3, worst s2
    assert sel.loc["best", "case_id"] == "s1_CT" and sel.loc["best", "score"] == pytest.approx(0.8)
    assert sel.loc["median", "case_id"] == "s3_CT"
    assert sel.loc["worst", "case_id"] == "s2_CT"
    by_hd = select_cases(pd.DataFrame(rows), "hd95").set_index("which")
    assert by_hd.loc["best", "case_id"] == "s1_CT"  # lowest HD95 is best


def test_not_predicted_rows_are_counted_but_not_failures():
    df = pd.concat([summary_table(), pd.DataFrame([row("s7", "PET_CT", "liver", NAN, status="not_predicted")])])
    r = view_summary(df, ["dice"]).set_index(["view", "organ"]).loc[("PET_CT", "liver")]
    assert r.n_not_predicted == 1 and r.n_rows == 7
    assert r.failure_rate == pytest.approx(2 / 4) and r.dice_n == 4


def test_select_cases_takes_paths_from_their_aliases():
    rows = [row("s1", "CT", "liver", 0.9), row("s2", "CT", "liver", 0.5)]
    df = pd.DataFrame(rows).drop(columns=["image", "label"])
    df["image_path"] = ["/i1.nii.gz", "/i2.nii.gz"]
    df["label_path"] = ["/l1.nii.gz", "/l2.nii.gz"]
    df["prediction"] = ["/p1.nii.gz", "/p2.nii.gz"]
    sel = select_cases(df).set_index("which")
    assert sel.loc["best", ["image", "label", "prediction"]].tolist() == ["/i1.nii.gz", "/l1.nii.gz", "/p1.nii.gz"]
    assert sel.loc["worst", "label"] == "/l2.nii.gz"


# --------------------------------------------------------------------------- small samples (issue 16)


def planted_table(n_subjects: int, shift: float = -0.3, organs=("liver", "spleen"), seed: int = 0) -> pd.DataFrame:
    """CT Dice around 0.85, PET_CT the same subjects shifted by ``shift``, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        for organ in organs:
            ct = 0.85 + rng.normal(0, 0.03)
            rows.append(row(f"s{s:02d}", "CT", organ, ct))
            rows.append(row(f"s{s:02d}", "PET_CT", organ, ct + shift + rng.normal(0, 0.05)))
    return pd.DataFrame(rows)


def test_four_subjects_are_underpowered_and_say_so():
    df = planted_table(4)
    d = discrepancy_table(df, ["dice"], n_boot=200).set_index("organ")
    for organ in ("liver", "spleen"):
        r = d.loc[organ]
        diffs = df[(df.organ == organ) & (df.view == "PET_CT")]["dice"].to_numpy() - df[(df.organ == organ) & (df.view == "CT")]["dice"].to_numpy()
        assert r.n_nonzero == 4 and r.min_attainable_p == pytest.approx(sps.wilcoxon(diffs).pvalue)  # all worse: 0.125
        assert bool(r.underpowered) and not bool(r.significant)
        assert (r.k_worse, r.n_compared) == (int((diffs < 0).sum()), 4) and bool(r.sign_consistent)
        ci = sps.ttest_1samp(diffs, 0).confidence_interval(0.95)
        assert r.ci_method == "t" and (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
        assert bool(r.dz_flag) and "d_z not interpretable" in r.reason  # n = 4 < 5
        assert not bool(r.both_failed)


def test_twelve_subjects_with_a_planted_shift_are_not_underpowered():
    d = discrepancy_table(planted_table(12), ["dice"], n_boot=300).set_index("organ")
    assert not d["underpowered"].any() and d["significant"].all()
    assert (d["ci_method"] == "BCa bootstrap").all()
    assert ((d["ci_low"] < d["mean_diff"]) & (d["mean_diff"] < d["ci_high"])).all()
    assert (d["mean_diff"] - -0.3).abs().max() < 0.05  # noise sd 0.05 per subject, 12 subjects
    assert not d["dz_flag"].any() and (d["k_worse"] == 12).all()


def test_zero_differences_of_failures_in_both_views_are_flagged_not_called_no_difference():
    # liver: s1 differs, s2-s4 failed in both views (Dice 0 and missed): differences (x, 0, 0, 0)
    rows = [row("s1", "CT", "liver", 0.9), row("s1", "PET_CT", "liver", 0.5)]
    for s in ("s2", "s3", "s4"):
        rows += [row(s, "CT", "liver", 0.0), row(s, "PET_CT", "liver", 0.0, status="missed", hd95=500.0)]
    rows += [row(s, v, "spleen", 0.0, status="missed", hd95=500.0) for s in ("s1", "s2") for v in ("CT", "PET_CT")]
    d = discrepancy_table(pd.DataFrame(rows), ["dice"], n_boot=50).set_index("organ")
    liver, spleen = d.loc["liver"], d.loc["spleen"]
    assert (liver.n, liver.n_nonzero) == (4, 1)
    assert liver.p == pytest.approx(sps.wilcoxon([-0.4, 0, 0, 0]).pvalue) and liver.min_attainable_p == 1.0
    assert bool(liver.dz_flag) and not bool(liver.both_failed) and "both views failed in 3 of 4" in liver.reason
    assert not bool(liver.sign_consistent) and liver.k_worse == 1
    assert bool(spleen.both_failed) and spleen.mean_diff == 0.0 and np.isnan(spleen.p)
