"""Write the built-in cohort anywhere: ``python -m umd_lightning.data.synthetic OUT``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from umd_lightning.data.synthetic.cohort import generate_cohort
from umd_lightning.data.synthetic.config import CohortConfig


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m umd_lightning.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-subjects", type=int, default=CohortConfig.n_subjects)
    parser.add_argument("--seed", type=int, default=CohortConfig.seed)
    parser.add_argument("--scale", type=float, default=CohortConfig.scale)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    config = CohortConfig(n_subjects=args.n_subjects, seed=args.seed, scale=args.scale)
    start = time.perf_counter()
    manifest = generate_cohort(args.out_dir, config, workers=args.workers)
    print(manifest)
    print(f"{config.n_subjects} subjects in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return manifest
