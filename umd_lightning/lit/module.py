"""SegmentationModule: DiceCE on paired patches in fit; in test, one case at a time: whole-volume adapter
inference, per-case metrics, and the case journaled (``<run>/cases/<case_id>.json``).

The module keeps no results between hooks: the run (:func:`umd_lightning.lit.run.run`) builds the
results table from the journal on disk after ``trainer.test()``, so a table exists whatever stopped
the run, and an empty test loop (every case already journaled) costs nothing."""

from __future__ import annotations

import json
import logging
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import lightning as L
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from umd_lightning.data.niigz import save_nifti_atomic
from umd_lightning.data.transforms import label_dtype
from umd_lightning.lit.finetune import freeze_parameters, frozen_modules, load_matching
from umd_lightning.metrics.failure import case_metrics_and_failure
from umd_lightning.metrics.functional import failed_rows, metrics_metadata, warm_kernels
from umd_lightning.models.resample import labels_to_grid, needs_resampling, to_spacing, voxel_spacing
from umd_lightning.organs import get_organ_set, is_pet
from umd_lightning.results import write_case

log = logging.getLogger(__name__)

# The module's batch-transfer hooks (slimmed transfer, device augmentation) are meant to win over the data module's.
warnings.filterwarnings("ignore", message=r"You have overridden `(on_after_batch_transfer|transfer_batch_to_device)` in")

META_KEYS = ("subject_id", "session", "view", "case_id", "image_path", "label_path")


class SegmentationModule(L.LightningModule):
    """Trains a network on patches and evaluates any adapter on whole volumes.

    Args:
        model: a :class:`~umd_lightning.models.adapter.SegmentationAdapter`; for fit it must be an
            ``nn.Module`` whose forward gives logits (B, K, *patch).
        organ_set: organ set name or ``{id: name}``.
        train_views: views whose images feed the loss (the anatomical scan and/or its PET).
        optimizer: ``functools.partial`` of a torch optimizer (Hydra ``_partial_: true``).
        scheduler: optional partial of a LR scheduler.
        scheduler_interval: step the scheduler every ``epoch`` or every optimizer ``step`` (few-shot
            recipes train for a fixed number of steps whatever their epoch length).
        consistency_weight: weight of the paired consistency loss (mean squared difference of softmax
            outputs on the anatomical patch and its PET); 0 disables it.
        nsd_tolerance: NSD tolerance in mm (one value or per organ).
        empty_policy: empty-mask policy of the metrics (``worst`` or ``exclude``).
        hd_percentile: Hausdorff percentile.
        save_predictions: write each case's label map as NIfTI into ``<run>/predictions``.
        results_dir: where tables, predictions and the per-case journal go (default: the trainer's
            ``default_root_dir``).
        augment: a batch augmentation run on the device after transfer, in fit only (e.g.
            :class:`~umd_lightning.lit.augment.DeviceAugment`); None = none.
        init_checkpoint: initialise the network from the matching entries of this checkpoint (a
            foundation model's encoder); a whole checkpoint of the same network is ``model.checkpoint``.
        init_key: the checkpoint entry that holds the state dict.
        init_rename: ``{source_prefix: target_prefix}`` for the checkpoint's names.
        init_strict: every network entry must come from ``init_checkpoint``.
        freeze: parameter-name prefixes of the network (``model.net``) kept fixed, or ``encoder``.
    """

    def __init__(
        self,
        model: nn.Module,
        organ_set: str | Mapping[int, str] = "umd13",
        train_views: Sequence[str] = ("CT",),
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        consistency_weight: float = 0.0,
        nsd_tolerance: float | Mapping[str, float] = 2.0,
        empty_policy: str = "worst",
        hd_percentile: float = 95.0,
        save_predictions: bool = True,
        results_dir: str | None = None,
        augment: nn.Module | None = None,
        init_checkpoint: str | None = None,
        init_key: str | None = None,
        init_rename: Mapping[str, str] | None = None,
        init_strict: bool = False,
        freeze: Sequence[str] = (),
    ) -> None:
        super().__init__()
        # last.ckpt must load with weights_only=True, which refuses pickled callables (the optimizer and
        # scheduler partials stay out of the hyperparameters) and OmegaConf containers (made plain here:
        # save_hyperparameters reads these locals).
        organ_set, nsd_tolerance = _plain_value(organ_set), _plain_value(nsd_tolerance)
        train_views, freeze = [str(v) for v in train_views], [str(f) for f in (freeze or ())]
        init_rename = {str(k): str(v) for k, v in (_plain_value(init_rename) or {}).items()}
        self.save_hyperparameters(ignore=["model", "augment", "optimizer", "scheduler"])
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.model = model
        self.augment = augment
        net = getattr(model, "net", model)
        if init_checkpoint:
            load_matching(net, init_checkpoint, key=init_key, rename=init_rename, strict=init_strict)
        self.frozen = freeze_parameters(net, freeze)
        self._frozen_modules = frozen_modules(net) if self.frozen else []
        self.organ_set = get_organ_set(dict(organ_set) if isinstance(organ_set, Mapping) else organ_set)
        self._label_dtype = label_dtype(self.organ_set)
        self.train_views = tuple(train_views)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.metric_kwargs = dict(
            nsd_tolerance=dict(nsd_tolerance) if isinstance(nsd_tolerance, Mapping) else float(nsd_tolerance),
            empty_policy=empty_policy,
            hd_percentile=float(hd_percentile),
        )
        metrics_metadata(**self.metric_kwargs)  # an unknown option stops here, not at the first case

    # ------------------------------------------------------------------ fit
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()  # frozen batch norms keep their statistics
        return self

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Patch batches cross to the device slimmed: an image no sample trains on stays behind (the PET
        # of a CT-only recipe), and the label travels as uint8 (an eighth of int64's bytes).
        # The use flags stay on the host: deciding on device values would wait for the GPU every step.
        if isinstance(batch, Mapping) and "anat" in batch and "use_anat" in batch:
            batch = dict(batch)
            flags = {k: _host_bool(batch.pop(k)) for k in ("use_anat", "use_pet")}
            for key, use in (("anat", "use_anat"), ("pet", "use_pet")):
                if batch.get(key) is not None and not bool(flags[use].any()):
                    batch[key] = None
            label = batch.get("label")
            if isinstance(label, torch.Tensor) and not label.is_floating_point():
                batch["label"] = label.to(self._label_dtype)
            return {**super().transfer_batch_to_device(batch, device, dataloader_idx), **flags}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Patch batches only: a whole evaluation volume keeps its small label (int64 would be 8x the size).
        patches = isinstance(batch, Mapping) and "anat" in batch
        label = batch.get("label") if patches else None
        if isinstance(label, torch.Tensor) and not label.is_floating_point() and label.dtype != torch.long:
            batch = {**batch, "label": label.long()}  # the loss wants class indices as int64
        # The expensive augmentation (affine resampling) runs here, on the device, not in CPU workers.
        trainer = self._trainer  # the property raises when no trainer is attached
        if self.augment is not None and trainer is not None and trainer.training and isinstance(batch, Mapping):
            return self.augment(batch)
        return batch

    def _patch_logits(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stack the patches whose views are trained; return logits, labels and the anat/pet row indices
        of samples trained on both (for the consistency loss)."""
        use_anat, use_pet = _host_bool(batch["use_anat"]), _host_bool(batch["use_pet"])
        anat, pet, label = (_plain(batch.get(k)) for k in ("anat", "pet", "label"))
        inputs, labels = [], []
        # an image no sample trains on may be absent (left on the host by transfer_batch_to_device)
        for x, use in ((anat, use_anat), (pet, use_pet)):
            if not bool(use.any()):
                continue
            if bool(use.all()):
                inputs.append(x)
                labels.append(label)
            else:
                rows = torch.nonzero(use).flatten().to(x.device)
                inputs.append(x.index_select(0, rows))
                labels.append(label.index_select(0, rows))
        inputs_t = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        labels_t = labels[0] if len(labels) == 1 else torch.cat(labels)
        both = use_anat & use_pet
        anat_rows = torch.cumsum(use_anat.long(), 0)[both] - 1
        pet_rows = int(use_anat.sum()) + torch.cumsum(use_pet.long(), 0)[both] - 1
        return self.model(inputs_t), labels_t, anat_rows, pet_rows

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        logits, labels, anat_rows, pet_rows = self._patch_logits(batch)
        loss = self.loss(logits, labels)
        self.log("train/dicece", loss, prog_bar=True, batch_size=len(labels))
        weight = self.hparams.consistency_weight
        if weight > 0 and len(anat_rows):
            probs = torch.softmax(logits.float(), dim=1)
            consistency = F.mse_loss(probs[anat_rows], probs[pet_rows])
            self.log("train/consistency", consistency, batch_size=len(anat_rows))
            loss = loss + weight * consistency
        self.log("train/loss", loss, batch_size=len(labels))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits, labels, _, _ = self._patch_logits(batch)
        self.log("val/loss", self.loss(logits, labels), prog_bar=True, sync_dist=True, batch_size=len(labels))
        pred = logits.argmax(1)
        ref = labels[:, 0]
        dices = []
        for organ_id in self.organ_set.labels:
            p, r = pred == organ_id, ref == organ_id
            denom = p.sum() + r.sum()
            if denom > 0:
                dices.append(2.0 * (p & r).sum() / denom)
        if dices:
            self.log("val/dice", torch.stack(dices).mean(), prog_bar=True, sync_dist=True, batch_size=len(labels))

    def configure_optimizers(self):
        make_opt = self.make_optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-3))
        optimizer = make_opt(params=[p for p in self.parameters() if p.requires_grad])
        if self.make_scheduler is None:
            return optimizer
        interval = self.hparams.get("scheduler_interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.make_scheduler(optimizer=optimizer), "interval": interval},
        }

    # ------------------------------------------------------------------ evaluation
    @property
    def results_path(self) -> Path:
        return Path(self.hparams.results_dir or self.trainer.default_root_dir)

    def _predict_case(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any], np.ndarray]:
        """Whole-volume labels (D, H, W) on the evaluation grid, plus the prompts and the grid's affine.

        The image comes at its stored dtype (an int16 CT); it becomes float32 once, on the model's grid
        (one trilinear pass from the label grid) or, for a model without a spacing, as it enters the model.
        """
        image = batch["image"][0].cpu()  # (C, D, H, W) MetaTensor on the RAS label grid
        affine = np.asarray(image.affine, dtype=np.float64)
        info = self.model.info
        meta = {k: batch[k][0] for k in META_KEYS if k in batch}
        meta.update(spacing=voxel_spacing(affine), affine=affine)
        model_image = image
        if needs_resampling(affine, info.target_spacing):
            model_image = to_spacing(image, info.target_spacing)
        reference = None
        if info.oracle:
            reference = batch["label"][0, 0].cpu()
            if model_image is not image:
                reference = labels_to_grid(reference, affine, model_image.affine, model_image.shape[1:])
        pred = self.model.predict_volume(_plain(model_image)[None].float(), meta, self.organ_set, _plain(reference))
        labels = pred.labels.cpu().to(self._label_dtype)  # organ ids: a clinical label grid is 8x smaller than in int64
        if model_image is not image:
            model_affine = model_image.affine
            del model_image, reference  # freed before the labels grow back to the label grid
            labels = labels_to_grid(labels, model_affine, affine, image.shape[1:])
        return labels, {"prompts": pred.prompts}, affine

    def on_test_start(self) -> None:
        warm_kernels()  # numba's start-up runs beside the first case's network, not after it

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        meta = {k: batch[k][0] for k in META_KEYS if k in batch}
        extra = self.case_identity()
        try:
            labels, prompts, affine = self._predict_case(batch)
            reference = _plain(batch["label"][0, 0]).cpu()
            suv = batch["image"][0, 0] if is_pet(meta["view"]) else None  # SUV on the label grid (eval_transforms)
            # The prediction is compressed to disk while the case is scored: deflate runs without the
            # GIL, so at clinical size it hides in the scoring's single-threaded stretches.
            with ThreadPoolExecutor(1) as saver:
                saved = None
                if self.hparams.save_predictions:
                    saved = saver.submit(self._save_prediction, labels, affine, meta["case_id"])
                scores = case_metrics_and_failure(
                    labels,
                    reference,
                    voxel_spacing(affine),
                    self.organ_set.labels,
                    suv=suv,
                    organs_predicted=self.model.organs_predicted(self.organ_set),
                    workers=torch.get_num_threads(),  # organs and surface searches get the threads the network had
                    **self.metric_kwargs,
                )
                pred_path = str(saved.result()) if saved is not None else ""
            case = {**meta, **extra, "prediction": pred_path, "prompts": json.dumps(prompts["prompts"])}
        except Exception as exc:  # noqa: BLE001 - one broken case must not cost the others
            log.error("case %s failed: %s\n%s", meta.get("case_id"), exc, traceback.format_exc())
            scores, case = failed_rows(self.organ_set.labels, f"{type(exc).__name__}: {exc}"), {**meta, **extra}
        # journaled atomically as soon as it is scored: a killed run resumes after the last finished case
        write_case(self.results_path, meta["case_id"], [{**case, **row} for row in scores])

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        labels, prompts, affine = self._predict_case(batch)
        case_id = batch["case_id"][0]
        path = self._save_prediction(labels, affine, case_id)
        return {"case_id": case_id, "prediction": str(path), **prompts}

    def _save_prediction(self, labels: torch.Tensor, affine: np.ndarray, case_id: str) -> Path:
        out = self.results_path / "predictions" / f"{case_id}.nii.gz"
        img = nib.Nifti1Image(labels.numpy().astype(self.organ_set.label_dtype, copy=False), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        save_nifti_atomic(img, out)
        return out

    def results_metadata(self) -> dict[str, Any]:
        """What the results table's metadata says about this module: metric conventions, organ set,
        the model's description and the evaluation grid."""
        return {
            **metrics_metadata(**self.metric_kwargs),
            "organ_set": self.organ_set.name,
            "organs": list(self.organ_set.organs),
            **self.model.info.as_row(),
            "eval_grid": "label grid (re-oriented to RAS); PET resampled onto it with trilinear interpolation",
        }

    def case_identity(self) -> dict[str, Any]:
        """The model columns every row of this module's cases carries."""
        info = self.model.info
        return {"model": info.name, "prompt_kind": info.prompt_kind, "oracle": bool(info.oracle)}


def _host_bool(x: Any) -> torch.Tensor:
    """A per-sample flag as a bool tensor on the host."""
    return torch.as_tensor(x).detach().to("cpu", torch.bool).flatten()


def _plain_value(x: Any) -> Any:
    """OmegaConf containers (what Hydra passes) as plain dicts and lists."""
    from omegaconf import Container, OmegaConf

    return OmegaConf.to_container(x, resolve=True) if isinstance(x, Container) else x


def _plain(x: torch.Tensor | None) -> torch.Tensor | None:
    """A plain tensor: MONAI's MetaTensor routes every op through Python and slows networks many-fold."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x
