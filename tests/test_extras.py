"""Optional packages: every one that is missing says which extra installs it, through one helper."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from umd_lightning.data.dicom import DicomError, read_enhanced
from umd_lightning.extras import MissingExtraError, require_extra

REPO = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
CALL = re.compile(r"""require_extra\(\s*["']([\w.]+)["']\s*,\s*["'](\w+)["']""")


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "medim", None)  # what Python does for a package that is not installed
    with pytest.raises(MissingExtraError, match=r"^SAM-Med3D needs the package 'medim', which is not installed .*"
                       r"install the extra: pip install 'umd_lightning\[sam_med3d\]'$"):
        require_extra("medim", "sam_med3d", needed_by="SAM-Med3D")
    assert require_extra("json", "none").dumps([]) == "[]"


def test_every_optional_import_names_an_extra_that_installs_it():
    """Each require_extra call in the package names an extra of pyproject.toml that lists the package."""
    sources = [p for p in (REPO / "umd_lightning").rglob("*.py") if p.name != "extras.py"]  # its doctest imports json
    calls = {(m, e) for p in sources for m, e in CALL.findall(p.read_text())}
    assert {m.split(".")[0] for m, _ in calls} >= {"highdicom", "medim", "torchio", "nnunetv2", "totalsegmentator",
                                                   "nnInteractive", "skimage", "transformers"}
    distribution = {"skimage": "scikit-image", "nnInteractive": "nninteractive", "totalsegmentator": "TotalSegmentator"}
    for module, extra in calls:
        assert extra in EXTRAS, f"require_extra({module!r}, {extra!r}): no such extra in pyproject.toml"
        name = distribution.get(module.split(".")[0], module.split(".")[0])
        listed = [re.split(r"[<>=!\[ ;]", req)[0] for req in EXTRAS[extra]]
        assert name in listed, f"extra {extra} ({listed}) does not install {name} (needed for {module})"


def test_dicom_without_highdicom_fails_the_series_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(DicomError, match=r"x\.dcm: reading DICOM SEG and multi-frame images needs the package "
                       r"'highdicom'.*pip install 'umd_lightning\[dicom\]'"):
        read_enhanced(tmp_path / "x.dcm")


def test_convert_prints_the_extra_in_full(monkeypatch, tmp_path, capsys):
    """The CLI line keeps the brackets of 'umd_lightning[dicom]' (they are not rich markup)."""
    hd = pytest.importorskip("highdicom")
    import pydicom

    from umd_lightning import convert as convert_cli

    files = sorted((Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N").iterdir())
    hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(str(f)) for f in files], series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1,
    ).save_as(tmp_path / "enhanced.dcm")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    assert convert_cli.main([str(tmp_path / "enhanced.dcm"), str(tmp_path / "out")]) == 2  # nothing converted
    err = capsys.readouterr().err.replace("\n", "")
    assert "install the extra: pip install 'umd_lightning[dicom]'" in err
