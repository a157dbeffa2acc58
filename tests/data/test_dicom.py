"""DICOM -> NIfTI: geometry against nibabel's per-slice DICOM affine, SUV against hand-computed factors,
errors that name the missing tag, real files shipped with pydicom, DICOM SEG through highdicom."""

from __future__ import annotations

import csv
import datetime as dt
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from umd_lightning import convert as convert_cli
from umd_lightning.data.dicom import (
    DicomError,
    convert_dicom,
    find_series,
    read_enhanced,
    read_series,
    suv_factors,
)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
F18_HALF_LIFE_S = 6586.2  # 109.77 min

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    modality: str = "CT",
    spacing=(0.8, 0.9, 2.5),
    row_cos=(1.0, 0.0, 0.0),
    col_cos=(0.0, 1.0, 0.0),
    origin=(-10.0, -20.0, 30.0),
    slopes=None,
    intercept: float = 0.0,
    extra: dict | None = None,
    seed: int = 0,
    study_uid: str | None = None,
    patient: str = "P1",
) -> list[Path]:
    """Write ``stored`` (X=columns, Y=rows, Z=slices) as single-frame DICOM files in shuffled file order.

    Slice k sits at origin + k * spacing[2] * (row_cos x col_cos); ``spacing`` is (column step, row step, slice).
    """
    folder.mkdir(parents=True, exist_ok=True)
    row_cos, col_cos = np.array(row_cos, float), np.array(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    series_uid, study_uid, frame_uid = generate_uid(), study_uid or generate_uid(), generate_uid()
    sop_class = {"CT": CT_STORAGE, "PT": PET_STORAGE, "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    nz = stored.shape[2]
    names = list(range(nz))
    random.Random(seed).shuffle(names)  # file name order says nothing about slice order
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient, "Test^Patient", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "090000", "1", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.SeriesNumber, ds.InstanceNumber = 3 if modality == "CT" else 4, names[k] + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [*row_cos.tolist(), *col_cos.tolist()]
        ds.ImagePositionPatient = (np.array(origin) + k * spacing[2] * normal).tolist()
        ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = 1.0 if slopes is None else float(slopes[k])
        ds.RescaleIntercept = intercept
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype(np.int16)).tobytes()
        path = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def pet_tags(**override) -> dict:
    info = Dataset()
    info.RadionuclideTotalDose = override.pop("dose", 370e6)
    info.RadionuclideHalfLife = override.pop("half_life", F18_HALF_LIFE_S)
    info.RadiopharmaceuticalStartTime = override.pop("injection", "090000")
    tags = {
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY"],
        "PatientWeight": 75.0,
        "SeriesDate": "20240102",
        "SeriesTime": "100000",
        "AcquisitionDate": "20240102",
        "AcquisitionTime": "100000",
        "RadiopharmaceuticalInformationSequence": [info],
    }
    tags.update(override)
    return tags


# --------------------------------------------------------------------------- geometry


def _wrapper_affine(path: Path) -> np.ndarray:
    """nibabel's own DICOM geometry for one slice: (row, column, 0) -> LPS mm."""
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(dicomwrappers.wrapper_from_file(str(path)).affine)


def assert_matches_slices(volume_img: nib.Nifti1Image, files: list[Path]) -> None:
    """Every file's pixel (row r, column c) lands where nibabel's DICOM affine says, with its rescaled value."""
    affine, data = volume_img.affine, np.asanyarray(volume_img.dataobj)
    inv = np.linalg.inv(affine)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    seen_k = set()
    for path in files:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        w = flip @ _wrapper_affine(path)
        rows, cols = pixels.shape
        for r, c in [(0, 0), (rows - 1, 0), (0, cols - 1), (rows // 2, cols // 3), (rows - 1, cols - 1)]:
            ijk = (inv @ w @ np.array([r, c, 0.0, 1.0]))[:3]
            np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
            i, j, k = (int(v) for v in np.round(ijk))
            assert (i, j) == (c, r)
            assert data[i, j, k] == pytest.approx(pixels[r, c], rel=1e-5, abs=1e-4)
            seen_k.add(k)
    assert seen_k == set(range(data.shape[2]))


@pytest.mark.parametrize(
    "row_cos, col_cos",
    [
        ((1, 0, 0), (0, 1, 0)),  # axial
        ((1, 0, 0), (0, 0, -1)),  # coronal
        ((0.8660254, 0.5, 0.0), (0.0, 0.0, -1.0)),  # oblique
    ],
)
def test_series_geometry_matches_nibabel_per_slice(tmp_path, row_cos, col_cos):
    stored = np.arange(5 * 4 * 6, dtype=np.int16).reshape(5, 4, 6) * 3 - 100
    files = write_series(tmp_path / "s", stored, row_cos=row_cos, col_cos=col_cos, intercept=-1024.0, seed=3)
    results = convert_dicom(tmp_path / "s", tmp_path / "out")
    assert [r.status for r in results] == ["ok"]
    img = nib.load(str(results[0].output))
    assert img.shape == (5, 4, 6)
    np.testing.assert_allclose(img.header.get_zooms(), (0.8, 0.9, 2.5), rtol=1e-6)
    assert img.get_data_dtype() == np.int16
    assert_matches_slices(img, files)
    # The stored array comes back in place: x = column, y = row, z = slice along the normal.
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), stored.astype(np.int32) - 1024)


def test_axial_series_is_ras_with_lps_flipped(tmp_path):
    write_series(tmp_path / "s", np.zeros((3, 2, 4), np.int16), origin=(-10.0, -20.0, 30.0))
    vol = read_series(find_series(tmp_path / "s")[0])
    # DICOM +x is patient Left and +y Posterior: in RAS both axes point the other way.
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    np.testing.assert_allclose(vol.affine[:3, 3], (10.0, 20.0, 30.0))
    np.testing.assert_allclose(np.diag(vol.affine)[:3], (-0.8, -0.9, 2.5))


def test_non_uniform_slices_are_refused(tmp_path):
    files = write_series(tmp_path / "s", np.zeros((2, 2, 4), np.int16))
    shutil.move(str(files[1]), tmp_path / "gone.dcm")  # a missing slice
    with pytest.raises(DicomError, match="non-uniform slice spacing"):
        read_series(find_series(tmp_path / "s")[0])


def test_missing_geometry_tag_named(tmp_path):
    files = write_series(tmp_path / "s", np.zeros((2, 2, 3), np.int16))
    ds = pydicom.dcmread(str(files[2]))
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.raises(DicomError, match=rf"{files[2].name}.*ImagePositionPatient \(0020,0032\)"):
        read_series(find_series(tmp_path / "s")[0])


# --------------------------------------------------------------------------- SUV


def test_pet_suv_by_hand(tmp_path):
    stored = np.full((4, 3, 3), 1000, np.int16)
    stored[1, 2, :] = 2000
    slopes = [10.0, 5.0, 20.0]  # PET carries one slope per slice
    write_series(tmp_path / "pet", stored, modality="PT", slopes=slopes, extra=pet_tags(), spacing=(4.0, 4.0, 3.0))
    results = convert_dicom(tmp_path / "pet", tmp_path / "out")
    assert results[0].status == "ok"
    suv = np.asanyarray(nib.load(str(results[0].output)).dataobj)
    # Injected 370 MBq at 09:00, series start 10:00 -> 3600 s of F-18 decay; 75 kg.
    decayed = 370e6 * 2 ** (-3600 / 6586.2)
    factor = 75_000 / decayed
    # 2^(-3600/6586.2) = 0.684633 of 370 MBq left = 253.314 MBq; 75000 g / 253.314e6 Bq = 2.96075e-4
    assert factor == pytest.approx(2.96075e-4, rel=1e-5)
    assert results[0].suv_factor == pytest.approx(factor, rel=1e-9)
    for k, slope in enumerate(slopes):
        np.testing.assert_allclose(suv[:, :, k], stored[:, :, k] * slope * factor, rtol=1e-6)
    assert suv[0, 0, 0] == pytest.approx(2.96075, rel=1e-5)  # 10 kBq/ml


def _pet_headers(**override):
    ds = Dataset()
    for key, value in pet_tags(**override).items():
        setattr(ds, key, value)
    return [ds]


def test_suv_admin_decay_correction_uses_dose_as_is():
    f = suv_factors(_pet_headers(DecayCorrection="ADMIN"), "x.dcm")
    assert f.factor == pytest.approx(75_000 / 370e6)
    assert f.decay_s == 0


def test_suv_datetime_and_acquisition_fallback():
    # Series time rewritten after the acquisition (post-processing): the earliest acquisition time is used.
    info = _pet_headers(SeriesTime="120000", AcquisitionTime="093000", injection="083000")
    f = suv_factors(info, "x.dcm")
    assert f.decay_s == 3600
    # A full injection datetime the evening before a scan after midnight.
    headers = _pet_headers(SeriesDate="20240103", SeriesTime="003000", AcquisitionDate="20240103",
                           AcquisitionTime="003000")
    headers[0].RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240102233000"
    assert suv_factors(headers, "x.dcm").decay_s == 3600
    # The same with a time only: taken as the day before.
    headers = _pet_headers(SeriesDate="20240103", SeriesTime="003000", AcquisitionDate="20240103",
                           AcquisitionTime="003000", injection="233000")
    f = suv_factors(headers, "x.dcm")
    assert f.decay_s == 3600 and f.injection_time == dt.datetime(2024, 1, 2, 23, 30)


def test_suv_units():
    assert suv_factors(_pet_headers(Units="GML"), "x").factor == 1.0
    with pytest.raises(DicomError, match=r"x.dcm: Units CNTS needs the Philips private SUV scale factor \(7053,1000\)"):
        suv_factors(_pet_headers(Units="CNTS"), "x.dcm")
    headers = _pet_headers(Units="CNTS")
    headers[0].add_new(0x70530010, "LO", "Philips PET Private Group")
    headers[0].add_new(0x70531000, "DS", "0.000321")
    assert suv_factors(headers, "x").factor == pytest.approx(0.000321)
    with pytest.raises(DicomError, match="Units 'PROPCNTS' not supported"):
        suv_factors(_pet_headers(Units="PROPCNTS"), "x")
    with pytest.raises(DicomError, match="DecayCorrection 'NONE' not supported"):
        suv_factors(_pet_headers(DecayCorrection="NONE"), "x")


@pytest.mark.parametrize(
    "remove, named",
    [
        ("PatientWeight", r"PatientWeight \(0010,1030\)"),
        ("Units", r"Units \(0054,1001\)"),
        ("DecayCorrection", r"DecayCorrection \(0054,1102\)"),
        ("RadiopharmaceuticalInformationSequence", r"RadiopharmaceuticalInformationSequence \(0054,0016\)"),
        ("RadionuclideTotalDose", r"RadionuclideTotalDose \(0018,1074\)"),
        ("RadionuclideHalfLife", r"RadionuclideHalfLife \(0018,1075\)"),
        ("RadiopharmaceuticalStartTime", r"RadiopharmaceuticalStartTime \(0018,1072\)"),
        ("SeriesTime+AcquisitionTime", r"SeriesTime \(0008,0031\) and AcquisitionTime"),
    ],
)
def test_missing_suv_tag_named_with_file(tmp_path, remove, named):
    files = write_series(tmp_path / "pet", np.ones((2, 2, 2), np.int16), modality="PT", extra=pet_tags())
    for path in files:
        ds = pydicom.dcmread(str(path))
        for key in remove.split("+"):
            if key in ds:
                delattr(ds, key)
            else:
                delattr(ds.RadiopharmaceuticalInformationSequence[0], key)
        ds.save_as(path)
    results = convert_dicom(tmp_path / "pet", tmp_path / "out")
    assert results[0].status == "failed" and results[0].output is None
    assert any(f.name in results[0].message for f in files)
    assert re.search(named, results[0].message), results[0].message
    # --no-suv still converts (Bq/ml)
    ok = convert_dicom(tmp_path / "pet", tmp_path / "out2", suv=False)
    assert ok[0].status == "ok" and ok[0].suv_factor is None


# --------------------------------------------------------------------------- real files shipped with pydicom


def test_real_ct_small_single_slice(tmp_path):
    path = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    results = convert_dicom(path, tmp_path)
    img = nib.load(str(results[0].output))
    ds = pydicom.dcmread(str(path))
    assert img.shape == (128, 128, 1)
    # PixelSpacing 0.661468 in plane; one slice, so the slice step is SpacingBetweenSlices (5 mm).
    np.testing.assert_allclose(img.header.get_zooms(), (0.661468, 0.661468, 5.0), rtol=1e-5)
    np.testing.assert_allclose(img.affine[:3, 3], (158.135803, 179.035797, -75.699997), atol=1e-4)
    expected = ds.pixel_array.T.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, 0], expected)
    assert_matches_slices(img, [path])


def test_real_multislice_ct_series(tmp_path):
    """pydicom's dicomdirtests CT5N: 5 axial slices, 0.488 mm pixels, stored head-first in descending z."""
    src = PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N"
    files = sorted(src.iterdir())
    assert len(files) == 5
    results = convert_dicom(src, tmp_path)
    assert [r.status for r in results] == ["ok"]
    img = nib.load(str(results[0].output))
    assert img.shape == (16, 16, 5)
    np.testing.assert_allclose(img.header.get_zooms(), (0.488281, 0.488281, 2.5), rtol=1e-5)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # The lowest slice (z = -1.2375 mm) comes first, whatever the file names say.
    np.testing.assert_allclose(img.affine[:3, 3], (72.199997, 143.0, -1.2375), atol=1e-4)
    assert_matches_slices(img, files)


def test_real_series_that_are_not_one_volume(tmp_path):
    root = PYDICOM_FILES / "dicomdirtests"
    gap = convert_dicom(root / "77654033" / "CT2", tmp_path / "a")[0]  # slices at z=-99.5 then 103..105.5
    assert gap.status == "failed" and "non-uniform slice spacing" in gap.message
    loc = convert_dicom(root / "98892003" / "MR700", tmp_path / "b")[0]  # a radial localizer
    assert loc.status == "failed" and "mixes orientations" in loc.message


def test_real_rtstruct_is_refused_clearly(tmp_path):
    path = Path(pydicom.data.get_testdata_file("rtstruct.dcm"))
    result = convert_dicom(path, tmp_path)[0]
    assert result.status == "failed"
    assert "RTSTRUCT" in result.message and "not supported" in result.message and path.name in result.message


def test_enhanced_multiframe_matches_single_frames(tmp_path):
    hd = pytest.importorskip("highdicom")
    files = sorted((PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N").iterdir())
    datasets = [pydicom.dcmread(str(f)) for f in files]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        datasets, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1
    )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    a, b = read_enhanced(tmp_path / "enhanced.dcm"), read_series(files)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    results = convert_dicom(tmp_path / "enhanced.dcm", tmp_path / "out")
    assert results[0].status == "ok" and results[0].shape == (16, 16, 5)


# --------------------------------------------------------------------------- folders, SEG, CLI


def _seg_for(ct_files: list[Path], mask: np.ndarray, path: Path, labels=("Liver", "Spleen")) -> Path:
    """A DICOM SEG over the CT written by write_series; ``mask`` (X, Y, Z) holds segment numbers."""
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in ct_files]
    # write_series wrote file i for slice i along the normal
    frames = np.stack([mask[:, :, k].T for k in range(len(sources))])
    binary = np.stack([(frames == n) for n in range(1, len(labels) + 1)], axis=-1).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=getattr(codes.SCT, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, name in enumerate(labels, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=20,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def test_folder_of_series_with_seg_and_rtstruct(tmp_path):
    pytest.importorskip("highdicom")
    study = generate_uid()
    folder = tmp_path / "dicom"  # all series in one flat folder
    ct = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    ct_files = write_series(folder / "ct", ct, intercept=-1024.0, study_uid=study)
    write_series(folder / "pet", np.full((3, 3, 2), 500, np.int16), modality="PT", extra=pet_tags(),
                 spacing=(4.0, 4.0, 5.0), study_uid=study)
    for p in list((folder / "ct").iterdir()) + list((folder / "pet").iterdir()):
        p.rename(folder / f"{p.parent.name}_{p.name}")
    for d in ("ct", "pet"):
        (folder / d).rmdir()
    ct_files = sorted(folder.glob("ct_*"), key=lambda p: pydicom.dcmread(str(p)).ImagePositionPatient[2])
    mask = np.zeros(ct.shape, np.uint8)
    mask[1:3, 1:4, 1:3] = 1
    mask[4, 0:2, 2:4] = 2
    _seg_for(ct_files, mask, folder / "seg.dcm")
    shutil.copy(pydicom.data.get_testdata_file("rtstruct.dcm"), folder / "rt.dcm")
    (folder / "notes.txt").write_text("not DICOM")

    code = convert_cli.main([str(folder), str(tmp_path / "out"), "--label-map", "names"])
    assert code == 1  # the RTSTRUCT fails; everything else converts
    index = (tmp_path / "out" / "series.csv").read_text().splitlines()
    assert len(index) == 1 + 4
    outs = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert outs == ["P1_S3_CT.nii.gz", "P1_S3_CT_seg.nii.gz", "P1_S4_PT.nii.gz"]
    ct_img = nib.load(str(tmp_path / "out" / "P1_S3_CT.nii.gz"))
    seg_img = nib.load(str(tmp_path / "out" / "P1_S3_CT_seg.nii.gz"))
    # The SEG lands on its CT's grid, segment names mapped to organ ids: Liver -> 4, Spleen -> 5 in umd13.
    assert seg_img.shape == ct_img.shape
    np.testing.assert_allclose(seg_img.affine, ct_img.affine)
    expected = np.where(mask == 1, 4, np.where(mask == 2, 5, 0))
    np.testing.assert_array_equal(np.asanyarray(seg_img.dataobj), expected)


def test_seg_keeps_segment_numbers_without_label_map(tmp_path):
    pytest.importorskip("highdicom")
    ct_files = write_series(tmp_path / "ct", np.zeros((4, 4, 3), np.int16))
    ct_files = sorted(ct_files, key=lambda p: pydicom.dcmread(str(p)).ImagePositionPatient[2])
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 0, 0], mask[3, 2, 2] = 1, 2
    _seg_for(ct_files, mask, tmp_path / "ct" / "seg.dcm")
    results = {r.modality: r for r in convert_dicom(tmp_path / "ct", tmp_path / "out")}
    seg = nib.load(str(results["SEG"].output))
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), mask)
    # Alone, without its CT, the SEG is placed on its own geometry: same world positions.
    alone = convert_dicom(tmp_path / "ct" / "seg.dcm", tmp_path / "alone")[0]
    img = nib.load(str(alone.output))
    ct_affine = nib.load(str(results["CT"].output)).affine
    world = nib.affines.apply_affine(img.affine, np.argwhere(np.asanyarray(img.dataobj) == 2))
    np.testing.assert_allclose(world, nib.affines.apply_affine(ct_affine, [[3, 2, 2]]), atol=1e-4)


def test_convert_maps_a_nifti_label_file(tmp_path, real_data_dir):
    """TotalSegmentator's 'total' ids (tests/reference_files of wasserth/TotalSegmentator) onto umd13."""
    out = tmp_path / "seg_umd13.nii.gz"
    assert convert_cli.main([str(real_data_dir / "example_seg.nii.gz"), str(out), "--label-map", "total"]) == 0
    src = nib.load(str(real_data_dir / "example_seg.nii.gz"))
    raw = np.asanyarray(src.dataobj)
    mapped = np.asanyarray(nib.load(str(out)).dataobj)
    np.testing.assert_allclose(nib.load(str(out)).affine, src.affine)
    assert (mapped == 3).sum() == np.isin(raw, [10, 11, 12, 13, 14]).sum() > 0  # five lobes -> lung
    assert (mapped == 6).sum() == (raw == 3).sum() > 0  # kidney_left
    assert (mapped == 7).sum() == (raw == 2).sum() > 0  # kidney_right
    assert convert_cli.main([str(real_data_dir / "example_seg.nii.gz"), str(out)]) == 2  # vocabulary needed


def test_convert_cli_module_entry(tmp_path):
    src = PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N"
    proc = subprocess.run(
        [sys.executable, "-m", "umd_lightning.convert", str(src), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "16x16x5" in proc.stdout
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "umd_lightning.convert", str(tmp_path / "nope"), str(tmp_path / "o2")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "file or folder not found" in missing.stderr


# --------------------------------------------------------------------------- malformed values


def set_raw(path: Path, keyword: str, text: str, item: str | None = None) -> None:
    """Store ``text`` as the raw bytes of ``keyword`` (in the first item of the sequence ``item``), as a
    broken exporter would: pydicom refuses to set a DS or IS to text, but reads such a file."""
    ds = pydicom.dcmread(str(path))
    target = ds if item is None else ds[item][0]
    tag = pydicom.datadict.tag_for_keyword(keyword)
    raw = text.encode() + (b" " if len(text) % 2 else b"")
    target._dict[tag] = RawDataElement(Tag(tag), pydicom.datadict.dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)


@pytest.mark.parametrize(
    "keyword, text, item, slices, named",
    [
        ("RescaleSlope", "abc", None, 3, r"RescaleSlope \(0028,1053\)"),
        ("RescaleIntercept", "1,5", None, 3, r"RescaleIntercept \(0028,1052\)"),
        ("PixelSpacing", "0.8\\abc", None, 3, r"PixelSpacing \(0028,0030\)"),
        ("ImagePositionPatient", "1\\2\\x", None, 3, r"ImagePositionPatient \(0020,0032\)"),
        ("SliceThickness", "abc", None, 1, r"SliceThickness \(0018,0050\)"),  # the step of a one-slice series
        ("ImageOrientationPatient", "1\\0\\0\\0\\1\\zero", None, 3, r"ImageOrientationPatient \(0020,0037\)"),
        ("PatientWeight", "heavy", None, 3, r"PatientWeight \(0010,1030\)"),
        ("RadionuclideTotalDose", "370 MBq", "RadiopharmaceuticalInformationSequence", 3,
         r"RadionuclideTotalDose \(0018,1074\)"),
        ("SeriesTime", "ten past", None, 3, r"SeriesTime"),
    ],
)
def test_malformed_value_names_file_and_tag_and_the_other_series_convert(tmp_path, keyword, text, item, slices, named):
    """A tag holding text where DICOM wants a number fails its own series with a DicomError naming the
    file and the tag; the folder's other series convert and series.csv lists both."""
    bad = write_series(tmp_path / "in" / "pet", np.ones((3, 2, slices), np.int16), modality="PT", extra=pet_tags())
    write_series(tmp_path / "in" / "ct", np.zeros((3, 2, 3), np.int16), patient="P2")
    for path in bad:
        set_raw(path, keyword, text, item)
    results = {r.modality: r for r in convert_dicom(tmp_path / "in", tmp_path / "out")}
    assert results["CT"].status == "ok" and results["CT"].output.is_file()
    pet = results["PT"]
    assert pet.status == "failed" and pet.output is None
    assert "\n" not in pet.message and any(str(f) in pet.message for f in bad), pet.message
    assert re.search(named, pet.message) and f"'{text}'" in pet.message, pet.message
    rows = list(csv.DictReader((tmp_path / "out" / "series.csv").open()))
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    # the DicomError itself when the series is read directly
    if item is None and keyword not in ("PatientWeight", "SeriesTime"):
        with pytest.raises(DicomError, match=named):
            read_series(find_series(tmp_path / "in" / "pet")[0])


def test_malformed_series_number_only_loses_the_number_in_the_name(tmp_path):
    files = write_series(tmp_path / "in", np.zeros((2, 2, 2), np.int16))
    for path in files:
        set_raw(path, "SeriesNumber", "three")
    (result,) = convert_dicom(tmp_path / "in", tmp_path / "out")
    assert result.status == "ok" and result.output.name == "P1_CT.nii.gz"


def test_cli_exit_status_when_nothing_or_something_converted(tmp_path, capsys):
    bad = write_series(tmp_path / "in" / "ct1", np.zeros((2, 2, 2), np.int16))
    for path in bad:
        set_raw(path, "RescaleSlope", "abc")
    assert convert_cli.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 2  # nothing converted
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "RescaleSlope (0028,1053)" in err and "Traceback" not in err
    write_series(tmp_path / "in" / "ct2", np.zeros((2, 2, 2), np.int16), patient="P2")
    assert convert_cli.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 1  # one of two converted
    assert (tmp_path / "out" / "series.csv").is_file() and (tmp_path / "out" / "P2_S3_CT.nii.gz").is_file()


def test_cli_refuses_an_output_that_cannot_take_files_before_converting(tmp_path, capsys):
    write_series(tmp_path / "in", np.zeros((2, 2, 2), np.int16))
    (tmp_path / "taken").write_text("a file")
    assert convert_cli.main([str(tmp_path / "in"), str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "taken: the output folder is a file" in err and len(err.strip().splitlines()) == 1


def test_symlink_loop_as_source_is_named(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert convert_cli.main([str(loop), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{loop}: is a symbolic link loop" in err.replace("\n", "") and "Traceback" not in err
