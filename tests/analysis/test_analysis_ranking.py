"""Models side by side: ranks, bootstrap rank stability, pairwise Wilcoxon + Holm, rank change CT -> PET."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from umd_lightning.analysis.demo import demo_results
from umd_lightning.analysis.ranking import rank_scores, ranking_tables

# CT: a > b > c clearly; PET_CT: c > b > a (the model best on CT is worst on PET)
LEVELS = {"a": {"CT": 0.90, "PET_CT": 0.40}, "b": {"CT": 0.80, "PET_CT": 0.50}, "c": {"CT": 0.70, "PET_CT": 0.60}}


def three_models(n_subjects: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, levels in LEVELS.items():
        for s in range(n_subjects):
            for view, level in levels.items():
                for i, organ in enumerate(("liver", "spleen")):
                    rows.append({"model": model, "subject_id": f"s{s}", "view": view, "case_id": f"s{s}_{view}",
                                 "organ": organ, "label_id": i + 4, "dice": level + rng.normal(0, 0.02), "status": "ok"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def ranked():
    df = three_models()
    rank, pairs = ranking_tables(df, ["dice"], n_boot=500, seed=2)
    return df, rank.set_index(["view", "model"]), pairs


def test_ranks_follow_the_means_and_the_change_from_ct_to_pet(ranked):
    df, rank, _ = ranked
    for view in ("CT", "PET_CT"):
        means = {m: df[(df.model == m) & (df.view == view)].groupby("organ")["dice"].mean().mean() for m in LEVELS}
        for m, v in means.items():
            assert rank.loc[(view, m), "mean"] == pytest.approx(v)
        order = sorted(means, key=means.get, reverse=True)
        assert [rank.loc[(view, m), "rank"] for m in order] == [1.0, 2.0, 3.0]
    assert rank.loc[("CT", "a"), "rank_change_vs_ref"] == 0.0
    assert rank.loc[("PET_CT", "a"), "rank_change_vs_ref"] == 2.0  # first on CT, last on PET
    assert rank.loc[("PET_CT", "c"), "rank_change_vs_ref"] == -2.0


def test_clear_gaps_give_stable_ranks(ranked):
    _, rank, _ = ranked
    assert rank.loc[("CT", "a"), "p_first"] == 1.0 and rank.loc[("CT", "b"), "p_first"] == 0.0
    assert (rank["rank_ci_low"] == rank["rank"]).all() and (rank["rank_ci_high"] == rank["rank"]).all()
    assert np.isclose(rank.groupby(level="view")["p_first"].sum(), 1.0).all()


def test_pairwise_p_values_are_scipys_wilcoxon_with_statsmodels_holm(ranked):
    df, _, pairs = ranked
    ct = pairs[pairs.view == "CT"].reset_index(drop=True)
    assert list(zip(ct.model_a, ct.model_b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    subject_avg = df[df.view == "CT"].groupby(["model", "subject_id"])["dice"].mean()
    expected = [sps.wilcoxon(subject_avg[a].to_numpy() - subject_avg[b].to_numpy()).pvalue for a, b in zip(ct.model_a, ct.model_b)]
    np.testing.assert_allclose(ct["p"], expected, rtol=1e-12)
    np.testing.assert_allclose(ct["p_holm"], multipletests(expected, method="holm")[1], rtol=1e-12)
    assert list(ct["better"]) == ["a", "a", "b"]
    assert ct["significant"].all() and not ct["underpowered"].any()  # 8 subjects: 3 * 2/2^8 < 0.05


def test_bootstrap_rank_interval_widens_when_models_are_close():
    df = three_models(n_subjects=6)
    df.loc[df.model == "b", "dice"] = df.loc[df.model == "a", "dice"].to_numpy() + np.random.default_rng(1).normal(0, 0.05, (df.model == "a").sum())
    rank, _ = ranking_tables(df, ["dice"], n_boot=500, seed=0)
    ct = rank[rank.view == "CT"].set_index("model")
    assert ct.loc["a", "rank_ci_high"] - ct.loc["a", "rank_ci_low"] >= 1.0
    assert 0.0 < ct.loc["a", "p_first"] < 1.0 and ct.loc["a", "p_first"] + ct.loc["b", "p_first"] == pytest.approx(1.0)


def test_one_model_ranks_first_everywhere_with_no_pairs():
    df, _ = demo_results(n_subjects=4)
    rank, pairs = ranking_tables(df, ["dice", "hd95"], n_boot=100)
    assert len(rank) == 8 and (rank["rank"] == 1).all() and (rank["p_first"] == 1).all()
    assert (rank["rank_change_vs_ref"] == 0).all() and pairs.empty


def test_rank_scores_direction_ties_and_missing():
    assert rank_scores(np.array([0.7, 0.9, 0.7])).tolist() == [2.0, 1.0, 2.0]
    assert rank_scores(np.array([10.0, 5.0, np.nan]), higher_is_better=False).tolist() == [2.0, 1.0, 3.0]
