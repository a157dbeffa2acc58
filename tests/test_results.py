"""The results contract: one table, read back the same from CSV and Parquet, metadata from one place,
and a journal that is checked before it is trusted."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from umd_lightning import results
from umd_lightning.results import (
    JournalError,
    read_case,
    read_journal,
    read_results,
    sidecar_path,
    validate_results,
    write_case,
    write_results,
)


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": ["NA", "001"],
            "view": ["CT", "CT"],
            "case_id": ["NA_CT", "001_CT"],
            "model": ["m", "m"],
            "organ": ["liver", "liver"],
            "label_id": [4, 4],
            "status": ["ok", "failed"],
            "dice": [0.9, math.nan],
            "pred_voxels": [10, 0],
            "error": ["", "case 001_CT: unreadable"],
            "oracle": [False, False],
        }
    )


def test_text_stays_text_and_both_files_read_the_same(tmp_path):
    meta = {"empty_policy": "worst", "note": math.nan, "spacing": np.float32(2.0)}
    paths = write_results(table(), meta, tmp_path / "run")
    assert sorted(p.name for p in paths.values()) == ["results.csv", "results.meta.json", "results.parquet"]
    on_disk = json.loads(paths["meta"].read_text())
    assert on_disk == {"empty_policy": "worst", "note": None, "spacing": 2.0}
    got = {}
    for source in (tmp_path / "run", paths["csv"], paths["parquet"], paths["meta"]):
        got[source], got_meta = read_results(source)
        assert got_meta == on_disk
    for df in got.values():
        # a subject named "NA" stays "NA", a case id "001" stays text, an empty error cell stays ""
        assert df["subject_id"].tolist() == ["NA", "001"] and df["error"].tolist() == ["", "case 001_CT: unreadable"]
        pd.testing.assert_frame_equal(df, got[paths["parquet"]], check_dtype=False)
    pd.testing.assert_frame_equal(got[paths["csv"]], results.normalise(results.order_columns(table())), check_dtype=False)


def test_metadata_comes_from_the_file_the_table_comes_from(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = write_results(table(), {"empty_policy": "worst"}, tmp_path)
    paths["meta"].write_text('{"empty_policy": "exclude"}')  # an edited sidecar
    assert read_results(paths["parquet"])[1] == {"empty_policy": "worst"}  # the Parquet file's own
    assert read_results(tmp_path)[1] == {"empty_policy": "worst"}  # a folder reads its Parquet file
    assert read_results(paths["csv"])[1] == {"empty_policy": "exclude"}  # a CSV file has its sidecar
    # a Parquet file written elsewhere, without embedded metadata: its sidecar
    pq.write_table(pa.Table.from_pandas(table(), preserve_index=False), tmp_path / "other.parquet")
    sidecar_path(tmp_path / "other.parquet").write_text('{"empty_policy": "exclude"}')
    assert read_results(tmp_path / "other.parquet")[1] == {"empty_policy": "exclude"}
    assert sidecar_path(tmp_path / "a.results.parquet").name == "a.results.meta.json"


def test_missing_and_broken_tables_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results table"):
        read_results(tmp_path / "nowhere")
    (tmp_path / "results.csv").write_text("")
    with pytest.raises(ValueError, match="results.csv: cannot read"):
        read_results(tmp_path)
    with pytest.raises(ValueError, match=r"t: missing columns \['organ'\]"):
        validate_results(table().drop(columns=["organ"]), "t")
    with pytest.raises(ValueError, match="unknown status"):
        validate_results(table().assign(status="fine"), "t")


def test_columns_come_in_contract_order():
    df = results.table_from_rows([{"dice": 1.0, "extra": 1, "organ": "liver", "case_id": "c", "status": "ok"}])
    assert list(df.columns) == ["case_id", "organ", "status", "dice", "extra"]


def rows(case_id: str, organs=("liver", "spleen")) -> list[dict]:
    return [{"case_id": case_id, "organ": o, "status": "ok", "dice": 1.0} for o in organs]


def test_journal_round_trip_and_checks(tmp_path):
    path = write_case(tmp_path, "c1", rows("c1"))
    assert path == tmp_path / "cases" / "c1.json"
    assert read_case(path, ["liver", "spleen"]) == rows("c1")
    assert not list((tmp_path / "cases").glob(".*"))  # no temporary file left behind
    with pytest.raises(ValueError, match="another case"):
        write_case(tmp_path, "c2", rows("c1"))

    write_case(tmp_path, "c2", rows("c2"))
    (tmp_path / "cases" / "c2.json").write_text((tmp_path / "cases" / "c2.json").read_text()[:40])  # cut short
    write_case(tmp_path, "c3", rows("c3", organs=("liver",)))  # a case short of an organ
    payload = json.loads((tmp_path / "cases" / "c1.json").read_text())
    (tmp_path / "cases" / "c4.json").write_text(json.dumps({**payload, "case_id": "c4", "rows": rows("c4")[:1]}))
    (tmp_path / "cases" / "c5.json").write_text(json.dumps(rows("c5")))  # the layout before the format tag
    with pytest.raises(JournalError, match=r"c2.json: not a readable case file \(JSONDecodeError"):
        read_case(tmp_path / "cases" / "c2.json")

    good, problems = read_journal(tmp_path, organs=["liver", "spleen"])
    assert sorted(good) == ["c1", "c5"]
    assert len(problems) == 3
    assert "c2.json: not a readable case file" in problems[0] and "set aside as" in problems[0]
    assert "c3.json: partial case (organs missing: spleen" in problems[1]
    assert "c4.json: partial case (1 of 2 rows)" in problems[2]
    aside = sorted(p.name.split(".json")[0] for p in (tmp_path / "cases" / "set_aside").iterdir())
    assert aside == ["c2", "c3", "c4"]  # moved, not deleted
    assert results.journaled_cases(tmp_path) == {"c1", "c5"}
