"""Dataset folder layouts -> :class:`~umd_lightning.data.manifest.Manifest`.

Each reader is ``read_<layout>(root, **options) -> Manifest`` and is registered in :data:`LAYOUTS`;
:func:`load_layout` is the one entry point (the datamodule calls it with ``conf/data/<layout>.yaml``'s options).

Layouts:

- ``nnunet``: nnU-Net raw / Medical Segmentation Decathlon: ``dataset.json`` names the channels,
  ``imagesTr/<case>_0000.nii.gz`` (one file per channel) and ``labelsTr/<case>.nii.gz``.
- ``autopet``: AutoPET FDG-PET-CT: ``<patient>/<study>/{CT,CTres,PET,SUV,SEG}.nii.gz`` (PET/CT only).
- ``pattern``: file patterns with ``{subject}``, ``{session}`` and ``{view}`` fields, so a new dataset's layout
  is one config file.
- ``manifest``: a CSV/JSON manifest file (see :func:`~umd_lightning.data.manifest.read_manifest`).

Every record is one scan; a PET view's ``label`` is the label map of the anatomical scan of the same session
(the PET keeps its own grid; evaluation resamples PET onto the label grid). Only the views a dataset has are
produced.

Every reader takes the same label options: ``label_map`` (a label-map name such as ``total``, a YAML path,
``dataset`` for nnU-Net's own label names, or a mapping from anatomical view or session to one of those) maps
reference labels of another vocabulary onto the organ set **once**, into
``<cache_dir>/labels/<organ set>-<map>-<hash>/<subject>_<session>-<hash>.nii.gz`` written with the source's
affine; the manifest then points at the converted files. A cached file is reused until its source changes.

Modules, one concern each: ``labels`` (label conversion into the cache), ``records`` (what every reader
shares), one module per layout (``nnunet``, ``autopet``, ``pattern``, ``manifest_file``), and ``registry``
(:data:`LAYOUTS`, :func:`load_layout`). The layout configs target the datamodule itself, which calls
:func:`load_layout`; this package never imports the datamodule.
"""

from umd_lightning.data.layouts.autopet import read_autopet
from umd_lightning.data.layouts.labels import LabelConverter, LabelMapOption, default_cache_dir, map_label_file
from umd_lightning.data.layouts.manifest_file import read_manifest_layout
from umd_lightning.data.layouts.nnunet import ChannelRole, channel_role, read_nnunet
from umd_lightning.data.layouts.pattern import read_pattern
from umd_lightning.data.layouts.records import DEFAULT_SESSION_NAMES, DEFAULT_VIEW_NAMES
from umd_lightning.data.layouts.registry import LAYOUTS, load_layout
from umd_lightning.data.niigz import save_nifti_atomic

__all__ = [
    "ChannelRole",
    "DEFAULT_SESSION_NAMES",
    "DEFAULT_VIEW_NAMES",
    "LAYOUTS",
    "LabelConverter",
    "LabelMapOption",
    "channel_role",
    "default_cache_dir",
    "load_layout",
    "map_label_file",
    "read_autopet",
    "read_manifest_layout",
    "read_nnunet",
    "read_pattern",
    "save_nifti_atomic",
]
