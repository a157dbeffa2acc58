"""The study's vocabulary as code: organ sets, views, sessions, pair kinds and label maps.

This module depends on nothing else in the package; every other stage imports its words from here.
Label maps (a model's or dataset's vocabulary -> organ names) are YAML files in ``labelmaps/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import yaml

View = Literal["CT", "PET_CT", "MRI", "PET_MRI"]
Session = Literal["petct", "petmri"]

VIEWS: tuple[str, ...] = ("CT", "PET_CT", "MRI", "PET_MRI")
SESSIONS: tuple[str, ...] = ("petct", "petmri")
#: The two views each session holds: (anatomical, functional).
SESSION_VIEWS: dict[str, tuple[str, str]] = {"petct": ("CT", "PET_CT"), "petmri": ("MRI", "PET_MRI")}
VIEW_SESSION: dict[str, str] = {v: s for s, views in SESSION_VIEWS.items() for v in views}
PET_VIEWS: tuple[str, ...] = ("PET_CT", "PET_MRI")
ANATOMICAL_VIEWS: tuple[str, ...] = ("CT", "MRI")

#: Each pair kind is one discrepancy axis: (reference view, compared view).
PAIR_KINDS: dict[str, tuple[str, str]] = {
    "CT_vs_PET_CT": ("CT", "PET_CT"),
    "MRI_vs_PET_MRI": ("MRI", "PET_MRI"),
    "CT_vs_MRI": ("CT", "MRI"),
    "PET_CT_vs_PET_MRI": ("PET_CT", "PET_MRI"),
}


def is_pet(view: str) -> bool:
    """True for the functional views."""
    check_view(view)
    return view in PET_VIEWS


def anatomical_view(view: str) -> str:
    """The structural view of the session ``view`` belongs to (``PET_CT`` -> ``CT``)."""
    return SESSION_VIEWS[VIEW_SESSION[check_view(view)]][0]


def pet_view(view: str) -> str:
    """The PET view of the session ``view`` belongs to (``MRI`` -> ``PET_MRI``)."""
    return SESSION_VIEWS[VIEW_SESSION[check_view(view)]][1]


def check_view(view: str) -> str:
    """Return ``view`` or raise a ValueError that lists the valid views."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    return view


@dataclass(frozen=True)
class OrganSet:
    """Target structures by label id. Id 0 is background and never listed.

    Args:
        name: short name, e.g. ``umd13``.
        labels: ``{label_id: organ_name}`` with ids 1..N.
    """

    name: str
    labels: Mapping[int, str]

    def __post_init__(self) -> None:
        ids = sorted(self.labels)
        if 0 in self.labels:
            raise ValueError(f"organ set {self.name!r}: label id 0 is background, not an organ")
        if len(set(self.labels.values())) != len(ids):
            raise ValueError(f"organ set {self.name!r}: organ names must be unique")

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(self.labels[i] for i in sorted(self.labels))

    @property
    def ids(self) -> dict[str, int]:
        return {name: i for i, name in self.labels.items()}

    @property
    def num_classes(self) -> int:
        """Output channels a network needs: background plus the largest id."""
        return max(self.labels) + 1

    @property
    def label_dtype(self) -> np.dtype:
        """The dtype label maps of this set are held in: :func:`label_dtype` of the largest id."""
        return label_dtype(max(self.labels))


def label_dtype(max_label: int) -> np.dtype:
    """The smallest integer dtype that holds label ids 0..``max_label``: uint8 up to 255, an eighth
    of int64's bytes (a clinical label grid of 75 M voxels: 75 MB instead of 600 MB).

    Example:
        >>> label_dtype(13), label_dtype(300)
        (dtype('uint8'), dtype('int16'))
    """
    return np.dtype(np.uint8 if max_label <= 255 else np.int16 if max_label <= 32767 else np.int32)


UMD13 = OrganSet(
    "umd13",
    {
        1: "brain",
        2: "heart",
        3: "lung",
        4: "liver",
        5: "spleen",
        6: "kidney_left",
        7: "kidney_right",
        8: "pancreas",
        9: "stomach",
        10: "esophagus",
        11: "aorta",
        12: "colon",
        13: "urinary_bladder",
    },
)

_ORGAN_SETS: dict[str, OrganSet] = {UMD13.name: UMD13}


def get_organ_set(name_or_labels: str | Mapping[int, str] | OrganSet = "umd13") -> OrganSet:
    """An organ set by name (``umd13``), or built from an explicit ``{id: name}`` mapping."""
    if isinstance(name_or_labels, OrganSet):
        return name_or_labels
    if isinstance(name_or_labels, str):
        if name_or_labels not in _ORGAN_SETS:
            raise ValueError(f"unknown organ set {name_or_labels!r}; known: {', '.join(_ORGAN_SETS)}")
        return _ORGAN_SETS[name_or_labels]
    labels = {int(k): str(v) for k, v in dict(name_or_labels).items()}
    return OrganSet("custom", labels)


# --------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelMap:
    """A vocabulary (integer ids or text names) mapped onto organ names.

    Several source ids may map to one organ (lung lobes -> ``lung``); ids absent from ``mapping``
    map to background.
    """

    name: str
    source: str
    mapping: Mapping[int | str, str]

    def organs_covered(self, organ_set: OrganSet) -> tuple[str, ...]:
        """Organs of ``organ_set`` this vocabulary can name; the rest are 'not predicted'."""
        named = set(self.mapping.values())
        return tuple(o for o in organ_set.organs if o in named)

    def lookup_table(self, organ_set: OrganSet) -> np.ndarray:
        """A vector ``lut`` with ``lut[source_id] = organ_set id`` (0 for unmapped ids)."""
        int_keys = [k for k in self.mapping if isinstance(k, int)]
        if not int_keys:
            raise ValueError(f"label map {self.name!r} maps text names, not integer ids")
        ids = organ_set.ids
        lut = np.zeros(max(int_keys) + 1, dtype=np.int16)
        for src, organ in self.mapping.items():
            if organ in ids:
                lut[int(src)] = ids[organ]
        return lut

    def apply(self, labels: np.ndarray, organ_set: OrganSet) -> np.ndarray:
        """Map an integer label array in this vocabulary onto ``organ_set`` ids (uint8 or int16)."""
        lut = self.lookup_table(organ_set)
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0):
            raise ValueError(f"label map {self.name!r}: negative label ids in the input")
        out_dtype = organ_set.label_dtype
        if labels.size and labels.max() >= lut.size:
            lut = np.concatenate([lut, np.zeros(int(labels.max()) + 1 - lut.size, dtype=lut.dtype)])
        return lut[labels.astype(np.int64, copy=False)].astype(out_dtype)


def _labelmap_dir() -> Path:
    return Path(str(resources.files("umd_lightning") / "labelmaps"))


def available_label_maps() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in _labelmap_dir().glob("*.yaml")))


@lru_cache(maxsize=None)
def load_label_map(name_or_path: str) -> LabelMap:
    """Load a label map by name (a file in ``umd_lightning/labelmaps``) or from a YAML path.

    The file holds ``name``, ``source`` (where the vocabulary comes from) and ``mapping``
    (``source id or text: organ name``).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = _labelmap_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"label map {name_or_path!r} not found ({path}); known: {', '.join(available_label_maps())}"
        )
    data = yaml.safe_load(path.read_text())
    mapping: dict[int | str, str] = {}
    for key, organ in data["mapping"].items():
        mapping[int(key) if isinstance(key, int) or str(key).isdigit() else str(key)] = str(organ)
    return LabelMap(name=data.get("name", path.stem), source=data.get("source", ""), mapping=mapping)
