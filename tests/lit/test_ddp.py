"""DDP as two CPU processes (gloo, ddp_spawn): sharded evaluation gathers the same table as one
process, each case evaluated once, a broken case recorded as failed; a short DDP fit of the paired
recipe evaluates like its checkpoint does in one process."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from umd_lightning.lit.run import run
from umd_lightning.results import read_results as read_results_table

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

FAST = ["analysis=none", "trainer.enable_progress_bar=false"]
#: Columns that name the run folder, not the result.
RUN_SPECIFIC = ("prediction",)


class CaseRecorder(L.Callback):
    """Appends each test case id to ``<folder>/rank<r>.txt``: which rank evaluated what."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        with open(Path(self.folder) / f"rank{trainer.global_rank}.txt", "a") as fh:
            fh.write(f"{batch['case_id'][0]}\n")


def _recorder(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [f"+callbacks.recorder._target_={__name__}.CaseRecorder", f"+callbacks.recorder.folder={folder}"]


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    table = table.drop(columns=[c for c in RUN_SPECIFIC if c in table.columns])
    return table.sort_values(["case_id", "organ"], kind="stable").reset_index(drop=True)


def _table(run_dir: Path) -> pd.DataFrame:
    return read_results_table(run_dir / "results.parquet")[0]


def test_ddp_evaluation_shards_cases_and_gathers_the_single_process_table(compose_cfg, tiny_cohort, tmp_path):
    # A copy of the tiny cohort whose test subject's MRI cannot be read.
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort.parent, cohort)
    base = ["+experiment=zero_shot_pet", "data=manifest", f"data.root={cohort / tiny_cohort.name}", "data.splits.n_test=1", *FAST]
    probe = compose_cfg(*base)
    from hydra.utils import instantiate

    dm = instantiate(probe.data)
    dm.setup("test")
    (subject,) = dm.splits["test"]
    broken = next(r for r in dm.manifest if r.subject_id == subject and r.view == "MRI")
    broken.image.write_bytes(b"not a NIfTI file")

    single = run(compose_cfg(*base, f"paths.output_dir={tmp_path / 'single'}"))
    ddp_out = tmp_path / "ddp"
    ddp = run(compose_cfg(*base, "trainer=ddp_cpu", f"paths.output_dir={ddp_out}", *_recorder(tmp_path / "ranks")))

    evaluated = {f"{subject}_{v}" for v in ("CT", "PET_CT", "PET_MRI")}
    per_rank = [(tmp_path / "ranks" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    # rank r took records[r::2] of the three readable cases: two and one, no case twice
    assert sorted(len(cases) for cases in per_rank) == [1, 2]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(evaluated)

    table = _table(ddp_out)
    pd.testing.assert_frame_equal(_comparable(table), _comparable(_table(tmp_path / "single")))
    pd.testing.assert_frame_equal(_comparable(ddp["results"]), _comparable(single["results"]))
    assert table.groupby(["case_id", "organ"]).size().max() == 1
    failed = table[table.status == "failed"]
    assert set(failed.case_id) == {broken.case_id} and failed.error.str.contains(broken.image.name).all()
    assert set(table[table.status != "failed"].case_id) == evaluated
    assert {p.stem for p in (ddp_out / "cases").glob("*.json")} == evaluated


def test_short_ddp_fit_then_test_equals_one_process_evaluation(compose_cfg, tmp_path):
    fit = [
        "+experiment=finetune_paired", "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=1",
        "data.eval_views=[CT,PET_CT]", *FAST,
    ]
    ddp_out = tmp_path / "ddp"
    ddp = run(compose_cfg(*fit, "trainer=ddp_cpu", f"paths.output_dir={ddp_out}"))
    ckpt = ddp_out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (ddp_out / "splits.json").is_file() and (ddp_out / "run_manifest.json").is_file()
    import torch

    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 2

    single = run(compose_cfg(*fit, "train=false", f"model.checkpoint={ckpt}", f"paths.output_dir={tmp_path / 'single'}"))
    pd.testing.assert_frame_equal(_comparable(ddp["results"]), _comparable(single["results"]))
    assert set(ddp["results"].view) == {"CT", "PET_CT"} and (ddp["results"].status != "failed").all()
