"""A small synthetic results table with a known PET penalty, for demos, the notebook and tests.

No images are involved: the rows look like what ``metrics/table.py`` writes, with Dice drawn around
a per-view level so the direction of every discrepancy is known in advance.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..organs import UMD13, VIEW_SESSION

#: Mean Dice per view used by :func:`demo_results` (PET clearly worse than its anatomical view).
DEMO_VIEW_DICE: dict[str, float] = {"CT": 0.85, "PET_CT": 0.55, "MRI": 0.75, "PET_MRI": 0.5}


def demo_results(
    n_subjects: int = 8,
    models: Sequence[str] = ("demo_model",),
    organs: Sequence[str] = ("liver", "spleen", "kidney_left", "aorta"),
    view_dice: Mapping[str, float] = DEMO_VIEW_DICE,
    seed: int = 0,
    empty_policy: str = "worst",
    missed_every: int = 5,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A results table (one row per case x organ) and its metadata.

    Every ``missed_every``-th PET row is a missed organ (scored by ``empty_policy``) and the last
    subject's ``PET_MRI`` lacks the last organ in its reference (``both_empty``), so all statuses
    that analysis counts appear.

    Args:
        n_subjects: subjects, each with all four views.
        models: model names; model k gets a Dice offset of ``-0.05 * k``.
        organs: organ names from ``organs.UMD13``.
        view_dice: mean Dice per view.
        seed: numpy seed.
        empty_policy: ``worst`` (missed rows Dice 0, HD95 = diagonal) or ``exclude`` (NaN).
        missed_every: period of missed PET rows (0 for none).

    Returns:
        ``(table, meta)`` following the results-table contract (paths are empty strings).
    """
    rng = np.random.default_rng(seed)
    ids = UMD13.ids
    diagonal = 900.0
    rows = []
    k_row = 0
    for mi, model in enumerate(models):
        for s in range(n_subjects):
            subject = f"sub-{s:03d}"
            for view, level in view_dice.items():
                for organ in organs:
                    k_row += 1
                    dice = float(np.clip(level - 0.05 * mi + rng.normal(0, 0.06), 0.0, 1.0))
                    status = "ok"
                    if view.startswith("PET") and missed_every and k_row % missed_every == 0:
                        status = "missed"
                    if view == "PET_MRI" and s == n_subjects - 1 and organ == organs[-1]:
                        status = "both_empty"
                    ref_ml = float(rng.uniform(50, 1500))
                    if status == "ok":
                        hd95 = float(2.0 + 40.0 * (1.0 - dice) + rng.uniform(0, 2))
                        nsd = float(np.clip(dice + rng.normal(0.05, 0.03), 0.0, 1.0))
                        pred_ml = ref_ml * float(rng.uniform(0.8, 1.2))
                    elif status == "missed":
                        worst = empty_policy == "worst"
                        dice, nsd = (0.0, 0.0) if worst else (np.nan, np.nan)
                        hd95 = diagonal if worst else np.nan
                        pred_ml = 0.0
                    else:
                        dice = nsd = hd95 = np.nan
                        pred_ml = ref_ml = 0.0
                    rows.append({
                        "model": model, "subject_id": subject, "session": VIEW_SESSION[view], "view": view,
                        "case_id": f"{subject}_{view}", "organ": organ, "label_id": ids[organ],
                        "dice": dice, "hd95": hd95, "nsd": nsd,
                        "assd": hd95 / 3.0 if np.isfinite(hd95) else np.nan,
                        "pred_voxels": int(pred_ml * 1000), "ref_voxels": int(ref_ml * 1000),
                        "pred_volume_ml": pred_ml, "ref_volume_ml": ref_ml, "status": status,
                        "prompt_kind": "none", "oracle": False, "image": "", "label": "", "prediction": "",
                    })
    meta = {
        "empty_policy": empty_policy,
        "hd_definition": "max_directed_p95",
        "nsd_tolerance_mm": 2.0,
        "organ_set": "umd13",
        "reported_dice": {m: {"CT": 0.9, "overall": 0.88} for m in models},
    }
    return pd.DataFrame(rows), meta
