"""The transfer matrix: which training views make a model hold up on which test views.

Reads the run folders of a fine-tuning sweep (``python -m umd_lightning --config-name
transfer_matrix``): each holds ``run_manifest.json`` (the resolved config: recipe, ``k_shot``,
initialisation) and its results table. Writes one row per train recipe x k_shot x test view: the
mean over test subjects of the case's mean Dice over organs, a bootstrap CI over subjects, and the
paired difference to a reference recipe (default: CT-only at the same k_shot) with its CI.

Usage::

    python -m umd_lightning.analysis.transfer SWEEP_DIR_OR_RUN_DIRS... [--out DIR] [--reference finetune_ct]

Writes ``transfer_matrix.csv`` and ``transfer_matrix.png`` (heatmap: recipe x view, CIs in the cells).
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..organs import VIEWS
from ..results import normalise, read_results
from .stats import bootstrap_ci

#: Recipe order of rows (others follow alphabetically).
RECIPE_ORDER: tuple[str, ...] = ("finetune_ct", "finetune_mri", "finetune_pet", "finetune_all", "finetune_paired")
RESULT_NAMES: tuple[str, ...] = ("results.parquet", "results.csv")
MANIFEST_NAME = "run_manifest.json"


@dataclass(frozen=True)
class RunInfo:
    """What one run folder trained: its recipe, k_shot and initialisation, from ``run_manifest.json``."""

    path: Path
    recipe: str
    k_shot: str
    init: str
    train_views: tuple[str, ...]

    @property
    def label(self) -> str:
        init = "" if self.init == "scratch" else f", {self.init}"
        return f"{self.recipe} (k={self.k_shot}{init})"


def _select(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def k_shot_label(value: Any) -> str:
    """``1`` -> ``"1"``; ``None`` / ``"all"`` -> ``"all"``."""
    if value is None or (isinstance(value, str) and value.lower() in ("all", "none", "null", "")):
        return "all"
    return str(int(value))


def run_info(run_dir: str | Path) -> RunInfo:
    """Recipe, k_shot and initialisation of one run folder.

    Raises:
        FileNotFoundError: the folder holds no ``run_manifest.json``.
    """
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {MANIFEST_NAME} (not a run folder of umd_lightning)")
    cfg = json.loads(path.read_text()).get("config", {})
    parts = []
    for key in ("model.checkpoint", "module.init_checkpoint"):
        ckpt = _select(cfg, key)
        if ckpt:
            parts.append(Path(str(ckpt)).stem)
    freeze = _select(cfg, "module.freeze") or []
    if freeze:
        parts.append("frozen " + "+".join(str(f) for f in freeze))
    return RunInfo(
        path=run_dir,
        recipe=str(_select(cfg, "task_name", run_dir.name)),
        k_shot=k_shot_label(_select(cfg, "data.k_shot")),
        init=", ".join(parts) or "scratch",
        train_views=tuple(_select(cfg, "data.train_views", []) or []),
    )


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (``run_manifest.json`` beside a results table) at or below ``paths``, sorted.

    Raises:
        FileNotFoundError: a path does not exist, or nothing below it is a finished run.
    """
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder")
        candidates = [path] if (path / MANIFEST_NAME).is_file() else sorted(p.parent for p in path.rglob(MANIFEST_NAME))
        runs = [c for c in candidates if any((c / n).is_file() for n in RESULT_NAMES)]
        if not runs:
            raise FileNotFoundError(f"{path}: no finished run below it ({MANIFEST_NAME} beside a results table)")
        found += [r for r in runs if r not in found]
    return found


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All results rows of the runs below ``paths``, with ``recipe``, ``k_shot``, ``init`` and ``run`` columns.

    Raises:
        ValueError: two runs claim the same recipe, k_shot and initialisation (a sweep read twice?).
    """
    frames, seen = [], {}
    for run_dir in find_runs(paths):
        info = run_info(run_dir)
        key = (info.recipe, info.k_shot, info.init)
        if key in seen:
            raise ValueError(f"{run_dir} and {seen[key]} are both {info.label}: pass one of them")
        seen[key] = run_dir
        df, _ = read_results(run_dir)
        df = normalise(df).assign(
            recipe=info.recipe, k_shot=info.k_shot, init=info.init, run=str(run_dir),
            train_views="+".join(info.train_views),
        )
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _seed(seed: int, *key: str) -> list[int]:
    return [seed, *(zlib.crc32(k.encode()) for k in key)]


def subject_scores(rows: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per recipe x k_shot x init x view x subject: the mean of ``metric`` over the case's organs.

    Failed cases are left out (and counted by :func:`transfer_matrix`); organs without a value
    (both masks empty under the ``exclude`` policy) do not count.
    """
    ok = rows[(rows["status"] != "failed") & rows[metric].notna()]
    keys = ["recipe", "k_shot", "init", "view", "subject_id"]
    return ok.groupby(keys, sort=False)[metric].mean().rename("score").reset_index()


def _recipe_rank(recipe: str) -> tuple[int, str]:
    return (RECIPE_ORDER.index(recipe) if recipe in RECIPE_ORDER else len(RECIPE_ORDER), recipe)


def _k_rank(k: str) -> float:
    return float("inf") if k == "all" else float(k)


def transfer_matrix(
    rows: pd.DataFrame,
    *,
    metric: str = "dice",
    reference: str | None = "finetune_ct",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """The train-recipe x test-view table.

    Args:
        rows: results rows with ``recipe``, ``k_shot``, ``init`` columns (:func:`load_runs`).
        metric: metric column.
        reference: recipe the others are compared with, paired by subject, at the same k_shot and
            initialisation; None = no comparison.
        n_boot: bootstrap resamples (over test subjects).
        seed: bootstrap seed; each cell draws from ``(seed, its key)``, so cells are reproducible alone.
        level: confidence level.

    Returns:
        One row per recipe x k_shot x init x view: ``mean``, ``ci_low``, ``ci_high``, ``n_subjects``,
        ``n_failed_cases``, and ``delta``, ``delta_ci_low``, ``delta_ci_high``, ``n_pairs`` against
        ``reference`` (NaN where there is none, and for the reference itself).
    """
    scores = subject_scores(rows, metric)
    failed = (
        rows[rows["status"] == "failed"].groupby(["recipe", "k_shot", "init", "view"])["case_id"].nunique()
    )
    combos = rows[["recipe", "k_shot", "init", "view", "train_views"]].drop_duplicates()
    out = []
    for combo in combos.itertuples(index=False):
        key = (combo.recipe, combo.k_shot, combo.init, combo.view)
        own = scores[
            (scores.recipe == combo.recipe) & (scores.k_shot == combo.k_shot) & (scores.init == combo.init)
            & (scores.view == combo.view)
        ].set_index("subject_id")["score"]
        lo, hi, _ = bootstrap_ci(own.to_numpy(), n_boot=n_boot, seed=_seed(seed, *key), level=level)
        row = {
            "recipe": combo.recipe, "k_shot": combo.k_shot, "init": combo.init, "train_views": combo.train_views,
            "view": combo.view, "metric": metric, "mean": float(own.mean()) if len(own) else float("nan"),
            "ci_low": lo, "ci_high": hi, "n_subjects": int(len(own)), "n_failed_cases": int(failed.get(key, 0)),
            "reference": None, "delta": float("nan"), "delta_ci_low": float("nan"), "delta_ci_high": float("nan"),
            "n_pairs": 0,
        }
        if reference is not None and combo.recipe != reference:
            ref = scores[
                (scores.recipe == reference) & (scores.k_shot == combo.k_shot) & (scores.init == combo.init)
                & (scores.view == combo.view)
            ].set_index("subject_id")["score"]
            both = own.index.intersection(ref.index)
            if len(both):
                diff = (own[both] - ref[both]).to_numpy()
                dlo, dhi, _ = bootstrap_ci(diff, n_boot=n_boot, seed=_seed(seed, "delta", *key), level=level)
                row.update(reference=reference, delta=float(diff.mean()), delta_ci_low=dlo, delta_ci_high=dhi,
                           n_pairs=int(len(both)))
        out.append(row)
    table = pd.DataFrame(out)
    if table.empty:
        return table
    view_rank = {v: i for i, v in enumerate(VIEWS)}
    order = table.assign(
        _r=table.recipe.map(_recipe_rank), _k=table.k_shot.map(_k_rank), _v=table.view.map(lambda v: view_rank.get(v, 99))
    ).sort_values(["_r", "_k", "init", "_v"], kind="stable")
    return order.drop(columns=["_r", "_k", "_v"]).reset_index(drop=True)


def wide_matrix(table: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """Rows = ``recipe (k=..)``, columns = views (in :data:`~umd_lightning.organs.VIEWS` order)."""
    labels = table.apply(
        lambda r: RunInfo(Path("."), r.recipe, r.k_shot, r.init, ()).label, axis=1
    )
    wide = table.assign(train=labels).pivot(index="train", columns="view", values=value)
    rows = list(dict.fromkeys(labels))
    return wide.reindex(index=rows, columns=[v for v in VIEWS if v in wide.columns])


def heatmap(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Recipe x view heatmap of the mean with its CI written in each cell."""
    means = wide_matrix(table, "mean")
    lows, highs = wide_matrix(table, "ci_low"), wide_matrix(table, "ci_high")
    metric = str(table["metric"].iloc[0]) if len(table) else "dice"
    metric = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95 (mm)", "assd": "ASSD (mm)"}.get(metric, metric)
    fig = Figure(figsize=(1.9 * means.shape[1] + 3.2, 0.55 * means.shape[0] + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(means.to_numpy(dtype=float), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(means.shape[1]), means.columns)
    ax.set_yticks(range(means.shape[0]), means.index)
    ax.set_xlabel("test view")
    ax.set_ylabel("train recipe")
    for i in range(means.shape[0]):
        for j in range(means.shape[1]):
            m, lo, hi = means.iat[i, j], lows.iat[i, j], highs.iat[i, j]
            if not np.isfinite(m):
                continue
            text = f"{m:.2f}" + (f"\n[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if m < 0.6 else "black")
    fig.colorbar(image, ax=ax, label=f"mean {metric} over test subjects")
    ax.set_title(title or f"Transfer matrix: mean {metric} (95% bootstrap CI over subjects)")
    return fig


def write_transfer_matrix(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    metric: str = "dice",
    reference: str | None = "finetune_ct",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Read the runs below ``paths`` and write ``transfer_matrix.csv`` and ``transfer_matrix.png``.

    Returns:
        The table (:func:`transfer_matrix`) and ``{"csv": ..., "png": ...}``.
    """
    table = transfer_matrix(load_runs(paths), metric=metric, reference=reference, n_boot=n_boot, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "transfer_matrix.csv"
    table.to_csv(csv, index=False)
    png = out_dir / "transfer_matrix.png"
    heatmap(table).savefig(png, dpi=120)
    return table, {"csv": csv, "png": png}


def format_matrix(table: pd.DataFrame) -> str:
    """Plain-text matrix: ``mean [low, high]`` per recipe x view."""
    means, lows, highs = (wide_matrix(table, v) for v in ("mean", "ci_low", "ci_high"))
    cells = means.copy().astype(object)
    for i in range(means.shape[0]):
        for j in range(means.shape[1]):
            m, lo, hi = means.iat[i, j], lows.iat[i, j], highs.iat[i, j]
            cells.iat[i, j] = "-" if not np.isfinite(m) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
    return cells.to_string()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m umd_lightning.analysis.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="a sweep folder, or run folders")
    p.add_argument("--out", default=None, help="output folder (default: the first path)")
    p.add_argument("--metric", default="dice")
    p.add_argument("--reference", default="finetune_ct", help="recipe compared against ('none' for none)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    reference = None if args.reference.lower() == "none" else args.reference
    try:
        table, written = write_transfer_matrix(
            args.paths, args.out or args.paths[0], metric=args.metric, reference=reference, n_boot=args.n_boot,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"transfer: error: {exc}", file=sys.stderr)
        return 2
    print(format_matrix(table))
    if reference is not None:
        deltas = table.dropna(subset=["delta"])
        for r in deltas.itertuples(index=False):
            print(f"{r.recipe} (k={r.k_shot}) - {reference} on {r.view}: {r.delta:+.3f} [{r.delta_ci_low:+.3f}, {r.delta_ci_high:+.3f}]")
    print(f"wrote {written['csv']} and {written['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
