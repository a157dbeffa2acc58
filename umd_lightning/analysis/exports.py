"""The results table in the layouts other tools read: challengeR's long table and nnU-Net's ``summary.json``.

challengeR (``as.challenge(data, by="task", algorithm="alg_name", case="case", value="value",
smallBetter=FALSE)``) reads one row per case x task x algorithm; here a task is an organ seen in one
view (``"liver|PET_CT"``) and a case is a subject (repeat cases of a view are averaged). Rows whose
reference and prediction are both empty (``both_empty``) are no case of that task and are left out;
rows without a value (not predicted, failed, one-sided empty under ``exclude``) stay, with an empty
value, for challengeR's ``na.treatment`` to decide.

nnU-Net's ``summary.json`` (``nnunetv2.evaluation.evaluate_predictions``) holds, per case and label,
Dice, IoU and the voxel counts TP, FP, FN, ``n_pred``, ``n_ref``, then the mean per label and the
foreground mean. The results table stores Dice and both voxel counts, which fix the confusion counts:
``Dice = 2 TP / (n_pred + n_ref)``, so ``TP = Dice (n_pred + n_ref) / 2``, ``FP = n_pred - TP`` and
``FN = n_ref - TP``. TN needs the grid's voxel count, which the table does not hold, so it is left
out. As nnU-Net does, Dice and IoU are NaN (``null``) when both masks are empty, and means skip NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..results import normalise, validate_results
from .discrepancy import DEFAULT_METRICS, with_path_columns

CHALLENGER_COLUMNS: tuple[str, ...] = ("case", "task", "alg_name", "metric", "value")
#: Per-label keys of a ``summary.json`` entry, in nnU-Net's order (less TN).
SUMMARY_KEYS: tuple[str, ...] = ("Dice", "IoU", "FN", "FP", "TP", "n_pred", "n_ref")


def challenger_table(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """The long table challengeR's ``as.challenge`` reads: ``case, task, alg_name, metric, value``.

    Args:
        df: results table.
        metrics: metric columns (one block of rows each; filter on ``metric`` for one challenge).

    Returns:
        One row per subject x organ|view x model x metric.
    """
    df = normalise(validate_results(df))
    df = df[df["status"] != "both_empty"]
    frames = []
    for metric in [m for m in metrics if m in df.columns]:
        g = df.groupby(["subject_id", "organ", "view", "model"], sort=False)[metric].mean().reset_index()
        frames.append(pd.DataFrame({"case": g["subject_id"], "task": g["organ"] + "|" + g["view"],
                                    "alg_name": g["model"], "metric": metric, "value": g[metric]}))
    if not frames:
        return pd.DataFrame(columns=list(CHALLENGER_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(CHALLENGER_COLUMNS)]


def confusion_counts(dice: np.ndarray, n_pred: np.ndarray, n_ref: np.ndarray) -> dict[str, np.ndarray]:
    """TP, FP, FN, IoU and Dice per row from Dice and the two voxel counts (see the module docstring).

    TP is rounded to a whole voxel count; with one mask empty TP is 0 whatever Dice says (a table
    scored under the ``exclude`` policy holds NaN there). Dice and IoU are NaN when both are empty.

    Example:
        >>> c = confusion_counts(np.array([0.8]), np.array([10.0]), np.array([15.0]))
        >>> [float(c[k][0]) for k in ("TP", "FP", "FN", "IoU")]
        [10.0, 0.0, 5.0, 0.6666666666666666]
    """
    dice = np.asarray(dice, np.float64)
    n_pred = np.asarray(n_pred, np.float64)
    n_ref = np.asarray(n_ref, np.float64)
    one_empty = (n_pred == 0) | (n_ref == 0)
    tp = np.where(one_empty, 0.0, np.rint(dice * (n_pred + n_ref) / 2.0))
    fp, fn = n_pred - tp, n_ref - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice_out = np.where(union > 0, 2.0 * tp / (n_pred + n_ref), np.nan)
    return {"Dice": dice_out, "IoU": iou, "FN": fn, "FP": fp, "TP": tp, "n_pred": n_pred, "n_ref": n_ref}


def _num(x: float) -> float | int | None:
    if x is None or not math.isfinite(float(x)):
        return None
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _means(per_label: Mapping[int, Mapping[str, list[float]]]) -> dict[str, dict[str, float | None]]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a label with only NaN: null
        for label, vals in per_label.items():
            out[str(label)] = {k: _num(float(np.nanmean(v))) if len(v) else None for k, v in vals.items()}
    return out


def nnunet_summary(df: pd.DataFrame) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` of one model's cases: ``metric_per_case``, ``mean``, ``foreground_mean``.

    Each case entry names its ``prediction_file`` and ``reference_file`` (from the table's path
    columns; empty when the table has none) and, per label id, the keys :data:`SUMMARY_KEYS`. ``mean``
    is the NaN-skipping mean per label over cases, ``foreground_mean`` the mean of those over labels.
    Beside nnU-Net's keys, each case says its ``case_id``, ``subject_id`` and ``view``, and
    ``mean_per_view`` holds the label means of each view (a mean over CT and PET cases together says
    little). Rows without voxel counts (not predicted, failed) are left out.

    Args:
        df: results table of one model (with ``pred_voxels`` and ``ref_voxels``).

    Returns:
        A JSON-ready dict (NaN as ``None``).

    Raises:
        ValueError: if the voxel-count columns are missing.
    """
    missing = [c for c in ("pred_voxels", "ref_voxels", "label_id") if c not in df.columns]
    if missing:
        raise ValueError(f"nnU-Net summary: the results table has no {missing} columns")
    df = with_path_columns(normalise(df))
    counts = confusion_counts(df["dice"].to_numpy(np.float64), pd.to_numeric(df["pred_voxels"], errors="coerce").to_numpy(np.float64),
                              pd.to_numeric(df["ref_voxels"], errors="coerce").to_numpy(np.float64))
    ok = np.isfinite(counts["n_pred"]) & np.isfinite(counts["n_ref"]) & ~df["status"].isin(["failed", "not_predicted"]).to_numpy()
    cases: list[dict[str, Any]] = []
    pooled: dict[int, dict[str, list[float]]] = {}
    per_view: dict[str, dict[int, dict[str, list[float]]]] = {}
    labels = pd.to_numeric(df["label_id"], errors="coerce").to_numpy()
    pred_files = df["prediction"] if "prediction" in df.columns else pd.Series("", index=df.index)
    ref_files = df["label"] if "label" in df.columns else pd.Series("", index=df.index)
    for case_id, rows in df.groupby("case_id", sort=False).indices.items():
        rows = [r for r in rows if ok[r] and np.isfinite(labels[r])]
        if not rows:
            continue
        first = rows[0]
        view = str(df["view"].iloc[first])
        metrics: dict[str, dict[str, Any]] = {}
        for r in sorted(rows, key=lambda r: labels[r]):
            label = int(labels[r])
            entry = {k: _num(counts[k][r]) for k in SUMMARY_KEYS}
            metrics[str(label)] = entry
            for bucket in (pooled, per_view.setdefault(view, {})):
                vals = bucket.setdefault(label, {k: [] for k in SUMMARY_KEYS})
                for k in SUMMARY_KEYS:
                    vals[k].append(float(counts[k][r]))
        cases.append({"prediction_file": str(pred_files.iloc[first] or ""), "reference_file": str(ref_files.iloc[first] or ""),
                      "case_id": str(case_id), "subject_id": str(df["subject_id"].iloc[first]), "view": view,
                      "metrics": metrics})
    mean = _means(dict(sorted(pooled.items())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fg = {k: _num(float(np.nanmean([m[k] if m[k] is not None else np.nan for m in mean.values()])))
              if mean else None for k in SUMMARY_KEYS}
    return {"foreground_mean": fg, "mean": mean, "metric_per_case": cases,
            "mean_per_view": {v: _means(dict(sorted(b.items()))) for v, b in per_view.items()}}


def summary_json(df: pd.DataFrame) -> dict[str, Any]:
    """``summary.json`` of a results table: :func:`nnunet_summary` itself for one model, else
    ``{"models": {model: nnunet_summary}}`` (nnU-Net's layout holds one model's predictions);
    ``{}`` when the table has no voxel counts."""
    if not {"pred_voxels", "ref_voxels", "label_id"} <= set(df.columns):
        return {}
    df = normalise(validate_results(df))
    models = list(pd.unique(df["model"]))
    if len(models) == 1:
        return nnunet_summary(df)
    return {"models": {m: nnunet_summary(df[df["model"] == m]) for m in models}}
