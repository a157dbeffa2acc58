"""Writing subjects and a cohort folder (NIfTI files, ``manifest.csv``, ``cohort.json``)."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from umd_lightning.data.niigz import gzip_bytes
from umd_lightning.data.synthetic.anatomy import _HEAD_TOP, Pose, Subject, draw_session, draw_subject
from umd_lightning.data.synthetic.config import GENERATOR_VERSION, CohortConfig
from umd_lightning.data.synthetic.sampling import Grid, Orientation, sample_anatomy
from umd_lightning.data.synthetic.scans import _ct_image, _mri_image, _pet_image
from umd_lightning.data.synthetic.tissues import TISSUES
from umd_lightning.organs import SESSION_VIEWS, UMD13


def _save(path: Path, data: np.ndarray, affine: np.ndarray, compress_level: int) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip_bytes(img.to_bytes(), int(compress_level)))  # no time in the header: the same bytes each run


def subject_id(index: int) -> str:
    return f"syn{index:03d}"


def _scan_center(pose: Pose, subject: Subject, fov_z: float, rng: np.random.Generator) -> np.ndarray:
    """FOV centre in world mm: in-plane near the body axis, top just above the head."""
    head_top = pose.to_world(np.array([[0.0, 0.0, _HEAD_TOP * subject.body_scale[2]]]))[0]
    axis = pose.to_world(np.zeros((1, 3)))[0]
    return np.array([axis[0] + rng.uniform(-10, 10), axis[1] + rng.uniform(-10, 10),
                     head_top[2] + rng.uniform(8, 25) - fov_z / 2])  # fmt: skip


def generate_subject(out_dir: str | Path, config: CohortConfig, index: int) -> list[dict[str, str]]:
    """Draw and write subject ``index``; return its four manifest rows.

    Args:
        out_dir: cohort folder; the subject goes to ``out_dir/syn{index:03d}``.
        config: cohort config (seed, grids, physics).
        index: subject index.

    Returns:
        Manifest rows (CT, PET_CT, MRI, PET_MRI) with paths relative to ``out_dir``.

    Raises:
        RuntimeError: if a label map misses an organ (the geometry or the FOV is wrong).
    """
    out_dir = Path(out_dir)
    sid = subject_id(index)
    seeds = np.random.SeedSequence(entropy=config.seed, spawn_key=(index,)).spawn(5)
    anat_rng = np.random.default_rng(seeds[0])
    subject = draw_subject(index, anat_rng, tuple(config.lesions_per_subject))  # type: ignore[arg-type]
    sessions = {name: draw_session(name, np.random.default_rng(seeds[1 + i]), subject, config.deformation_mm)
                for i, name in enumerate(SESSION_VIEWS)}  # fmt: skip
    scale = config.scale
    rows: list[dict[str, str]] = []
    record: dict = {"subject_id": sid, "index": index, "body_scale": subject.body_scale.tolist(),
                    "fat_mm": subject.fat_mm, "muscle_mm": subject.muscle_mm,
                    "lesions": [{"center_body_mm": les.center.tolist(), "diameter_mm": les.diameter_mm, "suv": les.suv,
                                 "host": les.host} for les in subject.lesions],
                    "ct_hu": dict(zip(TISSUES, subject.ct_hu.tolist())),
                    "mri_t1": dict(zip(TISSUES, subject.mri_t1.tolist())), "sessions": {}}  # fmt: skip
    for i, (name, session) in enumerate(sessions.items()):
        rng = np.random.default_rng(seeds[3]) if name == "petct" else np.random.default_rng(seeds[4])
        anat_view, pet_view = SESSION_VIEWS[name]
        orientation: Orientation = "RAS" if name == "petct" else "LPS"
        spacing = config.ct_spacing if name == "petct" else config.mri_spacing
        fov = config.ct_fov_mm if name == "petct" else config.mri_fov_mm
        grid = Grid.centered(_scan_center(session.pose, subject, fov[2], rng), fov,
                             np.asarray(spacing) * scale, orientation)  # fmt: skip
        pet_grid = Grid.centered(_scan_center(session.pose, subject, config.pet_fov_mm[2], rng),
                                 config.pet_fov_mm, np.asarray(config.pet_spacing) * scale, orientation)  # fmt: skip
        label, tissue = sample_anatomy(subject, session, grid, config.fat_gap_mm)
        missing = sorted(set(UMD13.labels) - set(np.unique(label).tolist()))
        if missing:
            names = ", ".join(UMD13.labels[m] for m in missing)
            raise RuntimeError(f"synthetic {sid}/{name}: label map misses {names} (config {config})")
        if name == "petct":
            image = _ct_image(tissue, subject, session, rng)
            image_name = "ct"
        else:
            image = _mri_image(tissue, grid, subject, session, rng)
            image_name = "mri"
        del tissue
        pet = _pet_image(subject, session, pet_grid, config.pet_fwhm_mm, config.fat_gap_mm, rng)
        folder = out_dir / sid / name
        _save(folder / f"{image_name}.nii.gz", image, grid.affine, config.compress_level)
        _save(folder / "label.nii.gz", label, grid.affine, config.compress_level)
        _save(folder / "pet.nii.gz", pet, pet_grid.affine, config.compress_level)
        rel = f"{sid}/{name}"
        rows.append({"subject_id": sid, "session": name, "view": anat_view, "image": f"{rel}/{image_name}.nii.gz",
                     "label": f"{rel}/label.nii.gz"})  # fmt: skip
        rows.append({"subject_id": sid, "session": name, "view": pet_view, "image": f"{rel}/pet.nii.gz",
                     "label": f"{rel}/label.nii.gz"})  # fmt: skip
        record["sessions"][name] = {
            "rotation": session.pose.rotation.tolist(), "shift_mm": session.pose.shift.tolist(),
            "deformation_max_mm": session.pose.max_displacement, "bladder_fill": session.bladder_fill,
            "pet_suv": dict(zip(TISSUES, session.pet_suv.tolist())), "ct_noise_hu": session.ct_noise_hu,
            "pet_noise": session.pet_noise, "mri_bias": session.mri_bias,
        }  # fmt: skip
    (out_dir / sid / "subject.json").write_text(json.dumps(record, indent=1))
    return rows


def generate_cohort(out_dir: str | Path, config: CohortConfig = CohortConfig(), *, workers: int = 1) -> Path:
    """Write the cohort into ``out_dir``; return the manifest CSV path.

    Args:
        out_dir: destination folder (created; existing files of the same names are overwritten).
        config: what to generate.
        workers: processes, one subject at a time each (1 = in this process).

    Returns:
        ``out_dir/manifest.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = range(config.n_subjects)
    if workers > 1 and config.n_subjects > 1:
        # spawn: safe when the caller already holds threads (torch, Lightning).
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, config.n_subjects), mp_context=ctx) as pool:
            per_subject = list(pool.map(generate_subject, [out_dir] * len(indices), [config] * len(indices), indices))
    else:
        per_subject = [generate_subject(out_dir, config, i) for i in indices]
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "session", "view", "image", "label"])
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    meta = {
        "generator": "umd_lightning.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "organ_set": {"name": UMD13.name, "labels": {str(k): v for k, v in sorted(UMD13.labels.items())}},
        "orientation": {"petct": "RAS", "petmri": "LPS"},
        "units": {"CT": "HU", "PET_CT": "SUVbw", "MRI": "a.u.", "PET_MRI": "SUVbw"},
        "tissues": list(TISSUES),
    }
    (out_dir / "cohort.json").write_text(json.dumps(meta, indent=1))
    return manifest


def config_hash(config: CohortConfig) -> str:
    """Stable short hash of the config and the generator version (the cache folder name)."""
    payload = json.dumps({"version": GENERATOR_VERSION, "config": config.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
