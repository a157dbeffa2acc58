"""SAT (text-prompted universal segmentation): a clear error until its code can be installed.

SAT (Zhao et al., arXiv 2312.17183; zhaoziheng/SAT) is not a Python package: its model code, its
text encoder and the SAT-Pro/SAT-Nano checkpoints come from its repository and model cards. The
adapter checks for that code and for the local checkpoints, and says exactly what is missing; no
inference path is wired yet because the code cannot be installed or tested here.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping

from umd_lightning.models.adapter import MissingExtraError
from umd_lightning.models.foundation import FoundationAdapter, require_path

__all__ = ["SATAdapter"]

_INSTALL = (
    "SAT is not on PyPI: clone its repository (zhaoziheng/SAT), install its requirements, put the clone on "
    "PYTHONPATH (so that `import model.build_model` works), and download SAT-Pro or SAT-Nano with its text "
    "encoder checkpoint to local files"
)


class SATAdapter(FoundationAdapter):
    """SAT with text prompts (``labelmaps/sat_text.yaml``).

    Args:
        checkpoint: local SAT segmentation checkpoint.
        text_encoder: local SAT text-encoder checkpoint.
        name: name in results tables.
        label_map: text prompts -> organ names.
        reported_dice: Dice its paper reports.

    Raises:
        MissingExtraError: SAT's code is not importable (the message says how to install it).
        NotImplementedError: the code and checkpoints are there but inference is not wired yet.
    """

    def __init__(
        self,
        checkpoint: str,
        text_encoder: str,
        name: str = "sat",
        label_map: str = "sat_text",
        reported_dice: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("model") is None or importlib.util.find_spec("model.build_model") is None:
            raise MissingExtraError(f"SAT needs its model code, which is not importable. {_INSTALL}.")
        require_path(checkpoint, "SAT checkpoint")
        require_path(text_encoder, "SAT text-encoder checkpoint")
        super().__init__(name, prompt_kind="text", reported_dice=reported_dice, label_map=label_map, **kwargs)
        raise NotImplementedError(
            "SAT: code and checkpoints found, but umd_lightning does not wire SAT's inference yet "
            "(it could not be tested without the package); use SegVol for text prompts meanwhile"
        )
