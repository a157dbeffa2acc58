"""DICOM series (CT, MR, PET) and DICOM SEG to NIfTI, in RAS world coordinates, PET in body-weight SUV.

Geometry comes from the tags, never from file order: slices are sorted along the slice normal
(``ImageOrientationPatient`` row x column cosines) by their ``ImagePositionPatient``; in-plane spacing is
``PixelSpacing`` and the slice step is the measured distance between neighbouring positions (so a gantry tilt
stays in the affine). DICOM patient coordinates are LPS; the NIfTI affine is RAS (x and y negated). Voxel
``(i, j, k)`` of the written volume is column ``i``, row ``j`` of the ``k``-th slice along the normal.

PET is written as body-weight SUV (unit g/ml, tissue density taken as 1 g/ml)::

    SUVbw = activity concentration (Bq/ml) * patient weight (g) / decay-corrected injected dose (Bq)

following the QIBA vendor-neutral pseudo-code: ``Units`` BQML with ``DecayCorrection`` START (dose decayed
from injection to the series start) or ADMIN (images already corrected to the injection time, dose used as
is); ``Units`` CNTS only with the Philips private SUV scale factor (7053,1000); ``Units`` GML is already SUV.
Anything else, or a missing tag, is a :class:`DicomError` that names the tag and the file.

DICOM SEG becomes a label map through ``highdicom`` (optional dependency, imported lazily). RTSTRUCT (contours)
is not converted: rasterising polygons well needs a dedicated tool; the error says so.

Modules, one concern each: ``errors`` (:class:`DicomError`, required tags), ``discovery`` (files grouped by
series), ``volume`` (image series to a RAS volume), ``suv`` (PET to SUVbw), ``seg`` (DICOM SEG to labels),
``conversion`` (every series under a path to NIfTI, and ``series.csv``).
"""

from umd_lightning.data.dicom.conversion import IMAGE_MODALITIES, ConvertResult, convert_dicom, convert_image_series
from umd_lightning.data.dicom.discovery import DICOMDIR_SOP_CLASS, RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, DicomSeries, find_series
from umd_lightning.data.dicom.errors import DicomError
from umd_lightning.data.dicom.seg import read_seg, segment_lookup
from umd_lightning.data.dicom.suv import SuvFactors, suv_factors
from umd_lightning.data.dicom.volume import LPS_TO_RAS, ORIENTATION_ATOL, SLICE_SPACING_RTOL, Volume, read_enhanced, read_series, slice_geometry

__all__ = [
    "DICOMDIR_SOP_CLASS", "IMAGE_MODALITIES", "LPS_TO_RAS", "ORIENTATION_ATOL", "RTSTRUCT_SOP_CLASS", "SEG_SOP_CLASS",
    "SLICE_SPACING_RTOL", "ConvertResult", "DicomError", "DicomSeries", "SuvFactors", "Volume", "convert_dicom",
    "convert_image_series", "find_series", "read_enhanced", "read_seg", "read_series", "segment_lookup",
    "slice_geometry", "suv_factors",
]  # fmt: skip
