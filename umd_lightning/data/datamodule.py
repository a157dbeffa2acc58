"""UMDDataModule: paired patches of one session for training, whole volumes with meta for evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import lightning as L
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler

from umd_lightning.data.manifest import Manifest, ManifestError, Problem, ScanRecord, read_manifest, validate_manifest
from umd_lightning.data.splits import few_shot, split_subjects, write_split_file
from umd_lightning.data.transforms import eval_transforms, label_dtype, paired_load_transforms, paired_patch_transforms
from umd_lightning.organs import ANATOMICAL_VIEWS, SESSION_VIEWS, VIEWS, anatomical_view, check_view, get_organ_set, pet_view
from umd_lightning.paths import path_problem

log = logging.getLogger(__name__)


def load_source(source: Mapping[str, Any], cache_dir: str | Path) -> Manifest:
    """Build the manifest a data config describes.

    ``source.layout`` is ``synthetic`` (the built-in cohort, generated once into ``cache_dir``),
    or a dataset layout known to :mod:`umd_lightning.data.layouts` (``manifest``, ``nnunet``,
    ``autopet``, ``pattern``...: ``source.root`` and ``source.options``).
    """
    layout = source.get("layout", "synthetic")
    if layout == "synthetic":
        from umd_lightning.data.synthetic import CohortConfig, ensure_cohort

        fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in source.items() if k not in ("layout", "workers")}
        path = ensure_cohort(Path(cache_dir) / "synthetic", CohortConfig(**fields), workers=int(source.get("workers", 1)))
        return read_manifest(path)
    from umd_lightning.data.layouts import load_layout

    root = source.get("root") or source.get("path")
    if not root:
        raise ValueError(f"data source {layout!r} needs a root (data.root=DIR or data.source.root=DIR)")
    options = dict(source.get("options") or {})
    options.setdefault("cache_dir", Path(cache_dir) / "layouts")  # converted labels: never into the user's data
    return load_layout(layout, root, **options)


class UMDDataModule(L.LightningDataModule):
    """Serves one dataset's subjects split by subject.

    Training items are sessions: the anatomical scan and its PET cropped at the same place, with the
    shared label, ``(B, 1, *patch_size)`` each. Evaluation items are whole volumes on the label's grid
    (PET resampled onto it), batch size 1, with meta (subject_id, session, view, case_id, paths).

    Args:
        source: where the manifest comes from (see :func:`load_source`).
        root: a dataset layout's folder (or manifest file), the user-facing ``data.root`` of
            ``conf/data/<layout>.yaml``; ``source.root`` defaults to it. Checked here, so that a
            missing folder stops the run before anything else.
        organ_set: organ set name or ``{id: name}``.
        cache_dir: where generated cohorts and caches live.
        splits: ``n_test`` (count, fraction, or ``"all"``), ``n_val``, ``seed``; a manifest ``split``
            column fixes subjects it names.
        train_views: views the network trains on.
        eval_views: views evaluated in test/predict.
        k_shot: training subjects per view (None = all).
        k_shot_shared: the same ``k_shot`` subjects for every training view (paired sessions);
            False draws each view apart (:func:`~umd_lightning.data.splits.few_shot`).
        patch_size: training patch (voxels).
        samples_per_volume: patches cut from one cached session per visit.
        batch_size: sessions per training batch; each gives ``samples_per_volume`` patches, so a
            batch holds ``batch_size * samples_per_volume`` patches.
        epoch_batches: training batches per epoch (per process), the sessions revisited in shuffled
            rounds; None = one pass over the training sessions. A few-session epoch empties the
            workers' prefetch queue at every boundary and the GPU waits for the first batch of the
            next (nnU-Net: 250 batches per epoch).
        num_workers: dataloader workers. An evaluation worker prepares one case ahead (prefetch 1):
            more would hold further whole clinical-size sessions for no gain, the network being slower.
        train_cache_gb: memory for training sessions held after their deterministic transforms (MONAI
            ``CacheDataset``), estimated from each session's label grid (float32 scan and PET, the
            organ set's label dtype, at ``train_spacing``); one budget for the training sessions and then
            the validation ones; sessions past it are loaded at every visit. Evaluation
            caches nothing: each case is read, scored and dropped.
        intensity: per-modality normalisation of training patches: the network's own
            (:class:`~umd_lightning.intensity.IntensityConfig`); evaluation volumes stay in physical units.
        train_spacing: resample training sessions to this spacing (mm); None keeps the label grid.
        validate: check every file of the manifest before anything runs.
        pet_units: ``stop``: a PET whose values look like Bq/ml rather than SUV stops the run with one
            line naming the file (as ``check`` detects it); ``ignore``: not checked.

    Raises:
        ManifestError: a dataset layout's root does not exist.
    """

    def __init__(
        self,
        source: Mapping[str, Any],
        root: str | Path | None = None,
        organ_set: str | Mapping[int, str] = "umd13",
        cache_dir: str = ".cache/umd_lightning",
        splits: Mapping[str, Any] | None = None,
        train_views: Sequence[str] = ("CT",),
        eval_views: Sequence[str] = VIEWS,
        k_shot: int | None = None,
        k_shot_shared: bool = True,
        patch_size: Sequence[int] = (64, 64, 64),
        samples_per_volume: int = 4,
        batch_size: int = 2,
        epoch_batches: int | None = None,
        num_workers: int = 0,
        train_cache_gb: float = 4.0,
        intensity: Mapping[str, Any] | None = None,
        train_spacing: Sequence[float] | None = None,
        validate: bool = True,
        pet_units: Literal["stop", "ignore"] = "stop",
    ) -> None:
        super().__init__()
        self.source = dict(source)
        layout = self.source.get("layout", "synthetic")
        if layout != "synthetic":
            if root is not None:
                self.source.setdefault("root", str(root))
            folder = self.source.get("root") or self.source.get("path")
            problem = "is not set" if folder is None or str(folder) in ("", "???") else path_problem(
                Path(str(folder)).expanduser(), "any")
            if problem:
                raise ManifestError(f"data.root: {folder}: {problem} (set data.root=DIR for layout {layout})")
        self.organ_set = get_organ_set(dict(organ_set) if isinstance(organ_set, Mapping) else organ_set)
        self.cache_dir = Path(cache_dir).expanduser()
        self.split_cfg = dict(splits or {})
        self.train_views = [check_view(v) for v in train_views]
        self.eval_views = [check_view(v) for v in eval_views]
        self.k_shot = k_shot
        self.k_shot_shared = bool(k_shot_shared)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.samples_per_volume = int(samples_per_volume)
        self.batch_size = int(batch_size)
        if epoch_batches is not None and int(epoch_batches) < 1:
            raise ValueError(f"epoch_batches must be a positive number of batches or None, got {epoch_batches!r}")
        self.epoch_batches = None if epoch_batches is None else int(epoch_batches)
        self.num_workers = int(num_workers)
        if float(train_cache_gb) < 0:
            raise ValueError(f"train_cache_gb must be >= 0, got {train_cache_gb!r}")
        self.train_cache_gb = float(train_cache_gb)
        self.intensity = dict(intensity or {})
        self.train_spacing = None if train_spacing is None else tuple(float(s) for s in train_spacing)
        self.validate = validate
        if pet_units not in ("stop", "ignore"):
            raise ValueError(f"data.pet_units must be 'stop' or 'ignore', got {pet_units!r}")
        self.pet_units = pet_units
        self.manifest: Manifest | None = None
        self.splits: dict[str, list[str]] = {}
        self.train_subjects_per_view: dict[str, list[str]] = {}
        #: Cases that failed validation: reported as failed rows, never evaluated.
        self.failed: list[Problem] = []
        self._validated: set[str] = set()
        self._skip: set[str] = set()
        self._train_ds = self._val_ds = None
        #: Input channels of a multi-channel model (``anatomical``/``PET``), set by the run from the
        #: adapter's ``info.channels``; empty = each case is one scan.
        self.channels: tuple[str, ...] = ()

    # ------------------------------------------------------------------ manifest and splits
    def prepare_data(self) -> None:
        # Runs once per node before setup(): generating the cohort here keeps DDP ranks from racing.
        load_source(self.source, self.cache_dir)

    def _ensure_manifest(self) -> None:
        if self.manifest is not None:
            return
        self.manifest = load_source(self.source, self.cache_dir)
        fixed = {r.subject_id: r.split for r in self.manifest if r.split}
        n_test = self.split_cfg.get("n_test", 0.34)
        seed = int(self.split_cfg.get("seed", 0))
        if n_test == "all":
            subjects = self.manifest.subjects
            self.splits = {"train": [], "val": [], "test": subjects}
        else:
            self.splits = split_subjects(
                self.manifest.subjects, n_test=n_test, n_val=self.split_cfg.get("n_val", 0), seed=seed, fixed=fixed
            )
        self.train_subjects_per_view = few_shot(
            self.splits["train"], self.train_views, self.k_shot, seed=seed, shared=self.k_shot_shared
        )

    def _validate(self, records: Iterable[ScanRecord]) -> None:
        """Check each record once (only those this stage reads); problems go to ``self.failed``."""
        todo = [r for r in records if r.case_id not in self._validated]
        if not self.validate or not todo:
            return
        problems = validate_manifest(
            Manifest(todo, self.manifest.source), self.organ_set, raise_on_error=False, pet_units=self.pet_units == "stop"
        )
        for p in problems:
            log.error("unusable case %s: %s", p.case_id, p)
        self.failed.extend(problems)
        self._validated.update(r.case_id for r in todo)

    def setup(self, stage: str | None = None) -> None:
        self._ensure_manifest()
        if stage in ("fit", None) and self._train_ds is None:
            self._validate([*self._session_records("train"), *self._session_records("val")])
            bad_train = [p for p in self.failed if p.case_id in {r.case_id for r in self._session_records("train")}]
            if bad_train:
                listing = "\n".join(f"  {p.case_id}: {p}" for p in bad_train)
                raise ValueError(f"cannot train on unusable case(s):\n{listing}")
            # One cache budget for both: training sessions first, validation gets what they leave.
            self._train_ds, used = self._paired_dataset("train", self.train_cache_gb * 2**30)
            if self.splits["val"]:
                self._val_ds, _ = self._paired_dataset("val", self.train_cache_gb * 2**30 - used)
        if stage in ("test", "predict", None):
            self._validate(self._eval_candidates())

    def write_splits(self, path: str | Path) -> Path:
        self._ensure_manifest()
        return write_split_file(path, self.splits, self.train_subjects_per_view)

    def exclude_cases(self, case_ids: Iterable[str]) -> None:
        """Leave out cases already evaluated (a resumed run skips them)."""
        self._skip |= set(case_ids)

    # ------------------------------------------------------------------ training
    def _session_records(self, split: str) -> list[ScanRecord]:
        subjects = set(self.splits.get(split, []))
        return [r for r in self.manifest if r.subject_id in subjects]

    def _paired_items(self, split: str) -> list[dict]:
        by_key = {(r.subject_id, r.view): r for r in self._session_records(split)}
        items = []
        for subject in self.splits[split]:
            for session, (anat_view, functional_view) in SESSION_VIEWS.items():
                anat, pet = by_key.get((subject, anat_view)), by_key.get((subject, functional_view))
                if anat is None or pet is None:
                    continue
                if split == "train":
                    use_anat = subject in self.train_subjects_per_view.get(anat_view, [])
                    use_pet = subject in self.train_subjects_per_view.get(functional_view, [])
                else:
                    use_anat, use_pet = anat_view in self.train_views, functional_view in self.train_views
                if not (use_anat or use_pet):
                    continue
                items.append(
                    {
                        "anat": str(anat.image),
                        "pet": str(pet.image),
                        "label": str(anat.label),
                        "view_of_anat": anat_view,
                        "view_of_pet": functional_view,
                        "use_anat": use_anat,
                        "use_pet": use_pet,
                        "subject_id": subject,
                        "session": session,
                    }
                )
        return items

    def _paired_dataset(self, split: str, budget_bytes: float) -> tuple[CacheDataset, int]:
        """The split's sessions, as many cached as ``budget_bytes`` holds; returns the bytes they take."""
        items = self._paired_items(split)
        if not items:
            raise ValueError(f"no {split} sessions hold the views {self.train_views} (subjects {self.splits[split]})")
        # Flattened: CacheDataset caches up to the first random transform, and a nested Compose counts
        # as random, which would leave nothing cached and re-read every NIfTI each epoch.
        transform = Compose(
            [
                paired_load_transforms(self.intensity, self.train_spacing, label_dtype(self.organ_set)),
                paired_patch_transforms(self.patch_size, self.samples_per_volume),
            ]
        ).flatten()
        cache_num, used = sessions_within(items, budget_bytes, self.train_spacing, self.organ_set.label_dtype.itemsize)
        if cache_num < len(items):
            log.info("%s: %d of %d sessions cached in memory (data.train_cache_gb=%g, shared by train and val); "
                     "the others are read at each visit", split, cache_num, len(items), self.train_cache_gb)
        return CacheDataset(items, transform=transform, cache_num=cache_num, num_workers=None, progress=False), used

    def teardown(self, stage: str) -> None:
        # The trainer keeps its fit loaders after fit: empty their caches so an evaluation that
        # follows holds no training sessions.
        if stage == "fit":
            for dataset in (self._train_ds, self._val_ds):
                if dataset is not None:
                    dataset.set_num = 0
                    dataset.set_data(dataset.data)
            self._train_ds = self._val_ds = None

    def _loader(self, dataset, *, shuffle: bool, batch_size: int) -> DataLoader:
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=shuffle
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # pinned batches cross to the GPU asynchronously; a pageable one makes the host wait
            pin_memory=self._on_cuda(),
        )

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        dataset = self._train_ds
        if self.epoch_batches:
            world = self.trainer.world_size if self.trainer is not None else 1
            dataset = _Repeat(dataset, self.epoch_batches * self.batch_size * world)
        return self._loader(dataset, shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if self._val_ds is None:
            return []
        return self._loader(self._val_ds, shuffle=False, batch_size=self.batch_size)

    # ------------------------------------------------------------------ evaluation
    def _eval_candidates(self) -> list[ScanRecord]:
        subjects, views = set(self.splits["test"]), set(self.eval_views)
        return [r for r in self.manifest if r.subject_id in subjects and r.view in views]

    def eval_records(self, include_finished: bool = False) -> list[ScanRecord]:
        """Test cases in a fixed order: every eval view of every test subject, minus failed or finished ones.

        A multi-channel model (:attr:`channels`) sees a whole session at once: its cases are the
        sessions' anatomical scans, each with the session's PET as a further channel.

        Args:
            include_finished: keep the cases left out by :meth:`exclude_cases` (the run's whole scope).
        """
        self._ensure_manifest()
        failed = {p.case_id for p in self.failed}
        skip = set() if include_finished else self._skip
        records = [r for r in self._eval_candidates() if r.case_id not in failed and r.case_id not in skip]
        if self.channels:
            records = [r for r in records if r.view in ANATOMICAL_VIEWS]
        return records

    def failed_records(self) -> list[tuple[ScanRecord, Problem]]:
        by_case = {r.case_id: r for r in self.manifest}
        subjects = set(self.splits["test"])
        return [
            (by_case[p.case_id], p)
            for p in self.failed
            if p.case_id in by_case and by_case[p.case_id].subject_id in subjects and by_case[p.case_id].view in self.eval_views
        ]

    def _eval_loader(self) -> DataLoader:
        records = self.eval_records()
        if self.trainer is not None and self.trainer.world_size > 1:
            # Shard without padding: each case is evaluated exactly once across ranks.
            records = records[self.trainer.global_rank :: self.trainer.world_size]
        items = [
            {
                "image": self._channel_paths(r) if self.channels else str(r.image),
                "label": str(r.label),
                "view": r.view,
                "subject_id": r.subject_id,
                "session": r.session,
                "case_id": r.case_id,
                "image_path": str(r.image),
                "label_path": str(r.label),
            }
            for r in records
        ]
        channels = max(1, len(self.channels))
        transform = eval_transforms(channels, label_dtype=label_dtype(self.organ_set))
        # A plain Dataset: each whole volume is read when its case comes and dropped once scored.
        prefetch = {"prefetch_factor": 1} if self.num_workers > 0 else {}
        return DataLoader(Dataset(items, transform), batch_size=1, num_workers=self.num_workers, **prefetch)

    def _channel_paths(self, record: ScanRecord) -> list[str]:
        """The session's scans a multi-channel model takes, in its channel order."""
        scans = {r.view: r for r in self.manifest if r.subject_id == record.subject_id and r.session == record.session}
        views = [anatomical_view(record.view) if kind == "anatomical" else pet_view(record.view) for kind in self.channels]
        missing = [v for v in views if v not in scans]
        if missing:
            raise ValueError(f"{record.case_id}: the model takes {', '.join(views)}, but the session has no {', '.join(missing)} scan")
        return [str(scans[v].image) for v in views]

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()


def session_bytes(item: Mapping[str, Any], spacing: Sequence[float] | None, label_bytes: int = 1) -> int:
    """Bytes one cached training session holds: its anatomical scan and PET as float32 and its label
    at ``label_bytes`` per voxel on the label grid (resampled to ``spacing`` mm when given), from the
    label's header."""
    import nibabel as nib
    import numpy as np

    header = nib.load(str(item["label"])).header
    shape = np.asarray(header.get_data_shape()[:3], dtype=np.float64)
    if spacing is not None:
        shape = np.ceil(shape * np.asarray(header.get_zooms()[:3], dtype=np.float64) / np.asarray(spacing, dtype=np.float64))
    return int(np.prod(shape)) * (4 + 4 + int(label_bytes))


def sessions_within(
    items: Sequence[Mapping[str, Any]], budget_bytes: float, spacing: Sequence[float] | None, label_bytes: int = 1
) -> tuple[int, int]:
    """How many of ``items`` (in order) fit in ``budget_bytes`` once cached, and the bytes they take."""
    total = 0
    for n, item in enumerate(items):
        size = session_bytes(item, spacing, label_bytes)
        if total + size > budget_bytes:
            return n, total
        total += size
    return len(items), total


class _Repeat(TorchDataset):
    """``length`` items cycling over ``base``; a shuffled epoch visits every item equally often (+-1)."""

    def __init__(self, base: Any, length: int) -> None:
        if len(base) == 0:
            raise ValueError("epoch_batches: no training sessions to repeat")
        self.base, self.length = base, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.base[index % len(self.base)]
