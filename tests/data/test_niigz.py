"""Gzipped NIfTI in one call each way (data/niigz.py) against nibabel's own reader and writer."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from umd_lightning.data.niigz import gzip_bytes, read_voxels, save_nifti_atomic

AFFINE = np.diag([0.98, 0.98, 1.5, 1.0])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_written_files_read_back_as_nibabel_reads_them(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((17, 9, 23)) * 200).astype(dtype)  # C order, as evaluation holds it
    path = tmp_path / "pred.nii.gz"
    save_nifti_atomic(nib.Nifti1Image(data, AFFINE), path)
    with gzip.open(path) as f:  # plain gzip: any tool reads it
        assert len(f.read()) >= data.nbytes
    img = nib.load(path)
    via_nibabel = np.asanyarray(img.dataobj)
    fast = read_voxels(img)
    assert fast is not None and fast.dtype == via_nibabel.dtype and fast.flags.f_contiguous
    np.testing.assert_array_equal(fast, via_nibabel)
    np.testing.assert_array_equal(fast, data)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]  # no temporary left behind


def test_what_one_call_cannot_read_falls_back_to_nibabel(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    scaled = nib.Nifti1Image(data, AFFINE)
    scaled.header.set_slope_inter(2.0, -1.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "plain.nii")
    big_endian = nib.Nifti1Image(data, AFFINE, header=nib.Nifti1Header(endianness=">"))
    nib.save(big_endian, tmp_path / "big_endian.nii.gz")
    assert nib.load(tmp_path / "big_endian.nii.gz").dataobj.dtype.byteorder == ">"
    for name in ("scaled.nii.gz", "plain.nii", "big_endian.nii.gz"):
        assert read_voxels(nib.load(tmp_path / name)) is None, name
    # two gzip members (a concatenated file): the first holds only the header
    raw = nib.Nifti1Image(data, AFFINE).to_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:352]) + gzip.compress(raw[352:]))
    img = nib.load(tmp_path / "members.nii.gz")
    assert read_voxels(img) is None
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    # a damaged deflate stream after an intact header: left to nibabel's reader, as before
    noise = np.random.default_rng(1).integers(-1000, 1000, (40, 40, 40), dtype=np.int16)
    packed = bytearray(gzip.compress(nib.Nifti1Image(noise, AFFINE).to_bytes(), 1))
    packed[len(packed) // 2 :] = bytes(len(packed) - len(packed) // 2)
    (tmp_path / "damaged.nii.gz").write_bytes(bytes(packed))
    assert read_voxels(nib.load(tmp_path / "damaged.nii.gz")) is None


def test_an_uncompressed_name_gets_nibabels_writer(tmp_path):
    data = np.ones((4, 5, 6), dtype=np.uint8)
    save_nifti_atomic(nib.Nifti1Image(data, AFFINE), tmp_path / "sub" / "x.nii")
    with open(tmp_path / "sub" / "x.nii", "rb") as f:
        assert f.read(2) != b"\x1f\x8b"  # not gzip
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "sub" / "x.nii").dataobj), data)


@pytest.mark.parametrize("level", [0, 1, 3, 6, 9])
def test_gzip_bytes_is_plain_deterministic_gzip(level):
    data = np.random.default_rng(1).integers(0, 40, 300_000, dtype=np.int16).tobytes()
    packed = gzip_bytes(data, level)
    assert gzip.decompress(packed) == data
    assert packed == gzip_bytes(data, level)  # no time in the header
    assert packed[:2] == b"\x1f\x8b" and packed[4:8] == b"\x00\x00\x00\x00"  # gzip magic, mtime 0
    if level:
        assert len(packed) < len(data) // 2
