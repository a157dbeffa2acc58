"""SAT / SAT-Pro (text-prompted universal segmentation) run through the official repository's code.

SAT (Zhao et al., "Large-Vocabulary Segmentation for Medical Images with Text Prompts", npj Digit.
Med. 2025, arXiv 2312.17183; github.com/zhaoziheng/SAT) is not a package: its code is imported from
a local checkout (``code_dir``), with the customised ``dynamic_network_architectures`` it carries in
``model/dynamic-network-architectures-main`` put first on the path for the import only (the one
nnU-Net installs stays in place for everything else). Its top-level packages (``model``, ``data``,
``train``, ``evaluate``) are generic names, so they are imported in a scope and removed from
``sys.modules`` afterwards; the adapter keeps the module objects.

What runs, as the official ``inference.py`` runs it:

- models: ``model.maskformer.Maskformer(vision_backbone, crop_size, [32, 32, 32], False)``
  (``UNET-L`` = SAT-Pro, ``UNET`` = SAT-Nano) and the ``ours`` text encoder
  (``model.knowledge_encoder.Knowledge_Encoder``), both without the DDP wrapper; their checkpoints
  hold ``model_state_dict`` with DDP's ``module.`` prefix and load with ``torch.load(weights_only=True)``.
  The text encoder's BERT-style model (BioLORD-2023-C, an MPNet) is named by its hub id in the
  official code (``AutoModel.from_pretrained("FremyCompany/BioLORD-2023-C")``): here it is built
  from the config and tokenizer files of a local folder (``text_model``) instead, and its weights
  come from SAT's text-encoder checkpoint; nothing is downloaded.
- preprocessing (``data/inference_dataset.py``): RAS, ``Spacingd`` to (1, 1, 3) mm bilinear,
  ``CropForegroundd`` on voxels > 0, the official ``Normalization`` (CT clipped to -500..1000 then
  z-scored; MRI and PET clipped to the 0.5-99.5 percentiles then z-scored), the official
  ``split_3d`` into 288x288x96 windows at 50 % overlap, padding and 3-channel repetition.
- inference (``evaluate/inference_engine.py``): text queries = organ names with the modality
  string, sigmoid per window, the official Gaussian weighting (``compute_gaussian``), average,
  ``> 0.5`` per prompt (fp16 autocast on CUDA, as there; float32 on the CPU).

Modality string (a choice the study makes, stated in ``info.modality_policy``): each view is sent as
a user would describe that image, ``ct`` for CT, ``mri`` for MRI and ``pet`` for both PET views (SAT
knows ``pet``, but its PET training data, autoPET SUV images in SAT-DS, carry the label "tumor"
only: organ prompts on a PET are outside what it learned); the string also selects SAT's
normalisation (the CT window for ``ct``, percentiles otherwise). Override per view with ``modality``.

Then, beyond the official code (which writes its masks on the cropped 1x1x3 mm grid): a voxel
claimed by several prompts goes to the organ with the highest probability; several texts for one
organ are merged by their maximum; the label map goes back onto the input grid by nearest neighbour.

Install: ``pip install 'umd_lightning[sat]'`` (transformers, einops, positional-encodings), clone
the repository, download SAT-Pro (or SAT-Nano) and its text encoder checkpoint from the model card
(huggingface.co/zzh99/SAT), and the config and tokenizer files of FremyCompany/BioLORD-2023-C.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from umd_lightning.extras import MissingExtraError, require_extra
from umd_lightning.models.adapter import CheckpointError, Prediction, load_checkpoint_file
from umd_lightning.models.foundation import FoundationAdapter, ScoreAccumulator, require_path
from umd_lightning.models.resample import labels_to_grid
from umd_lightning.organs import OrganSet

__all__ = ["SATAdapter", "VARIANTS", "import_sat_code", "sat_code_scope"]

log = logging.getLogger(__name__)

#: SAT's variants -> the ``--vision_backbone`` its inference.py takes.
VARIANTS = {"pro": "UNET-L", "nano": "UNET", "UNET-L": "UNET-L", "UNET": "UNET", "UNET-H": "UNET-H"}
#: Official window (``split_3d`` and ``compute_gaussian`` in the official code): H, W, D.
OFFICIAL_WINDOW = (288, 288, 96)
#: Official target spacing (``Spacingd(pixdim=(1, 1, 3))`` in ``data/inference_dataset.py``).
OFFICIAL_SPACING = (1.0, 1.0, 3.0)
#: The modality string sent for each view (text-encoder modality code and normalisation).
DEFAULT_MODALITY = {"CT": "ct", "PET_CT": "pet", "MRI": "mri", "PET_MRI": "pet"}
#: The text encoder's model as the official code names it (a hub id; here only its config and vocab).
TEXT_MODEL_ID = "FremyCompany/BioLORD-2023-C"

# Top-level names the checkout brings; they shadow nothing of ours but are too generic to leave behind.
_SAT_TOP = ("model", "data", "train", "evaluate", "dynamic_network_architectures")
# Files that make a folder a checkout of zhaoziheng/SAT.
_REQUIRED = (
    "model/maskformer.py",
    "model/knowledge_encoder.py",
    "model/text_encoder.py",
    "data/inference_dataset.py",
    "evaluate/inference_engine.py",
    "model/dynamic-network-architectures-main/dynamic_network_architectures/architectures/unet.py",
)
_HINT = "clone github.com/zhaoziheng/SAT and set model.code_dir to the clone"


def _check_code_dir(code_dir: str | Path | None) -> Path:
    """The checkout folder, or a one-line :class:`MissingExtraError` naming it."""
    if code_dir in (None, "", "???"):
        raise MissingExtraError(f"SAT: model.code_dir is not set (the SAT repository's code is needed; {_HINT})")
    root = Path(str(code_dir)).expanduser()
    if not root.is_dir():
        raise MissingExtraError(f"SAT code_dir not found: {root} ({_HINT})")
    missing = [f for f in _REQUIRED if not (root / f).is_file()]
    if missing:
        raise MissingExtraError(f"SAT code_dir {root} is not a checkout of zhaoziheng/SAT (no {missing[0]}; {_HINT})")
    return root


@contextlib.contextmanager
def sat_code_scope(code_dir: str | Path) -> Iterator[Path]:
    """Import SAT's modules from ``code_dir``: its folders first on ``sys.path`` and no clashing modules
    cached, inside the block only; on exit ``sys.path`` and ``sys.modules`` are as they were."""
    root = _check_code_dir(code_dir)
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in _SAT_TOP}
    for n in saved:
        del sys.modules[n]
    old_path = list(sys.path)
    sys.path[:0] = [str(root), str(root / "model" / "dynamic-network-architectures-main")]
    try:
        yield root
    finally:
        for n in [n for n in sys.modules if n.split(".")[0] in _SAT_TOP]:
            del sys.modules[n]
        sys.modules.update(saved)
        sys.path[:] = old_path


def import_sat_code(code_dir: str | Path) -> SimpleNamespace:
    """The official modules the adapter uses (``maskformer``, ``knowledge_encoder``, ``text_tower``,
    ``text_encoder``, ``inference_dataset``, ``inference_engine``), imported from ``code_dir``.

    Raises:
        MissingExtraError: the folder is not a SAT checkout, or a package its code needs is missing.
    """
    names = {
        "maskformer": "model.maskformer",
        "knowledge_encoder": "model.knowledge_encoder",
        "text_tower": "model.text_tower",
        "text_encoder": "model.text_encoder",
        "inference_dataset": "data.inference_dataset",
        "inference_engine": "evaluate.inference_engine",
    }
    with sat_code_scope(code_dir) as root:
        mods: dict[str, ModuleType | Path] = {"root": root}
        for key, mod in names.items():
            try:
                mods[key] = importlib.import_module(mod)
            except ImportError as exc:
                raise MissingExtraError(
                    f"SAT code in {root} cannot be imported ({mod}: {exc}); install the extra: "
                    "pip install 'umd_lightning[sat]'"
                ) from exc
    return SimpleNamespace(**mods)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """``torch.nn.init`` as no-ops while a network is built whose every parameter is then loaded (the
    official He/Xavier init of SAT-Pro's parameters costs minutes on a CPU and is overwritten anyway)."""
    saved = {n: getattr(torch.nn.init, n) for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")}
    for n in saved:
        setattr(torch.nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


@contextlib.contextmanager
def _cuda_current_device(device: torch.device) -> Iterator[None]:
    """The official text tower sends its tokens to ``torch.cuda.current_device()``: answer our device."""
    original = torch.cuda.current_device
    torch.cuda.current_device = lambda: device  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.current_device = original  # type: ignore[assignment]


def _state_dict(path: Path, what: str, drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """``model_state_dict`` of an official checkpoint (weights_only), DDP's ``module.`` prefix removed."""
    obj = load_checkpoint_file(path)
    state = obj.get("model_state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        found = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: no 'model_state_dict' in this {what} checkpoint (found {found})")
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if not any(d in k for d in drop):
            out[k] = v
    return out


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Load strictly where it matters: every parameter and buffer of ours must be in the file with its
    shape (the official ``partial_load`` would silently keep random weights); extra keys are ignored
    as the official loader ignores them (deep-supervision heads, buffers of older transformers)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        keys = missing or wrong
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        kind = "missing" if missing else "of another shape"
        raise CheckpointError(f"{path}: {what} weights {kind}: {keys[:3]}{more} (wrong variant or file?)")
    extra = [k for k in state if k not in own]
    if extra:
        log.info("%s: %d keys not used by the %s (as the official loader): %s", path, len(extra), what, extra[:5])
    module.load_state_dict({k: state[k] for k in own}, strict=True)


class SATAdapter(FoundationAdapter):
    """SAT-Pro / SAT-Nano with text prompts (``labelmaps/sat_text.yaml``), through the official code.

    Args:
        checkpoint: SAT segmentation checkpoint (``SAT_Pro.pth`` / ``SAT_Nano.pth``).
        text_encoder: SAT text-encoder checkpoint (the one released with that model).
        text_model: local folder with the config and tokenizer files of BioLORD-2023-C (the language
            model inside SAT's text encoder; its weights come from ``text_encoder``).
        code_dir: a checkout of github.com/zhaoziheng/SAT.
        variant: ``pro`` (``UNET-L``), ``nano`` (``UNET``) or a ``--vision_backbone`` name.
        name: name in results tables.
        label_map: text prompts -> organ names.
        window: sliding-window size (H, W, D); the official 288x288x96 (smaller only for tests).
        batch_size: windows per forward pass (``--batchsize_3d``; results do not depend on it).
        max_queries: prompts per text-encoder batch (``--max_queries``).
        modality: view -> the modality string sent with the prompts (``ct``, ``mri``, ``pet``), which
            also picks the normalisation; default :data:`DEFAULT_MODALITY`.
        reported_dice: Dice its paper reports.

    Raises:
        MissingExtraError: ``code_dir`` is missing or not a SAT checkout, or its imports fail.
        CheckpointError: a checkpoint or the text-model folder is missing or does not fit.
    """

    def __init__(
        self,
        checkpoint: str,
        text_encoder: str,
        text_model: str,
        code_dir: str,
        variant: str = "pro",
        name: str = "sat",
        label_map: str = "sat_text",
        window: Sequence[int] = OFFICIAL_WINDOW,
        batch_size: int = 2,
        max_queries: int = 256,
        modality: Mapping[str, str] | None = None,
        reported_dice: Mapping[str, float] | None = None,
    ) -> None:
        root = _check_code_dir(code_dir)
        if variant not in VARIANTS:
            raise ValueError(f"SAT variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        window = tuple(int(w) for w in window)
        if len(window) != 3 or any(w <= 0 or w % 32 for w in window):
            raise ValueError(f"SAT window must be 3 multiples of 32 (the backbone downsamples by 32), got {window}")
        seg_path = require_path(checkpoint, "SAT checkpoint")
        text_path = require_path(text_encoder, "SAT text-encoder checkpoint")
        lm_dir = require_path(text_model, "SAT text model folder (BioLORD-2023-C config and tokenizer)", is_dir=True)
        require_path(lm_dir / "config.json", "SAT text model config.json")
        self.modality = {**DEFAULT_MODALITY, **{str(k).upper(): str(v).lower() for k, v in (modality or {}).items()}}
        pet = self.modality["PET_CT"]
        super().__init__(
            name,
            prompt_kind="text",
            reported_dice=reported_dice,
            label_map=label_map,
            preprocessing=(
                "SAT's own (data/inference_dataset.py, evaluate/inference_engine.py): RAS, 1x1x3 mm (bilinear), "
                "cropped to voxels > 0, CT clipped to -500..1000 HU then z-scored, MRI and PET clipped to their "
                f"0.5-99.5 percentiles then z-scored; {'x'.join(map(str, window))} windows at 50% overlap with "
                "Gaussian weights; sigmoid > 0.5 per text prompt (organ name + modality); overlaps to the most "
                "probable organ; labels back to the input grid by nearest neighbour"
            ),
            modality_policy=(
                f"prompts carry the modality a user would give for the image: CT '{self.modality['CT']}', "
                f"MRI '{self.modality['MRI']}', PET (PET/CT and PET/MRI) '{pet}' (SAT's PET training data hold tumour "
                "labels only); "
                "the modality also picks SAT's normalisation (CT window or percentiles)"
            ),
        )
        self.code_dir, self.variant, self.window = str(root), str(variant), window
        self.batch_size, self.max_queries = int(batch_size), int(max_queries)
        self.sat = import_sat_code(root)
        transformers = require_extra("transformers", "sat", needed_by="SAT")

        class _FromConfig:
            """Stands in for AutoModel in the official text tower: the model from the local config only."""

            @staticmethod
            def from_pretrained(path: str, *args: Any, **kwargs: Any) -> torch.nn.Module:
                cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
                return transformers.AutoModel.from_config(cfg)

        with sat_code_scope(root), _no_init():
            self.net = self.sat.maskformer.Maskformer(VARIANTS[variant], list(window), [32, 32, 32], False)
            tower, original = self.sat.text_tower, self.sat.text_tower.AutoModel
            tower.AutoModel = _FromConfig
            try:
                self.text_net = self.sat.knowledge_encoder.Knowledge_Encoder(biolord_checkpoint=str(lm_dir))
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"SAT text model folder {lm_dir}: cannot build the model or tokenizer ({first})") from exc
            finally:
                tower.AutoModel = original
        _load_into(self.net, _state_dict(seg_path, "SAT"), seg_path, f"SAT ({VARIANTS[variant]})")
        # the official Text_Encoder drops these before loading
        text_state = _state_dict(text_path, "text encoder", drop=("atlas_tower", "temperature"))
        _load_into(self.text_net, text_state, text_path, "text encoder")
        self.net.eval()
        self.text_net.eval()
        self.checkpoint, self.text_encoder_path = str(seg_path), str(text_path)

    # ------------------------------------------------------------------ SAT's pipeline
    def modality_for(self, view: str) -> str:
        """The modality string sent for a view (``ct``, ``mri``, ``pet``)."""
        key = str(view).upper()
        if key not in self.modality:
            raise ValueError(f"SAT: no modality string for view {view!r} (known: {sorted(self.modality)})")
        return self.modality[key]

    def preprocess(self, image: torch.Tensor, affine: Any, modality: str) -> tuple[torch.Tensor | None, np.ndarray]:
        """SAT's ``load_image`` from ``Orientationd`` on (the input is RAS already): (1, 1, 3) mm,
        foreground crop, the official ``Normalization``. Returns (C, h, w, d) and the grid's affine;
        None when nothing is > 0 (no foreground to crop to)."""
        from monai.data import MetaTensor
        from monai.transforms import CropForegroundd, Spacingd

        mt = MetaTensor(image.detach().cpu().float(), affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64))
        d = Spacingd(keys=["image"], pixdim=OFFICIAL_SPACING, mode=("bilinear"))({"image": mt})
        if not bool((d["image"] > 0).any()):
            return None, np.asarray(d["image"].affine, dtype=np.float64)
        d = CropForegroundd(keys=["image"], source_key="image")(d)
        img = d["image"]
        return self.sat.inference_dataset.Normalization(img, modality), np.asarray(img.affine, dtype=np.float64)

    def _batches(self, img: torch.Tensor) -> list[tuple[torch.Tensor, list[list[int]]]]:
        """The official ``split_3d`` windows, batched, padded and repeated to 3 channels as in
        ``Inference_Dataset.__getitem__``."""
        ds = self.sat.inference_dataset
        patches, coords = ds.split_3d(img, crop_size=list(self.window))
        holder = SimpleNamespace(patch_size=list(self.window))
        out = []
        for s in range(0, len(patches), self.batch_size):
            patch = torch.stack(patches[s : s + self.batch_size], dim=0)
            patch = ds.Inference_Dataset._pad_if_necessary(holder, patch)
            if patch.shape[1] == 1:
                patch = ds.repeat(patch, "b c h w d -> b (c r) h w d", r=3)
            out.append((patch, coords[s : s + self.batch_size]))
        return out

    @torch.no_grad()
    def probabilities(self, img: torch.Tensor, texts: Sequence[str], modality: str) -> torch.Tensor:
        """The official inference engine on one preprocessed image: (n_texts, h, w, d) probabilities
        (Gaussian-weighted average of the windows' sigmoids), before its ``> 0.5``."""
        ds, engine = self.sat.inference_dataset, self.sat.inference_engine
        device = self.device
        split_labels, _ = ds.Inference_Dataset._split_labels(SimpleNamespace(max_queries=self.max_queries), list(texts))
        split_labels = [[t.lower() for t in chunk] for chunk in split_labels]
        mod = ds.Inference_Dataset._merge_modality(None, modality.lower())
        # Text_Encoder.forward without its DDP wrapper (which moved the modality codes to the device)
        holder = SimpleNamespace(model=lambda text, code: self.text_net(text, code.to(device)))
        gaussian = torch.tensor(engine.compute_gaussian(tuple(self.window))).to(device)
        _, h, w, d = img.shape
        prediction = torch.zeros((len(texts), h, w, d))
        accumulation = torch.zeros((h, w, d))  # the same for every prompt: kept once
        amp = torch.autocast("cuda") if device.type == "cuda" else contextlib.nullcontext()
        with amp, _cuda_current_device(device):
            queries = [self.sat.text_encoder.Text_Encoder.forward(holder, chunk, mod) for chunk in split_labels]
            for patches, coords in self._batches(img):
                pred = torch.sigmoid(self.net(queries=queries, image_input=patches.to(device=device))).detach()
                for b, (y1, y2, x1, x2, z1, z2) in enumerate(coords):
                    g = gaussian[: y2 - y1, : x2 - x1, : z2 - z1]
                    prediction[:, y1:y2, x1:x2, z1:z2] += (pred[b, :, : y2 - y1, : x2 - x1, : z2 - z1] * g).cpu()
                    accumulation[y1:y2, x1:x2, z1:z2] += g.cpu()
        return prediction / accumulation

    def prompt_masks(self, image: torch.Tensor, meta: Mapping[str, Any], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each text prompt's mask (``> 0.5``, what the official engine writes per prompt), mapped back
        onto the input grid. image: (1, 1, X, Y, Z) as :meth:`predict_volume` takes it."""
        modality = self.modality_for(meta.get("view", "CT"))
        img, sat_affine = self.preprocess(image[0], meta["affine"], modality)
        shape = tuple(image.shape[-3:])
        if img is None:
            return {t: torch.zeros(shape, dtype=torch.bool) for t in texts}
        probs = self.probabilities(img, texts, modality)
        return {
            t: labels_to_grid((probs[i] > 0.5).to(torch.uint8), sat_affine, meta["affine"], shape).bool()
            for i, t in enumerate(texts)
        }

    def text_prompts(self, organ_set: OrganSet, modality: str) -> list[dict[str, Any]]:
        return [
            {"kind": "text", "organ": o, "label": organ_set.ids[o], "modality": modality,
             "texts": [str(t) for t in self.source_keys(o)]}
            for o in self.organs_predicted(organ_set)
        ]  # fmt: skip

    @torch.no_grad()
    def predict_volume(
        self,
        image: torch.Tensor,
        meta: Mapping[str, Any],
        organ_set: OrganSet,
        reference: torch.Tensor | None = None,
    ) -> Prediction:
        if image.shape[1] != 1:
            raise ValueError(f"SAT takes one image channel, got {image.shape[1]}")
        modality = self.modality_for(meta.get("view", "CT"))
        prompts = self.text_prompts(organ_set, modality)
        shape = tuple(image.shape[-3:])
        img, sat_affine = self.preprocess(image[0], meta["affine"], modality)
        if img is None or not prompts:
            return Prediction(labels=torch.zeros(shape, dtype=torch.uint8), prompts=prompts)
        texts = [t for p in prompts for t in p["texts"]]
        probs = self.probabilities(img, texts, modality)
        acc = ScoreAccumulator(probs.shape[1:], threshold=0.5)  # > 0.5 as the official engine
        i = 0
        for p in prompts:
            n = len(p["texts"])
            acc.add(p["label"], probs[i : i + n].amax(dim=0))
            i += n
        labels = labels_to_grid(acc.labels, sat_affine, meta["affine"], shape)
        return Prediction(labels=labels, prompts=prompts)
