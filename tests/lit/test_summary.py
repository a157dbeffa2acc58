"""The console summary: hand-computed means, one line per organ even when stdout is a file."""

from __future__ import annotations

import pandas as pd

from umd_lightning.lit.run import print_summary
from umd_lightning.organs import VIEWS


def test_summary_means_by_hand_and_no_wrapping_in_a_log(capsys):
    rows = []
    for i, view in enumerate(VIEWS):
        for subject, dice in (("s0", 0.5), ("s1", 0.25)):
            rows.append(dict(view=view, organ="urinary_bladder", subject_id=subject, status="ok",
                             dice=dice + i / 10, hd95=100.0 * (i + 1) + (subject == "s1"), case_id=f"{subject}_{view}"))
    rows.append(dict(view="CT", organ="brain", subject_id="s2", status="failed", dice=float("nan"), hd95=float("nan"),
                     case_id="s2_CT"))
    print_summary(pd.DataFrame(rows))
    out, err = capsys.readouterr()
    [bladder] = [line for line in out.splitlines() if "urinary_bladder" in line]
    # mean of (0.5 + i/10, 0.25 + i/10) and of (100 (i+1), 100 (i+1) + 1) per view, all on one line
    assert [c.strip() for c in bladder.split("│")[2:6]] == ["0.375 / 100.5", "0.475 / 200.5", "0.575 / 300.5",
                                                           "0.675 / 400.5"]
    assert "brain" not in out and "1 case(s) failed" in err and "s2_CT" in err
