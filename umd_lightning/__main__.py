"""Hydra entry point: ``python -m umd_lightning +experiment=zero_shot_pet``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from umd_lightning.config import config_dir


def _user_errors() -> tuple[type[BaseException], ...]:
    from umd_lightning.data.manifest import ManifestError
    from umd_lightning.data.splits import SplitError
    from umd_lightning.models.adapter import CheckpointError, MissingExtraError

    return (ManifestError, SplitError, CheckpointError, MissingExtraError, FileNotFoundError)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from umd_lightning.lit.run import run

    try:
        run(cfg)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, _user_errors()):
            _fail(cause)
        raise
    except _user_errors() as exc:
        _fail(exc)


def _fail(exc: BaseException) -> None:
    print(f"umd_lightning: error: {exc}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
