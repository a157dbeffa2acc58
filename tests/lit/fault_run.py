"""The main job (``python -m umd_lightning``'s entry) with a fault injected: used by test_faults.py.

    python tests/lit/fault_run.py POINT [hydra overrides ...]

POINT is where the process kills itself with SIGKILL (kill -9: no handler, no cleanup runs):
``case:0`` as the first case starts (nothing journaled), ``case:N`` right after the N-th case is
journaled, ``analysis`` after the analysis tables are written and before its figures, metadata and
report; ``none`` runs undisturbed.
"""

from __future__ import annotations

import os
import signal
import sys


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject(point: str) -> None:
    import umd_lightning.analysis.report as report
    import umd_lightning.lit.module as module

    if point == "none":
        return
    if point == "analysis":
        report.write_figures = lambda *args, **kwargs: _kill()
        return
    kind, _, n = point.partition(":")
    if kind != "case" or not n.isdigit():
        raise SystemExit(f"unknown fault point {point!r}")
    n = int(n)
    if n == 0:
        module.SegmentationModule._predict_case = lambda self, batch: _kill()
        return
    journaled = []
    write_case = module.write_case

    def write_then_kill(*args, **kwargs):
        path = write_case(*args, **kwargs)
        journaled.append(path)
        if len(journaled) == n:
            _kill()
        return path

    module.write_case = write_then_kill


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    from umd_lightning.__main__ import main

    main()
