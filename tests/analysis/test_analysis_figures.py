"""The figures' palettes and the reported-vs-measured figure's refusal to draw nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from skimage.color import deltaE_ciede2000, rgb2lab

from umd_lightning.analysis.figures import ORGAN_COLOR, VIEW_COLOR, organ_colors, reported_vs_measured
from umd_lightning.organs import VIEWS, get_organ_set


def lab(color: str) -> np.ndarray:
    return rgb2lab(np.array([[to_rgb(color)]]))[0, 0]


def test_every_umd13_organ_has_its_own_clearly_different_colour():
    organs = get_organ_set("umd13").organs
    assert set(ORGAN_COLOR) == set(organs)
    # CIE76 distance (the palette's criterion) and CIEDE2000 (perceptual), both from scikit-image
    for (a, ca), (b, cb) in itertools.combinations(ORGAN_COLOR.items(), 2):
        assert np.linalg.norm(lab(ca) - lab(cb)) > 25, (a, b)
        assert deltaE_ciede2000(lab(ca), lab(cb)) > 12, (a, b)
    # the pairs tab20 made look alike
    for a, b in (("heart", "lung"), ("liver", "spleen"), ("kidney_left", "kidney_right")):
        assert deltaE_ciede2000(lab(ORGAN_COLOR[a]), lab(ORGAN_COLOR[b])) > 20, (a, b)


def test_organs_outside_umd13_get_spare_colours_and_umd13_ones_keep_theirs():
    got = organ_colors({1: "liver", 2: "tumour", 3: "lesion"})
    assert got[1] == ORGAN_COLOR["liver"]
    assert len({got[2], got[3], got[1]}) == 3 and got[2] not in ORGAN_COLOR.values()


def test_one_distinct_colour_per_view():
    assert list(VIEW_COLOR) == list(VIEWS)
    for a, b in itertools.combinations(VIEW_COLOR.values(), 2):
        assert deltaE_ciede2000(lab(a), lab(b)) > 20


def test_reported_vs_measured_draws_only_reported_pairs():
    gap = pd.DataFrame({"model": ["m", "m", "n"], "view": ["CT", "PET_CT", "CT"],
                        "measured_dice": [0.8, 0.1, 0.7], "reported_dice": [0.9, np.nan, np.nan]})
    fig = reported_vs_measured(gap)
    bars = [p for p in fig.axes[0].patches]
    assert [round(b.get_height(), 3) for b in bars] == [0.8]  # m on CT only
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["m"]
    assert reported_vs_measured(gap.assign(reported_dice=np.nan)) is None
