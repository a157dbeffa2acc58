"""The entry point's exit status: 1 after everything is written when a case failed, as ``evaluate``."""

from __future__ import annotations

import pandas as pd
import pytest

from umd_lightning.__main__ import _exit_if_cases_failed


def _table(statuses: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"case_id": [f"c{i // 2}" for i in range(len(statuses))], "status": statuses})


def test_a_failed_case_exits_1_with_one_line(capsys):
    with pytest.raises(SystemExit) as done:
        _exit_if_cases_failed({"results": _table(["ok", "ok", "failed", "failed", "failed", "ok"])})
    assert done.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["umd_lightning: 2 case(s) failed (rows with status 'failed' in the results table)"]


@pytest.mark.parametrize("result", [{"results": _table(["ok", "missed", "not_predicted"])}, {"results": None}, {}])
def test_no_failed_case_exits_0(result, capsys):
    _exit_if_cases_failed(result)  # returns: Hydra then exits 0
    assert capsys.readouterr().err == ""
