"""Subject-level splits (a subject is never in two splits) and few-shot training subsets per view."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """A split is impossible or leaks subjects between splits."""


def split_subjects(
    subjects: Iterable[str],
    *,
    n_test: int | float = 0.34,
    n_val: int | float = 0,
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Assign each subject to exactly one of train / val / test.

    Args:
        subjects: subject ids (duplicates are ignored).
        n_test: test subjects, as a count (int) or a fraction (float < 1) of the subjects.
        n_val: validation subjects, likewise.
        seed: the shuffle's seed.
        fixed: ``{subject: split}`` given by the data (a manifest's ``split`` column); those subjects
            keep their split and the rest are shuffled into the remaining slots.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        SplitError: counts exceed the subjects, or a fixed split name is unknown.
    """
    pool = sorted(set(subjects))
    fixed = dict(fixed or {})
    bad = {s: v for s, v in fixed.items() if v not in SPLITS}
    if bad:
        raise SplitError(f"unknown split name(s) {sorted(set(bad.values()))}; expected {', '.join(SPLITS)}")
    out: dict[str, list[str]] = {name: [s for s in pool if fixed.get(s) == name] for name in SPLITS}
    free = [s for s in pool if s not in fixed]
    n = len(pool)

    def count(value: int | float) -> int:
        return int(round(value * n)) if isinstance(value, float) and value < 1 else int(value)

    want_test = max(0, count(n_test) - len(out["test"]))
    want_val = max(0, count(n_val) - len(out["val"]))
    if want_test + want_val > len(free):
        raise SplitError(f"cannot take {want_test} test + {want_val} val subjects from {len(free)} unassigned")
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
    out["test"] += order[:want_test]
    out["val"] += order[want_test : want_test + want_val]
    out["train"] += order[want_test + want_val :]
    result = {name: sorted(v) for name, v in out.items()}
    assert_no_leakage(result)
    return result


def assert_no_leakage(splits: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`SplitError` if any subject appears in two splits."""
    seen: dict[str, str] = {}
    for name, subjects in splits.items():
        for s in subjects:
            if s in seen and seen[s] != name:
                raise SplitError(f"subject {s!r} is in both {seen[s]!r} and {name!r}")
            seen[s] = name


def few_shot(
    train_subjects: Sequence[str], views: Sequence[str], k: int | None, *, seed: int = 0, shared: bool = True
) -> dict[str, list[str]]:
    """``k`` training subjects per view (None/0 = all).

    ``shared`` (the paired design): one seeded draw for every view, so the anatomical scan and its
    PET come from the same k subjects (the consistency loss needs both of one session), and every
    recipe that trains a view at a given k trains it on the same subjects: between recipes only the
    views change. ``shared=False`` draws each view apart, seeded by the view's name (not its place in
    the list), so a view still gets the same subjects in every recipe.

    The draw for k is a prefix of the draw for k+1, so larger k only ever adds subjects.
    """
    subjects = sorted(train_subjects)
    out = {}
    for view in views:
        stream = [seed] if shared else [seed, zlib.crc32(str(view).encode())]
        order = [subjects[j] for j in np.random.default_rng(stream).permutation(len(subjects))]
        out[view] = sorted(order if not k else order[: int(k)])
    return out


def write_split_file(path: str | Path, splits: Mapping[str, Sequence[str]], few_shot_views: Mapping | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"splits": {k: list(v) for k, v in splits.items()}}
    if few_shot_views is not None:
        payload["train_subjects_per_view"] = {k: list(v) for k, v in few_shot_views.items()}
    path.write_text(json.dumps(payload, indent=2))
    return path


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: split file not found")
    splits = json.loads(path.read_text())["splits"]
    assert_no_leakage(splits)
    return {name: list(splits.get(name, [])) for name in SPLITS}
