"""notebooks/analysis.ipynb executes (nbclient) on a small results table and draws the main figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umd_lightning.analysis.demo import demo_results

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def test_notebook_reproduces_the_main_figures_from_a_results_table(tmp_path, monkeypatch):
    df, meta = demo_results(n_subjects=5, models=("nb_model",), organs=("liver", "aorta"), seed=3)
    df.to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "results.meta.json").write_text(json.dumps(meta))
    # the kernel is a child process: it inherits these (and finds the package from the checkout)
    monkeypatch.setenv("UMD_RESULTS", str(tmp_path / "results.csv"))
    monkeypatch.setenv("UMD_N_BOOT", "200")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as a user starts it; the notebook picks inline

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"results table {tmp_path / 'results.csv'}: {len(df)} rows" in text
    assert "models: nb_model" in text
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    # slope plot, heatmap and Dice forest plot for the one model, plus reported vs measured
    assert len(pngs) == 4
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("CT_vs_PET_CT" in t and "liver" in t for t in tables)
