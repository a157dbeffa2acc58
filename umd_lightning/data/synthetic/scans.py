"""The scans' physics (``PHYSICS.md``): CT in HU, T1-like MRI, FDG PET in SUV from the sampled tissues."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from umd_lightning.data.synthetic.anatomy import Session, Subject
from umd_lightning.data.synthetic.sampling import Grid, sample_anatomy
from umd_lightning.data.synthetic.shapes import _F32


def _ct_image(tissue: np.ndarray, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    hu = subject.ct_hu.astype(np.float32)[tissue]
    hu = ndimage.gaussian_filter(hu, 0.5, mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * _F32(session.ct_noise_hu)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _mri_image(tissue: np.ndarray, grid: Grid, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    t1 = subject.mri_t1.astype(np.float32)[tissue]
    t1 = ndimage.gaussian_filter(t1, 0.5, mode="nearest")
    # Smooth bias: strong along the body (coil sensitivity between stations), weak in-plane.
    axes = [grid.origin[i] + grid.step[i] * np.arange(n) for i, n in enumerate(grid.shape)]
    fz = np.cos(2 * np.pi * axes[2] / rng.uniform(1400, 2200) + rng.uniform(0, 2 * np.pi))
    fz = (fz - fz.mean()) / max(np.abs(fz - fz.mean()).max(), 1e-6)
    fx = np.cos(2 * np.pi * axes[0] / rng.uniform(900, 1400) + rng.uniform(0, 2 * np.pi))
    fy = np.cos(2 * np.pi * axes[1] / rng.uniform(700, 1100) + rng.uniform(0, 2 * np.pi))
    inplane = rng.uniform(0.04, 0.08)
    bias = (1 + session.mri_bias * fz[None, None, :]) * (1 + inplane * fx[:, None, None] * fy[None, :, None])
    t1 *= bias.astype(np.float32)
    sigma = _F32(session.mri_noise)
    re = t1 + sigma * rng.standard_normal(t1.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(t1.shape, dtype=np.float32)
    gain = _F32(rng.uniform(800, 1200))
    return (np.sqrt(re * re + im * im) * gain).astype(np.float32)


def _pet_image(subject: Subject, session: Session, grid: Grid, fwhm_mm: float, gap_mm: float,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Activity on a 2x finer grid, Gaussian PSF, 2x2x2 average down, signal-dependent noise."""
    fine = grid.refined(2)
    _, tissue, smp, body = sample_anatomy(subject, session, fine, gap_mm)
    act = session.pet_suv.astype(np.float32)[tissue]
    if smp is not None:
        block = act[body]
        bx, by, bz = smp.b
        for lesion in subject.lesions:
            r = lesion.diameter_mm / 2
            box = smp.box(lesion.center - r, lesion.center + r)
            if box is None:
                continue
            c = lesion.center.astype(np.float32)
            dist2 = (bx[box] - c[0]) ** 2 + (by[box] - c[1]) ** 2 + (bz[box] - c[2]) ** 2
            np.copyto(block[box], _F32(lesion.suv), where=dist2 <= _F32(r * r))
    if fwhm_mm > 0:
        sigma = fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / np.abs(fine.step)
        act = ndimage.gaussian_filter(act, sigma, mode="constant", truncate=3.0)
    n0, n1, n2 = grid.shape
    act = act.reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    noise = rng.standard_normal(act.shape, dtype=np.float32)
    # Reconstructed PET noise is spatially correlated; keep unit variance after smoothing.
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise /= max(float(noise.std()), 1e-6)
    sd = np.sqrt(_F32(session.pet_noise) * np.maximum(act, _F32(0.05)))
    return np.maximum(act + sd * noise, 0).astype(np.float32)
