"""Paired statistics against hand-computed cases, scipy and statsmodels on fixed data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from umd_lightning.analysis.stats import (
    BCA_MIN_N,
    bca_interval,
    bootstrap_ci,
    cohens_dz,
    holm,
    holm_floor,
    mean_ci,
    min_attainable_p,
    paired_comparison,
    subjects_needed,
    t_interval,
    wilcoxon_p,
)

D = np.array([0.10, -0.30, 0.25, 0.40, -0.05, 0.20, 0.15, 0.33, -0.12])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_reproducible_from_its_seed():
    a = bootstrap_ci(D, n_boot=500, seed=7)
    b = bootstrap_ci(D, n_boot=500, seed=7)
    c = bootstrap_ci(D, n_boot=500, seed=8)
    assert a == b
    assert a[:2] != c[:2]


def test_bootstrap_matches_scipy_percentile_bootstrap_with_the_same_generator():
    # scipy draws the resamples with rng.integers(0, n, (n_resamples, n)) like we do, so the same
    # seed gives the same resamples and the same percentile interval.
    ref = sps.bootstrap((D,), np.mean, n_resamples=999, method="percentile", confidence_level=0.9,
                        rng=np.random.default_rng(3), vectorized=True).confidence_interval
    lo, hi, why = bootstrap_ci(D, n_boot=999, seed=3, level=0.9)
    assert why == ""
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)


def test_bootstrap_hand_case_two_values():
    # Resample means of [0, 1] (n=2) take only the values 0, 0.5, 1; with many resamples the 2.5th
    # and 97.5th percentiles are the extremes 0 and 1.
    lo, hi, _ = bootstrap_ci([0.0, 1.0], n_boot=4000, seed=0)
    assert (lo, hi) == (0.0, 1.0)


def test_bootstrap_undefined_below_two_values():
    lo, hi, why = bootstrap_ci([0.3, np.nan], n_boot=100)
    assert np.isnan(lo) and np.isnan(hi) and "n=1" in why


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(D, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(D, level=1.5)


# --------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_exact_hand_values():
    # n=5, all positive: W- = 0; P(W- <= 0) = 1/2^5, two-sided p = 2/32.
    assert wilcoxon_p([1, 2, 3, 4, 5])[0] == pytest.approx(0.0625)
    # n=6, one negative of rank 2: W- = 2; subsets of {1..6} with rank sum <= 2 are {}, {1}, {2}:
    # two-sided p = 2 * 3/64.
    assert wilcoxon_p([1, -2, 3, 4, 5, 6])[0] == pytest.approx(6 / 64)


def test_wilcoxon_matches_scipy_on_fixed_data():
    p, why = wilcoxon_p(D)
    assert why == ""
    assert p == pytest.approx(sps.wilcoxon(D, zero_method="wilcox").pvalue, rel=1e-12)
    big = np.random.default_rng(1).normal(-0.1, 0.2, size=80)  # normal approximation regime
    assert wilcoxon_p(big)[0] == pytest.approx(sps.wilcoxon(big, zero_method="wilcox").pvalue, rel=1e-12)


@pytest.mark.parametrize("values, reason", [([0.2], "n=1 < 2"), ([], "n=0 < 2"), ([0.0, 0.0, 0.0], "all differences are zero")])
def test_wilcoxon_undefined_cases_give_nan_and_a_reason(values, reason):
    p, why = wilcoxon_p(values)
    assert np.isnan(p)
    assert reason in why


# --------------------------------------------------------------------------- Holm


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan_out_of_m():
    # m = 2 finite values: 0.02*2 = 0.04, 0.5*1 = 0.5
    np.testing.assert_allclose(holm([np.nan, 0.02, 0.5]), [np.nan, 0.04, 0.5])
    # 0.4*2 = 0.8, 0.6*1 = 0.6 -> monotone 0.8
    np.testing.assert_allclose(holm([0.6, 0.4]), [0.8, 0.8])
    np.testing.assert_allclose(holm([0.7, 0.9]), [1.0, 1.0])
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,)


def test_holm_ties_keep_order_independent_values():
    np.testing.assert_allclose(holm([0.01, 0.01, 0.01]), [0.03, 0.03, 0.03])


# --------------------------------------------------------------------------- effect size


def test_cohens_dz_by_hand_and_nan_cases():
    assert cohens_dz([1.0, 2.0, 3.0])[0] == pytest.approx(2.0)  # mean 2, sd 1
    assert cohens_dz([-0.1, -0.3])[0] == pytest.approx(-0.2 / np.sqrt(0.02))
    v, why = cohens_dz([0.2, 0.2, 0.2])
    assert np.isnan(v) and "zero spread" in why
    v, why = cohens_dz([0.2])
    assert np.isnan(v) and "n=1" in why


# --------------------------------------------------------------------------- paired comparison


def test_paired_comparison_drops_incomplete_pairs_and_orients_cmp_minus_ref():
    ref = np.array([0.9, 0.8, np.nan, 0.7, 0.85])
    cmp = np.array([0.5, 0.6, 0.4, np.nan, 0.45])
    r = paired_comparison(ref, cmp, n_boot=200, seed=0)
    d = np.array([0.5 - 0.9, 0.6 - 0.8, 0.45 - 0.85])
    assert r.n == 3
    assert r.mean_ref == pytest.approx((0.9 + 0.8 + 0.85) / 3)
    assert r.mean_cmp == pytest.approx((0.5 + 0.6 + 0.45) / 3)
    assert r.mean_diff == pytest.approx(d.mean())
    assert r.p == pytest.approx(sps.wilcoxon(d).pvalue)
    assert r.effect_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert r.ci_low <= r.mean_diff <= r.ci_high


def test_paired_comparison_degenerate_cases_never_raise():
    r = paired_comparison([0.5], [0.4])
    assert r.n == 1 and np.isnan(r.p) and np.isnan(r.ci_low) and r.mean_diff == pytest.approx(-0.1)
    assert "n=1" in r.reason
    r = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert r.n == 3 and np.isnan(r.p) and np.isnan(r.effect_dz) and r.mean_diff == 0.0
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)  # every resample of zeros has mean 0
    assert "all differences are zero" in r.reason
    r = paired_comparison([], [])
    assert r.n == 0 and np.isnan(r.mean_diff)
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- small samples (issue 16)
SMALL_SAMPLES = [
    [-0.3, -0.1, 0.0, -0.2],  # a zero
    [-0.1, -0.1, -0.3, -0.4],  # a tie
    [0.2, 0.0, 0.0, 0.0],  # (x, 0, 0, 0): the test has n = 1
    [1.0, -1.0, 2.0, -2.0, 3.0],  # ties across signs
    [0.5, -0.25, 0.25, 0.75, -0.5, 1.0, 0.0, 0.25],
    list(np.arange(1, 14) * np.where(np.arange(13) % 4 == 0, -1, 1)),  # n = 13, no ties: scipy's exact law
    list(np.r_[np.arange(1, 12), 3, 0.0] * 0.1),  # n = 13 with a tie and a zero
    [0.1, -0.2, 0.3, 0.4, 0.1, 0.6, -0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4],  # n = 14 with a tie: scipy's path
]


@pytest.mark.parametrize("d", SMALL_SAMPLES)
def test_wilcoxon_equals_scipy_with_ties_zeros_and_both_paths(d):
    assert wilcoxon_p(d)[0] == pytest.approx(sps.wilcoxon(d, zero_method="wilcox").pvalue, rel=1e-12)


@pytest.mark.parametrize("n", range(1, 9))
def test_min_attainable_p_is_scipys_p_with_every_difference_on_one_side(n):
    d = -np.arange(1.0, n + 1)
    assert min_attainable_p(n) == pytest.approx(sps.wilcoxon(d).pvalue if n > 1 else 1.0, rel=1e-12)
    assert np.isnan(min_attainable_p(0))


@pytest.mark.parametrize("m", [1, 4, 13])
def test_subjects_needed_is_the_first_n_statsmodels_holm_lets_through(m):
    need = subjects_needed(m, 0.05)
    holm_best = [multipletests([min_attainable_p(n)] * m, method="holm")[1].min() for n in range(1, 20)]
    assert need == next(n for n, q in enumerate(holm_best, start=1) if q < 0.05)
    # the floor is the adjusted p statsmodels gives the family when every test reaches its smallest p
    np.testing.assert_allclose(holm_floor([min_attainable_p(need - 1)] * m), multipletests([min_attainable_p(need - 1)] * m, method="holm")[1])
    assert (holm_floor([min_attainable_p(need - 1)] * m) >= 0.05).all()


def test_holm_floor_with_unequal_tests_bounds_statsmodels_holm_from_below():
    rng = np.random.default_rng(0)
    mins = np.array([0.125, 0.0625, 0.03125, np.nan])
    floor = holm_floor(mins)
    for _ in range(200):  # any raw p at or above each test's minimum
        p = mins + rng.uniform(0, 0.5, size=4)
        adj = holm(p)
        assert (adj[:3] >= floor[:3] - 1e-15).all()
    assert np.isnan(floor[3])
    np.testing.assert_allclose(multipletests(mins[:3], method="holm")[1].min(), floor[:3].min())


def test_holm_equals_statsmodels_and_keeps_nan_out():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.2, np.nan])
    ok = np.isfinite(p)
    got = holm(p)
    np.testing.assert_allclose(got[ok], multipletests(p[ok], method="holm")[1])
    assert np.isnan(got[~ok]).all()


def test_t_interval_equals_scipys_one_sample_t_interval():
    ref = sps.ttest_1samp(D, 0.0).confidence_interval(0.9)
    lo, hi, why = t_interval(D, 0.9)
    assert why == "" and lo == pytest.approx(ref.low) and hi == pytest.approx(ref.high)
    assert np.isnan(t_interval([0.1])[0])


def test_mean_ci_is_t_below_ten_and_scipys_bca_from_ten():
    lo, hi, method, _ = mean_ci(D, n_boot=500, seed=3)
    assert method == "t" and (lo, hi) == pytest.approx(t_interval(D)[:2])
    x = np.random.default_rng(2).normal(-0.2, 0.1, BCA_MIN_N + 2)
    lo, hi, method, _ = mean_ci(x, n_boot=500, seed=3)
    ref = sps.bootstrap((x,), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert method == "BCa bootstrap" and lo == pytest.approx(ref.low) and hi == pytest.approx(ref.high)
    assert bca_interval([0.2] * 12, n_boot=50) == (0.2, 0.2, "")  # scipy's BCa is undefined there


def test_paired_comparison_counts_the_tests_real_n():
    r = paired_comparison([0.5, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0], n_boot=100)
    assert (r.n, r.n_nonzero, r.n_negative, r.n_positive) == (4, 1, 1, 0)
    assert r.min_attainable_p == 1.0 and r.p == pytest.approx(sps.wilcoxon([-0.2, 0, 0, 0]).pvalue)
    assert r.ci_method == "t"
    assert paired_comparison([0.5, 0.6], [0.4, 0.3], n_boot=0).ci_method == ""
