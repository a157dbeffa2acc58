"""The built-in cohort: synthetic subjects, each scanned twice (a PET/CT and a PET/MRI session).

Anatomy lives in a body frame (mm, RAS: +x towards the subject's right, +y anterior, +z superior)
as analytic shapes (ellipsoids and tubes, combined by CSG) that can be sampled at any world point.
A scan samples it through its session's pose: a rigid transform plus a small smooth deformation.
Each structure is evaluated only inside its bounding box. Where two structures meet, a thin fat
band is left between them when either is an organ, so boundaries are visible on CT.

Physics follows ``PHYSICS.md``: CT in HU (unenhanced), T1-like MRI with a bias field and Rician
noise, FDG PET in SUV simulated on a grid twice as fine as the PET grid, blurred by a Gaussian PSF,
averaged down, with signal-dependent noise. Everything drawn is deterministic from
``(seed, subject index)``: a subject's files do not depend on how many subjects are generated.

Layout written by :func:`generate_cohort`::

    out/manifest.csv  (subject_id, session, view, image, label; paths relative to out/)
    out/cohort.json   (config, organ set, tissues)
    out/syn000/petct/{ct,pet,label}.nii.gz     RAS, CT int16 HU, PET float32 SUV, label uint8
    out/syn000/petmri/{mri,pet,label}.nii.gz   LPS, MRI float32 (a.u.)
    out/syn000/subject.json                    drawn parameters (poses, lesions, tissue values)

Modules, one concern each: ``config`` (what to generate), ``tissues`` (tissue values), ``shapes``
(analytic solids), ``anatomy`` (subjects, sessions, their solids), ``sampling`` (labels and tissues
on a voxel grid), ``scans`` (CT/MRI/PET physics), ``cohort`` (writing files), ``cache`` (the cohort
cache), ``cli`` (``python -m umd_lightning.data.synthetic``).
"""

from umd_lightning.data.synthetic.anatomy import Lesion, Pose, Session, Subject, draw_session, draw_subject
from umd_lightning.data.synthetic.cache import COMPLETE_MARKER, ensure_cohort
from umd_lightning.data.synthetic.cli import main
from umd_lightning.data.synthetic.cohort import config_hash, generate_cohort, generate_subject, subject_id
from umd_lightning.data.synthetic.config import GENERATOR_VERSION, CohortConfig
from umd_lightning.data.synthetic.sampling import Grid, Orientation, Region, sample_anatomy
from umd_lightning.data.synthetic.shapes import Ellipsoid, Shape, Structure, Tube, Union, eval_restricted, rotation_matrix
from umd_lightning.data.synthetic.tissues import CT_HU, MRI_T1, PET_SUV, TISSUES, T

__all__ = [
    "COMPLETE_MARKER", "CT_HU", "GENERATOR_VERSION", "MRI_T1", "PET_SUV", "TISSUES", "CohortConfig", "Ellipsoid",
    "Grid", "Lesion", "Orientation", "Pose", "Region", "Session", "Shape", "Structure", "Subject", "T", "Tube",
    "Union", "config_hash", "draw_session", "draw_subject", "ensure_cohort", "eval_restricted", "generate_cohort",
    "generate_subject", "main", "rotation_matrix", "sample_anatomy", "subject_id",
]  # fmt: skip
