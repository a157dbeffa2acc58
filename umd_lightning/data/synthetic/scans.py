"""The scans' physics (``PHYSICS.md``): CT in HU, T1-like MRI, FDG PET in SUV from the sampled tissues."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from umd_lightning.data.synthetic.anatomy import Session, Subject
from umd_lightning.data.synthetic.sampling import Grid, Region, body_block
from umd_lightning.data.synthetic.shapes import _F32
from umd_lightning.data.synthetic.tissues import T


#: Values drawn, and voxels worked on, at a time where a whole volume of temporaries is not needed.
_CHUNK = 4_000_000


def _add_noise(image: np.ndarray, scale: np.float32, rng: np.random.Generator, *, square: bool = False) -> None:
    """``image += scale * N(0, 1)`` (or ``+= (scale * N(0, 1)) ** 2``) in place, in chunks.

    The draws are the same numbers as one ``rng.standard_normal(image.shape)`` call: the generator
    fills element by element, so consecutive chunks continue one stream.
    """
    flat = image.reshape(-1)  # a view: the volumes here are C-contiguous
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        noise = rng.standard_normal(part.size, dtype=np.float32)
        noise *= scale
        if square:
            noise *= noise
        part += noise


def _ct_image(tissue: np.ndarray, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    hu = subject.ct_hu.astype(np.float32)[tissue]
    ndimage.gaussian_filter(hu, 0.5, mode="nearest", output=hu)  # in place: the same values (see _pet_image)
    _add_noise(hu, _F32(session.ct_noise_hu), rng)
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return hu.astype(np.int16)


def _mri_image(tissue: np.ndarray, grid: Grid, subject: Subject, session: Session, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex T1-like signal: bias field, Rician noise (a real and an imaginary draw)."""
    t1 = subject.mri_t1.astype(np.float32)[tissue]
    ndimage.gaussian_filter(t1, 0.5, mode="nearest", output=t1)
    # Smooth bias: strong along the body (coil sensitivity between stations), weak in-plane.
    axes = [grid.origin[i] + grid.step[i] * np.arange(n) for i, n in enumerate(grid.shape)]
    fz = np.cos(2 * np.pi * axes[2] / rng.uniform(1400, 2200) + rng.uniform(0, 2 * np.pi))
    fz = (fz - fz.mean()) / max(np.abs(fz - fz.mean()).max(), 1e-6)
    fx = np.cos(2 * np.pi * axes[0] / rng.uniform(900, 1400) + rng.uniform(0, 2 * np.pi))
    fy = np.cos(2 * np.pi * axes[1] / rng.uniform(700, 1100) + rng.uniform(0, 2 * np.pi))
    inplane = rng.uniform(0.04, 0.08)
    along = 1 + session.mri_bias * fz[None, None, :]
    across = 1 + inplane * fx[:, None, None] * fy[None, :, None]
    for i in range(t1.shape[0]):  # the float64 bias one sagittal plane at a time
        t1[i] *= (along[0] * across[i]).astype(np.float32)
    sigma = _F32(session.mri_noise)
    _add_noise(t1, sigma, rng)  # the real part
    np.multiply(t1, t1, out=t1)
    _add_noise(t1, sigma, rng, square=True)  # + the imaginary part squared, drawn after the real one
    gain = _F32(rng.uniform(800, 1200))
    np.sqrt(t1, out=t1)
    t1 *= gain
    return t1


def _pet_image(subject: Subject, session: Session, grid: Grid, fwhm_mm: float, gap_mm: float,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Activity on a 2x finer grid, Gaussian PSF, 2x2x2 average down, signal-dependent noise.

    The fine grid has 8 voxels per PET voxel; its activity is the one array of its size, filled a
    slab of the body at a time and blurred in place.
    """
    fine = grid.refined(2)
    suv = session.pet_suv.astype(np.float32)
    act = np.full(fine.shape, suv[T["air"]], np.float32)
    block = body_block(subject, session, fine, gap_mm)
    if block is not None:
        act_block = act[block.box]
        for slab, _, tissue in block.slabs():
            slab_act = act_block[slab]
            slab_act[...] = suv[tissue]
            region = Region(block.sampler, slab)
            for lesion in subject.lesions:
                r = lesion.diameter_mm / 2
                box = region.rel(lesion.center - r, lesion.center + r)
                if box is None:
                    continue
                bx, by, bz = region.child(box).coords()
                c = lesion.center.astype(np.float32)
                dist2 = (bx - c[0]) ** 2 + (by - c[1]) ** 2 + (bz - c[2]) ** 2
                np.copyto(slab_act[box], _F32(lesion.suv), where=dist2 <= _F32(r * r))
    if fwhm_mm > 0:
        sigma = fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / np.abs(fine.step)
        # scipy filters line by line through a buffer: in place gives the same values
        ndimage.gaussian_filter(act, sigma, mode="constant", truncate=3.0, output=act)
    n0, n1, n2 = grid.shape
    act = act.reshape(n0, 2, n1, 2, n2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    noise = rng.standard_normal(act.shape, dtype=np.float32)
    # Reconstructed PET noise is spatially correlated; keep unit variance after smoothing.
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise /= max(float(noise.std()), 1e-6)
    sd = np.sqrt(_F32(session.pet_noise) * np.maximum(act, _F32(0.05)))
    return np.maximum(act + sd * noise, 0).astype(np.float32)
