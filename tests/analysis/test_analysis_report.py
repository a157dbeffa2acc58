"""`python -m umd_lightning.report` end to end: tables, figures and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from umd_lightning.analysis.demo import demo_results
from umd_lightning.analysis.discrepancy import discrepancy_table
from umd_lightning.analysis.report import write_report
from umd_lightning.report import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORGANS = ("liver", "spleen")


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])


def img_srcs(html_text: str) -> tuple[list[str], list[str]]:
    p = _Imgs()
    p.feed(html_text)
    return p.srcs, p.links


def tiny_case(folder: Path) -> dict[str, str]:
    """A 16^3 image with a box organ (id 4 = liver) as image, label and prediction NIfTI."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).normal(0, 1, (16, 16, 16)).astype(np.float32)
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:12, 5:11, 6:10] = 4
    pred = np.roll(lab, 1, axis=0)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = {}
    for name, arr in (("image", image), ("label", lab), ("prediction", pred)):
        paths[name] = str(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(arr, aff), paths[name])
    return paths


def write_table(folder: Path, model: str, fmt: str, seed: int, reported: dict, policy="worst", paths=None) -> Path:
    df, meta = demo_results(n_subjects=6, models=(model,), organs=ORGANS, seed=seed, empty_policy=policy)
    if paths:
        for k, v in paths.items():
            df[k] = v
    meta.update(model=model, reported_dice=reported)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    (folder / "results.meta.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    a = write_table(root / "run_a", "mA", "csv", 1, {"CT": 0.9}, paths=tiny_case(root / "nii"))
    b = write_table(root / "run_b", "mB", "parquet", 2, {"overall": 0.8})
    out = root / "out"
    rc = main([str(a), str(root / "run_b"), "--out", str(out), "--n-boot", "300", "--seed", "4",
               "--metrics", "dice", "hd95"])
    return {"rc": rc, "out": out, "a": a, "b": b}


def test_cli_writes_tables_for_all_models(cli_run):
    assert cli_run["rc"] == 0
    out = cli_run["out"]
    for name in ("discrepancy.csv", "view_summary.csv", "generalisation_gap.csv", "sensitivity.csv",
                 "selected_cases.csv", "analysis.meta.json", "report.html"):
        assert (out / name).is_file(), name
    disc = pd.read_csv(out / "discrepancy.csv")
    assert set(disc["model"]) == {"mA", "mB"}
    assert set(disc["metric"]) == {"dice", "hd95"}
    # the CLI's numbers are the library's numbers on the stacked tables
    both = pd.concat([pd.read_csv(cli_run["a"]), pd.read_parquet(cli_run["b"])])
    ref = discrepancy_table(both, ["dice", "hd95"], n_boot=300, seed=4)
    np.testing.assert_allclose(disc["mean_diff"], ref["mean_diff"])
    np.testing.assert_allclose(disc["ci_low"], ref["ci_low"])
    np.testing.assert_allclose(disc["p_holm"], ref["p_holm"])
    gap = pd.read_csv(out / "generalisation_gap.csv").fillna({"reported_key": ""}).set_index(["model", "view"])
    assert gap.loc[("mA", "CT"), "reported_dice"] == 0.9 and gap.loc[("mA", "CT"), "reported_key"] == "CT"
    assert gap.loc[("mA", "MRI"), "reported_key"] == ""  # mA reports CT only
    assert gap.loc[("mB", "PET_CT"), "reported_dice"] == 0.8  # each file's own meta


def test_cli_writes_the_figures(cli_run):
    fig_dir = cli_run["out"] / "figures"
    names = {p.stem for p in fig_dir.glob("*.png")}
    expected = {f"{k}_{m}_dice" for k in ("slope", "heatmap", "forest") for m in ("mA", "mB")}
    expected |= {f"forest_{m}_hd95" for m in ("mA", "mB")} | {"reported_vs_measured"}
    expected |= {f"overlay_mA_{v}" for v in ("CT", "PET_CT", "MRI", "PET_MRI")}  # mB has no NIfTI paths
    assert expected <= names
    for p in fig_dir.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC
        with Image.open(p) as im:  # print resolution
            assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01), p.name
    # every figure also as a vector SVG
    assert {p.stem for p in fig_dir.glob("*.svg")} == names
    svg = (fig_dir / "forest_mA_dice.svg").read_text()
    assert "<svg" in svg and "<image" not in svg  # a plot of lines and text: no raster inside


def test_forest_plots_of_one_metric_share_their_x_axis_across_models(cli_run):
    from umd_lightning.analysis.figures import forest_limits, main_figures

    out = cli_run["out"]
    disc = pd.read_csv(out / "discrepancy.csv")
    both = pd.concat([pd.read_csv(cli_run["a"]), pd.read_parquet(cli_run["b"])])
    figs = main_figures(both, disc, pd.DataFrame(), ("dice",))
    lims = [tuple(ax.get_xlim()) for m in ("mA", "mB") for ax in figs[f"forest_{m}_dice"].axes]
    assert len(set(lims)) == 1  # every panel of both models' figures
    vals = disc.loc[disc["metric"] == "dice", ["mean_diff", "ci_low", "ci_high"]].to_numpy(float)
    lo, hi = np.nanmin(np.r_[vals.ravel(), 0.0]), np.nanmax(np.r_[vals.ravel(), 0.0])
    assert lims[0] == pytest.approx((lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)))
    assert forest_limits(disc, "dice") == pytest.approx(lims[0])
    label = figs["forest_mA_dice"].axes[0].get_xlabel()
    assert "worse on PET_CT" in label.split("\n")[1].split("    ")[0]  # Dice: left of zero is worse
    hd = main_figures(both, disc, pd.DataFrame(), ("hd95",))["forest_mA_hd95"].axes[0].get_xlabel()
    assert "worse on PET_CT" in hd.split("\n")[1].split("    ")[1]  # HD95: right of zero is worse


def report_sections(text: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", text)


def test_report_is_self_contained_and_every_figure_resolves(cli_run):
    text = (cli_run["out"] / "report.html").read_text()
    srcs, links = img_srcs(text)
    stems = {p.stem for p in (cli_run["out"] / "figures").glob("*.png")}
    assert len(srcs) == len(stems) >= 13
    for src in srcs:
        kind, payload = src.split(",", 1)
        raw = base64.b64decode(payload, validate=True)
        if kind == "data:image/svg+xml;base64":  # the vector copy is embedded where there is one
            assert b"<svg" in raw[:2000]
            continue
        assert kind == "data:image/png;base64" and raw[:8] == PNG_MAGIC
        arr = mpimg.imread(io.BytesIO(raw), format="png")
        assert arr.ndim == 3 and arr.shape[0] > 50 and arr.shape[1] > 50
        assert float(arr[..., :3].std()) > 0.01  # not a blank image
    assert links == []  # no external stylesheet, script or link
    assert "mA" in text and "mB" in text and "CT_vs_PET_CT" in text
    assert re.search(r"empty-mask policy</th><td>worst", text)


def test_report_opens_with_the_headline_then_methods_and_caveats(cli_run):
    text = (cli_run["out"] / "report.html").read_text()
    sections = report_sections(text)
    assert sections[:3] == ["Headline", "Methods", "Caveats"]
    headline = text[text.index("<section id='headline'>"):text.index("</section>")]
    disc = pd.read_csv(cli_run["out"] / "discrepancy.csv")
    head_csv = cli_run["out"] / "headline.csv"
    if head_csv.is_file():  # the stats' own sentence, first the Dice one
        head = pd.read_csv(head_csv)
        first = head.loc[head["metric"] == "dice", "sentence"].iloc[0]
        assert html.escape(first) in headline
    else:  # fallback: the organ-averaged Dice difference of the first model's CT -> PET_CT pair
        d = disc[(disc["model"] == "mA") & (disc["metric"] == "dice") & (disc["pair_kind"] == "CT_vs_PET_CT")]
        m = d["mean_diff"].mean()
        assert html.escape(f"mA's Dice is {abs(m):.2f} {'lower' if m < 0 else 'higher'} than on CT") in headline
    caveats = text[text.index("<section id='caveats'>"):]
    caveats = caveats[:caveats.index("</section>")]
    assert "6 subjects" in caveats or "n=6" in caveats or "n = 6" in caveats
    assert "HD95" in caveats and "NSD" in caveats
    assert "synthetic" not in caveats  # the demo tables come with no run manifest saying so
    # readable headers, the raw name kept as a tooltip
    assert "<th title='mean_diff'>Mean difference (compared - reference)</th>" in text
    assert "<th title='p_holm'>p (Holm)</th>" in text


def test_report_says_when_the_data_is_the_synthetic_cohort(cli_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(cli_run["out"], folder)
    (folder / "run_manifest.json").write_text(json.dumps({"config": {"data": {"source": {"layout": "synthetic"}}}}))
    text = write_report(folder).read_text()
    caveats = text[text.index("<section id='caveats'>"):]
    assert "synthetic cohort, not patient data" in caveats[:caveats.index("</section>")]


def test_report_rerenders_with_figures_added_later(cli_run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(cli_run["out"], folder)
    n = len(img_srcs((folder / "report.html").read_text())[0])
    shutil.copy(folder / "figures" / "reported_vs_measured.png", folder / "figures" / "overlay_extra.png")
    text = write_report(folder).read_text()
    assert len(img_srcs(text)[0]) == n + 1 and "overlay_extra" in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage"]


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_with_every_figure_loaded(cli_run, tmp_path):
    html_text = (cli_run["out"] / "report.html").read_text()
    # A probe script (added to a copy only) records, at window load, how many <img> decoded.
    probe = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
             "document.body.setAttribute('data-loaded',i.filter(function(x){return x.complete&&x.naturalWidth>0})"
             ".length+'/'+i.length);});</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html_text.replace("</body>", probe))
    common = [_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'data-loaded="(\d+)/(\d+)"', dom.stdout)
    assert m, f"probe did not run; chromium stderr tail: {dom.stderr[-500:]}"
    assert m.group(1) == m.group(2) == str(len(list((cli_run["out"] / "figures").glob("*.png"))))
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,3000",
                    (cli_run["out"] / "report.html").as_uri()], capture_output=True, timeout=120)
    img = mpimg.imread(shot)
    assert img.shape[:2] == (3000, 1200)
    assert float(img[..., :3].std()) > 0.05  # rendered content, not a blank page


def test_cli_refuses_mixed_policies_duplicate_models_and_missing_files(tmp_path, capsys):
    a = write_table(tmp_path / "a", "m1", "csv", 1, {})
    b = write_table(tmp_path / "b", "m2", "csv", 2, {}, policy="exclude")
    c = write_table(tmp_path / "c", "m1", "csv", 3, {})
    assert main([str(a), str(b), "--out", str(tmp_path / "o1"), "--no-figures"]) == 2
    assert "different empty policies" in capsys.readouterr().err
    assert main([str(a), str(c), "--out", str(tmp_path / "o2"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "model 'm1' appears in both" in err and str(c) in err
    assert main([str(tmp_path / "none.csv"), "--out", str(tmp_path / "o3")]) == 2
    assert "none.csv does not exist" in capsys.readouterr().err


def test_cli_module_entry_point_runs(tmp_path):
    import sys

    a = write_table(tmp_path / "a", "m1", "csv", 1, {})
    res = subprocess.run([sys.executable, "-m", "umd_lightning.report", str(a), "--out", str(tmp_path / "o"),
                          "--no-figures", "--n-boot", "50"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    assert "On PET_CT, m1's Dice is" in res.stdout and (tmp_path / "o" / "report.html").is_file()
    assert (tmp_path / "o" / "headline.csv").is_file() and (tmp_path / "o" / "summary.json").is_file()


def test_a_table_written_by_the_results_contract_is_analysed_by_the_report_cli(tmp_path):
    from umd_lightning.results import read_results, write_results

    df, meta = demo_results(n_subjects=4, models=("w",), organs=ORGANS)
    write_results(df, meta, tmp_path / "run")
    got, got_meta = read_results(tmp_path / "run")
    assert got_meta["empty_policy"] == "worst"
    pd.testing.assert_series_equal(got["dice"], df["dice"].astype(float), check_names=False)
    assert main([str(tmp_path / "run" / "results.csv"), "--out", str(tmp_path / "o"), "--no-figures",
                 "--n-boot", "50"]) == 0
    assert len(pd.read_csv(tmp_path / "o" / "discrepancy.csv")) == 4 * len(ORGANS) * 3  # pairs x organs x metrics
