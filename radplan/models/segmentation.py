"""3-D lesion segmentation: MONAI networks and transforms trained with Lightning, tracked in MLflow.

Inputs are (CT image, lesion label) NIfTI pairs already resampled to the
training spacing (``normalized_volumes`` + ``lesion_masks``). Labels may hold
several lesion ids; the model learns lesion vs. background (any label > 0).

Pipeline (the recipe; benchmarks/bench_segmentation.py measures it on held-out synthetic patients)
- MONAI dictionary transforms: load (nibabel), channel first, CT soft-tissue
  HU window scaled to [0, 1], crop to the body (voxels above the window
  floor), pad to the ROI, random ROI crops centred on lesion voxels and on
  body voxels outside lesions in the ratio ``pos_samples : neg_samples``
  (2 : 1; candidate centres cached per volume), random flips on all three
  axes, small intensity jitter; ``CacheDataset`` caches the deterministic part.
- MONAI ``UNet`` (or ``SegResNet``) in a ``LightningModule`` trained with
  Dice (over the batch) + cross-entropy, AdamW and a cosine learning rate over
  the epochs, or over a time budget (``max_train_seconds`` wall clock,
  ``max_train_cpu_seconds`` process CPU time) when one is set; seeds fixed
  through ``monai.utils.set_determinism`` and ``lightning.seed_everything``.
  Mixed precision where CUDA runs it (``for_device(True)``).
- Inference: the body's bounding box only (voxels above the HU window floor;
  outside it the input is what padding adds anyway), in Gaussian-weighted
  overlapping tiles of the training ROI; argmax, then :func:`postprocess_mask` drops connected components below
  ``min_lesion_volume_mm3`` (a pure function the ONNX path calls too).
- Held-out validation split by image (never by patch); validation Dice is
  MONAI Dice (foreground only) of post-processed whole-image predictions,
  every ``val_every_n_epochs`` epochs and once after training. The same
  function scores the new model and the current champion on the same
  validation images for the champion/challenger decision.
  :func:`overlap_metrics` (Dice, HD95 in mm), :func:`lesion_metrics` (per
  true lesion) and :func:`bootstrap_mean_ci` (patient-clustered bootstrap)
  serve the benchmark.
- MLflow: parameters, per-epoch ``train_loss`` / ``val_dice``, the network via
  ``mlflow.pytorch`` with a tensor signature, registration through
  :mod:`radplan.models.registry`.

The same code runs on CUDA when available (``SegmentationTrainingConfig.for_device``
gives larger defaults there) and on CPU otherwise.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import highdicom as hd
import lightning as L
import mlflow
import mlflow.pytorch
import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from mlflow.models import infer_signature
from monai.data import CacheDataset, DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, compute_dice, compute_hausdorff_distance
from monai.networks.nets import SegResNet, UNet
from monai.networks.utils import one_hot
from monai.transforms import (
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    Lambdad,
    LoadImaged,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.utils import set_determinism
from pydicom.sr.codedict import codes
from scipy import ndimage

from radplan.errors import RadplanInputError
from radplan.imaging.derived import derived_uid, slice_position
from radplan.lake import atomic_path
from radplan.models import registry
from radplan.models.evaluation import bootstrap_weights

IMAGE_KEY = "image"
LABEL_KEY = "label"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class SegmentationTrainingConfig:
    """Everything that defines a segmentation training run (all logged as MLflow params)."""

    roi_size: tuple[int, int, int] = (48, 48, 32)
    # Expected voxel spacing of the inputs (they are resampled upstream); None skips the check.
    spacing_mm: float | None = 1.5
    # CT soft-tissue window (HU) mapped to [0, 1]; lesions sit inside it, air and bone saturate.
    hu_min: float = -200.0
    hu_max: float = 300.0
    max_epochs: int = 10
    batch_size: int = 2
    samples_per_volume: int = 4
    # Crop centres: pos_samples : neg_samples between lesion voxels and body voxels outside lesions.
    pos_samples: float = 2.0
    neg_samples: float = 1.0
    learning_rate: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.25
    # Whole-image sliding-window validation is the costly part of a CPU epoch; the final Dice is always computed.
    val_every_n_epochs: int = 5
    cache_rate: float = 1.0
    network: str = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    sw_batch_size: int = 4
    sw_overlap: float = 0.25
    num_workers: int = 0
    # Lightning precision: "16-mixed" only where CUDA runs it (for_device); CPU stays "32-true".
    precision: str = "32-true"
    # Budgets that end the fit before max_epochs (None: none): wall-clock seconds, and CPU seconds of this process
    # (all threads; a dedicated 2-core machine gives 2 per wall second, a shared one fewer). With a budget the
    # cosine learning rate anneals over the budget's elapsed fraction instead of over the epochs.
    max_train_seconds: float | None = None
    max_train_cpu_seconds: float | None = None
    # A fit that is part of a longer training (a federated round's local epochs): its cosine learning rate continues
    # one schedule of schedule_epochs_total epochs from epoch schedule_epochs_before, rather than annealing within the
    # fit and restarting at the full rate in the next one. None: the fit is the whole schedule.
    schedule_epochs_before: int = 0
    schedule_epochs_total: int | None = None
    # Post-processing: predicted connected components (26-connectivity) below this volume are dropped.
    # The generator's smallest lesion (radius 6 mm x 0.8 shrunk to 0.55 at follow-up) is ~75 mm3.
    min_lesion_volume_mm3: float = 30.0

    def __post_init__(self) -> None:
        if self.network not in ("unet", "segresnet"):
            raise ValueError(f"network must be 'unet' or 'segresnet', not {self.network!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.precision not in ("32-true", "16-mixed", "bf16-mixed"):
            raise ValueError(f"precision must be '32-true', '16-mixed' or 'bf16-mixed', not {self.precision!r}")
        if self.schedule_epochs_before < 0 or (self.schedule_epochs_total is not None and self.schedule_epochs_total < 1):
            raise ValueError("schedule_epochs_before must be >= 0 and schedule_epochs_total >= 1")
        if self.min_lesion_volume_mm3 < 0 or self.pos_samples < 0 or self.neg_samples < 0 or self.pos_samples + self.neg_samples == 0:
            raise ValueError("min_lesion_volume_mm3, pos_samples and neg_samples must be >= 0, pos + neg > 0")
        # Sliding-window tiles must survive every down-sampling step.
        factor = int(np.prod(self.strides)) if self.network == "unet" else 8
        if any(size % factor for size in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must be divisible by {factor} for this network")

    @classmethod
    def for_device(cls, cuda: bool) -> "SegmentationTrainingConfig":
        """CPU: the defaults, sized for 2 cores (minutes). CUDA: larger ROI, wider UNet, more epochs, mixed precision."""
        if not cuda:
            return cls()
        return cls(
            roi_size=(96, 96, 64),
            max_epochs=100,
            batch_size=4,
            samples_per_volume=4,
            learning_rate=1e-3,
            val_every_n_epochs=5,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
            sw_batch_size=8,
            sw_overlap=0.5,
            num_workers=4,
            precision="16-mixed",
        )

    def to_params(self) -> dict[str, str]:
        return {name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "SegmentationTrainingConfig":
        """Rebuild the config a run logged (unknown or missing keys fall back to defaults)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, text in params.items():
            if name in known:
                value = json.loads(text)
                values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


# ---------------------------------------------------------------- transforms


def _binarize_label(label: torch.Tensor) -> torch.Tensor:
    """Any lesion id becomes foreground 1."""
    return (label > 0).to(torch.uint8)


def _inside_window(image: torch.Tensor) -> torch.Tensor:
    """Body voxels: above the floor of the HU window (image already scaled to [0, 1])."""
    return image > 0


def _base_transforms(config: SegmentationTrainingConfig, keys: Sequence[str]) -> list:
    transforms = [
        LoadImaged(keys=list(keys), reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys=list(keys)),
        EnsureTyped(keys=list(keys), dtype=torch.float32, track_meta=True),
        ScaleIntensityRanged(keys=IMAGE_KEY, a_min=config.hu_min, a_max=config.hu_max, b_min=0.0, b_max=1.0, clip=True),
    ]
    if LABEL_KEY in keys:
        transforms.append(Lambdad(keys=LABEL_KEY, func=_binarize_label))
    return transforms


def training_transforms(config: SegmentationTrainingConfig):
    keys = [IMAGE_KEY, LABEL_KEY]
    return Compose(
        _base_transforms(config, keys)
        + [
            CropForegroundd(keys=keys, source_key=IMAGE_KEY, select_fn=_inside_window, allow_smaller=True),
            SpatialPadd(keys=keys, spatial_size=config.roi_size),
            # Crop-centre candidates computed once per volume (cached with the volume), not per crop.
            FgBgToIndicesd(keys=LABEL_KEY, image_key=IMAGE_KEY, image_threshold=0.0),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key=LABEL_KEY,
                spatial_size=config.roi_size,
                pos=config.pos_samples,
                neg=config.neg_samples,
                num_samples=config.samples_per_volume,
                # Negative centres inside the body (tissue that resembles lesions, image > 0); patches still reach air.
                fg_indices_key=f"{LABEL_KEY}_fg_indices",
                bg_indices_key=f"{LABEL_KEY}_bg_indices",
            ),
            DeleteItemsd(keys=[f"{LABEL_KEY}_fg_indices", f"{LABEL_KEY}_bg_indices"]),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys=IMAGE_KEY, factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=0.05, prob=0.5),
        ]
    )


def evaluation_transforms(config: SegmentationTrainingConfig, with_label: bool = True):
    """Whole image on its own grid (no crop, no reorientation): predictions map 1:1 to input voxels."""
    return Compose(_base_transforms(config, [IMAGE_KEY, LABEL_KEY] if with_label else [IMAGE_KEY]))


# ---------------------------------------------------------------- network and Lightning module


def build_network(config: SegmentationTrainingConfig) -> torch.nn.Module:
    if config.network == "segresnet":
        return SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=config.channels[0])
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
    )


def nonzero_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box (one slice per axis) of the nonzero elements of ``mask``; None when there are none."""
    mask = np.asarray(mask) != 0
    if not mask.any():
        return None
    spans = (np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim))
    return tuple(slice(int(present[0]), int(present[-1]) + 1) for present in spans)


def body_box(image: torch.Tensor) -> tuple[slice, ...] | None:
    """Bounding box (spatial slices) of the voxels above the HU window floor in any image of the batch; None if none.

    Outside it every voxel is 0 after windowing, which is also the value sliding-window inference pads with, so
    cropping to it leaves what the network sees unchanged (only the tile grid moves) and skips the air around the
    body. Training crops the same way (``CropForegroundd`` with :func:`_inside_window`).
    """
    return nonzero_box((image > 0).reshape(image.shape[0] * image.shape[1], *image.shape[2:]).any(dim=0).cpu().numpy())


def sliding_window_logits(network: torch.nn.Module, image: torch.Tensor, config: SegmentationTrainingConfig) -> torch.Tensor:
    """Logits (B, 2, *spatial) for a whole image batch (float32; autocast on CUDA when the config trains in mixed
    precision): the body's bounding box (:func:`body_box`) in overlapping Gaussian-weighted tiles of the training
    ROI; voxels outside the box get background logits (0, -20).

    Tiles of the training size, not one window over the box: the networks normalise per instance, and a window
    far larger than the training crops changes those statistics (held-out Dice 0.18 in one window vs 0.62 in tiles
    for the same model, bench_segmentation.py quick run)."""
    logits = torch.zeros((image.shape[0], 2, *image.shape[2:]), dtype=torch.float32, device=image.device)
    logits[:, 1] = -20.0
    box = body_box(image)
    if box is None:
        return logits
    body = image[(slice(None), slice(None), *box)]
    mixed = config.precision != "32-true" and image.device.type == "cuda"
    dtype = torch.bfloat16 if config.precision == "bf16-mixed" else torch.float16
    with torch.autocast(device_type=image.device.type, dtype=dtype, enabled=mixed):
        inside = sliding_window_inference(
            body, roi_size=config.roi_size, sw_batch_size=config.sw_batch_size, predictor=network, overlap=config.sw_overlap, mode="gaussian"
        )
    logits[(slice(None), slice(None), *box)] = torch.as_tensor(inside).float()
    return logits


def lesion_voxels(logits: torch.Tensor) -> np.ndarray:
    """Argmax of (B, 2, *spatial) logits as a (B, *spatial) uint8 array: 1 where the lesion logit is the larger.

    Equal logits are background, as argmax's first-index rule gives. A comparison instead of ``torch.argmax``,
    which took 2.2 s on a 250 x 230 x 166 volume on 2 CPU threads (longer than the network) where this takes ms.
    """
    return (logits[:, 1] > logits[:, 0]).to(torch.uint8).cpu().numpy()


def postprocess_mask(mask: np.ndarray, spacing_mm: Sequence[float], min_volume_mm3: float) -> np.ndarray:
    """Binary lesion mask without the connected components (26-connectivity) smaller than ``min_volume_mm3``.

    ``mask``: any array whose nonzero voxels are lesion; ``spacing_mm``: voxel size along the array's axes.
    Returns uint8 (1 = lesion). Pure function: the Torch and ONNX inference paths both call it.
    """
    foreground = np.asarray(mask) != 0
    if len(spacing_mm) != foreground.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} has {len(spacing_mm)} values for a {foreground.ndim}-D mask")
    cleaned = np.zeros(foreground.shape, dtype=np.uint8)
    # Components lie inside the foreground's bounding box: label that box only (lesions are a small part of a volume).
    box = nonzero_box(foreground)
    if box is None:
        return cleaned
    components, count = ndimage.label(foreground[box], structure=np.ones((3,) * foreground.ndim, dtype=bool))
    voxel_mm3 = float(np.prod(spacing_mm))
    sizes = np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3
    keep = sizes >= min_volume_mm3
    keep[0] = False
    cleaned[box] = keep[components]
    return cleaned


class LesionSegmentationModule(L.LightningModule):
    """Dice+CE training on random ROI crops; whole-image sliding-window Dice for validation."""

    def __init__(self, network: torch.nn.Module, config: SegmentationTrainingConfig) -> None:
        super().__init__()
        self.network = network
        self.config = config
        # Batch Dice: crops without lesion voxels (the negatives) do not each pull the loss towards 1.
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_step(self, batch, batch_idx):
        loss = self.loss(self.network(batch[IMAGE_KEY]), batch[LABEL_KEY])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch[IMAGE_KEY].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        logits = sliding_window_logits(self.network, batch[IMAGE_KEY], self.config)
        self.dice(y_pred=_one_hot(_postprocessed_labels(logits, batch[IMAGE_KEY], self.config)), y=_one_hot(batch[LABEL_KEY]))

    def on_validation_epoch_end(self) -> None:
        self.log("val_dice", self.dice.aggregate().item())
        self.dice.reset()

    def on_train_start(self) -> None:
        self.budget = TrainingBudget(self.config)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.budget.used() >= 1.0:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.config.learning_rate, weight_decay=1e-5)
        if not TrainingBudget(self.config).limited:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(self.config))
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        # The cosine runs over the budget's elapsed fraction, so the rate has annealed when the budget ends the fit
        # however many epochs the machine allowed. Not reproducible step for step (it depends on timing).
        cosine = lambda _: 0.5 * (1.0 + np.cos(np.pi * (self.budget.used() if hasattr(self, "budget") else 0.0)))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def cosine_schedule(config: SegmentationTrainingConfig):
    """Learning-rate factor per epoch of a fit: cosine annealing over the whole schedule (the fit's own epochs, or
    ``schedule_epochs_total`` of which ``schedule_epochs_before`` ran in earlier fits)."""
    total = config.schedule_epochs_total or max(config.max_epochs, 1)
    return lambda epoch: 0.5 * (1.0 + float(np.cos(np.pi * min(config.schedule_epochs_before + epoch, total) / total)))


class TrainingBudget:
    """Fraction of the config's time budgets spent since creation (the larger of wall clock and process CPU time)."""

    def __init__(self, config: SegmentationTrainingConfig) -> None:
        self.wall_seconds, self.cpu_seconds = config.max_train_seconds, config.max_train_cpu_seconds
        self.limited = self.wall_seconds is not None or self.cpu_seconds is not None
        self.wall_started, self.cpu_started = time.perf_counter(), time.process_time()

    def used(self) -> float:
        fractions = [0.0]
        if self.wall_seconds is not None:
            fractions.append((time.perf_counter() - self.wall_started) / self.wall_seconds)
        if self.cpu_seconds is not None:
            fractions.append((time.process_time() - self.cpu_started) / self.cpu_seconds)
        return min(1.0, max(fractions))


def _one_hot(label: torch.Tensor) -> torch.Tensor:
    return one_hot(label.long(), num_classes=2)


def _voxel_spacing(image: torch.Tensor) -> tuple[float, ...]:
    """Spacing (mm) along the spatial axes from a MONAI MetaTensor's affine (NIfTI i, j, k order)."""
    affine = np.asarray(image.affine[0] if image.affine.ndim == 3 else image.affine, dtype=float)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _postprocessed_labels(logits: torch.Tensor, image: torch.Tensor, config: SegmentationTrainingConfig) -> torch.Tensor:
    """Argmax labels (B, 1, *spatial) after :func:`postprocess_mask` on each image of the batch."""
    labels = lesion_voxels(logits)
    spacing = _voxel_spacing(image)
    cleaned = np.stack([postprocess_mask(item, spacing, config.min_lesion_volume_mm3) for item in labels])
    return torch.as_tensor(cleaned, device=logits.device).unsqueeze(1)


class MlflowEpochMetrics(L.Callback):
    """Per-epoch train_loss and val_dice to an MLflow run (step = epoch), plus an optional progress line."""

    def __init__(self, client, run_id: str, progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.progress = progress
        self.validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # val_dice stays in callback_metrics between validation epochs; log it only for the epoch that computed it.
        metrics = trainer.callback_metrics
        keys = ("train_loss", "val_dice") if self.validated else ("train_loss",)
        self.validated = False
        for key in keys:
            if key in metrics:
                self.client.log_metric(self.run_id, key, float(metrics[key]), step=trainer.current_epoch)
        if self.progress is not None:
            shown = ", ".join(f"{k}={float(metrics[k]):.3f}" for k in keys if k in metrics)
            self.progress(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}")


# ---------------------------------------------------------------- data checks and split


def _check_pairs(pairs: Sequence[tuple[Path, Path]], config: SegmentationTrainingConfig) -> None:
    """Image/label grids must agree and match the configured spacing; labels must contain lesions."""
    for image_path, label_path in pairs:
        image_info = _read_information(Path(image_path))
        label_info = _read_information(Path(label_path))
        if image_info.GetSize() != label_info.GetSize() or not np.allclose(image_info.GetSpacing(), label_info.GetSpacing(), rtol=1e-3):
            raise RadplanInputError(f"label grid does not match its image ({Path(label_path).name})")
        _check_spacing(image_info, config, Path(image_path).name)


def _read_information(path: Path) -> sitk.ImageFileReader:
    if not path.is_file():
        raise RadplanInputError(f"missing NIfTI file {path.name}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise RadplanInputError(f"unreadable image {path.name}: {error}") from error
    if reader.GetDimension() != 3:
        raise RadplanInputError(f"{path.name} is {reader.GetDimension()}-D; a 3-D volume is required")
    return reader


def _check_spacing(info: sitk.ImageFileReader, config: SegmentationTrainingConfig, name: str) -> None:
    if config.spacing_mm is not None and not np.allclose(info.GetSpacing(), config.spacing_mm, rtol=0.02):
        spacing = tuple(round(s, 3) for s in info.GetSpacing())
        raise RadplanInputError(f"{name} has spacing {spacing} mm; the model expects {config.spacing_mm} mm (resample first)")


def split_held_out(n_images: int, val_fraction: float, seed: int, patients: Sequence[str] | None = None) -> tuple[list[int], list[int], str]:
    """Deterministic validation split of image indices (whole images, never patches): (train, validation, how).

    With ``patients`` (one id per image) every image of a patient lands on the same side: a follow-up study of a
    training patient shows the same lesions, and validating on it overstated held-out Dice (0.91 on the split vs
    0.66 on unseen patients in benchmarks/bench_segmentation.py). Patients are drawn in a seeded order until the
    validation side holds ``val_fraction`` of the images. With one patient only, or no ids, images are split one
    by one; ``how`` ("by patient" / "by image") says which, and is logged with the run.
    """
    if n_images < 2:
        raise RadplanInputError("segmentation training needs at least 2 image/label pairs (train + validation)")
    if patients is not None and len(patients) != n_images:
        raise ValueError(f"{len(patients)} patient ids for {n_images} images")
    by_patient = patients is not None and len(set(patients)) >= 2
    groups = list(patients) if by_patient else list(range(n_images))
    how = "by patient" if by_patient else "by image"
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = list(members)
    random.Random(seed).shuffle(order)
    n_val = min(n_images - 1, max(1, round(val_fraction * n_images)))
    val: list[int] = []
    for group in order[:-1]:  # at least one group trains
        if len(val) >= n_val:
            break
        val.extend(members[group])
    return sorted(set(range(n_images)) - set(val)), sorted(val), how


# ---------------------------------------------------------------- evaluation and inference


def predicted_and_true_masks(
    network: torch.nn.Module, pairs: Sequence[tuple[Path, Path]], config: SegmentationTrainingConfig, device: torch.device | None = None
):
    """Per image: (post-processed prediction uint8, true label map with its lesion ids, spacing mm), NIfTI (i, j, k) order."""
    device = device or torch.device("cpu")
    network = network.to(device).eval()
    transforms = evaluation_transforms(config, with_label=False)
    for image_path, label_path in pairs:
        data = transforms({IMAGE_KEY: str(image_path)})
        truth = LoadImaged(keys=LABEL_KEY, reader="NibabelReader", image_only=True)({LABEL_KEY: str(label_path)})[LABEL_KEY]
        image = data[IMAGE_KEY].unsqueeze(0).to(device)
        with torch.no_grad():
            prediction = _postprocessed_labels(sliding_window_logits(network, image, config), image, config)
        yield prediction[0, 0].cpu().numpy().astype(np.uint8), np.asarray(truth).astype(np.int32), _voxel_spacing(data[IMAGE_KEY])


def overlap_metrics(prediction: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """Dice and 95th-percentile symmetric Hausdorff distance (mm) of two binary masks (MONAI metrics).

    Both empty: Dice 1, HD95 0. Exactly one empty: Dice 0 and HD95 NaN (no surface to measure; callers
    report how many were undefined instead of inventing a distance).
    """
    predicted, expected = np.asarray(prediction) != 0, np.asarray(truth) != 0
    if predicted.shape != expected.shape:
        raise ValueError(f"masks have different shapes {predicted.shape} and {expected.shape}")
    if not predicted.any() and not expected.any():
        return {"dice": 1.0, "hd95_mm": 0.0}
    if not predicted.any() or not expected.any():
        return {"dice": 0.0, "hd95_mm": float("nan")}
    as_one_hot = lambda mask: _one_hot(torch.as_tensor(mask[None, None].astype(np.uint8)))  # noqa: E731
    y_pred, y = as_one_hot(predicted), as_one_hot(expected)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=list(spacing_mm))
    return {"dice": float(dice.item()), "hd95_mm": float(hd95.item())}


def lesion_metrics(prediction: np.ndarray, truth_labels: np.ndarray, spacing_mm: Sequence[float]) -> dict[int, dict[str, float]]:
    """Per true lesion id: Dice and HD95 of the predicted voxels nearest to that lesion against the lesion.

    Every predicted voxel is attributed to the true lesion closest to it (Euclidean, mm), so false
    positives count against their nearest lesion and a lesion's score does not depend on how its
    neighbours were segmented. Lesion ids absent from ``truth_labels`` are not reported.
    """
    truth_labels = np.asarray(truth_labels)
    ids = [int(v) for v in np.unique(truth_labels) if v > 0]
    if not ids:
        return {}
    _, nearest_index = ndimage.distance_transform_edt(truth_labels == 0, sampling=spacing_mm, return_indices=True)
    nearest_lesion = truth_labels[tuple(nearest_index)]
    predicted = np.asarray(prediction) != 0
    return {
        lesion: {**overlap_metrics(predicted & (nearest_lesion == lesion), truth_labels == lesion, spacing_mm),
                 "volume_mm3": float((truth_labels == lesion).sum() * np.prod(spacing_mm))}
        for lesion in ids
    }


def dice_per_image(network: torch.nn.Module, pairs: Sequence[tuple[Path, Path]], config: SegmentationTrainingConfig, device: torch.device | None = None) -> np.ndarray:
    """Foreground Dice of post-processed sliding-window predictions, one value per whole image."""
    return np.array([overlap_metrics(p, t, s)["dice"] for p, t, s in predicted_and_true_masks(network, pairs, config, device)])


def evaluate_dice(network: torch.nn.Module, pairs: Sequence[tuple[Path, Path]], config: SegmentationTrainingConfig, device: torch.device | None = None) -> float:
    """Mean foreground Dice over whole images (the champion/challenger metric)."""
    return float(np.mean(dice_per_image(network, pairs, config, device)))


def bootstrap_mean_ci(values: Sequence[float], clusters: Sequence | None = None, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean with a percentile bootstrap 95% CI; NaN values are left out and counted as ``n_undefined``.

    ``clusters`` (e.g. the patient of each lesion): whole clusters are resampled, since values of one
    patient are not independent. Without it each value is its own cluster.
    """
    values = np.asarray(values, dtype=float)
    groups = np.arange(len(values)) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    defined = ~np.isnan(values)
    if not defined.any():
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "n_undefined": int(len(values))}
    n_groups = int(groups.max()) + 1
    draws = bootstrap_weights(n_groups, n_bootstrap, seed)[:, groups[defined]]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (draws @ values[defined]) / draws.sum(axis=1)
    return {"mean": float(values[defined].mean()), "ci_low": float(np.nanpercentile(means, 2.5)),
            "ci_high": float(np.nanpercentile(means, 97.5)), "n": int(defined.sum()), "n_undefined": int((~defined).sum())}


def dice_confidence_interval(per_image: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean Dice with a percentile bootstrap 95% CI over validation images (images resampled, fixed seed)."""
    interval = bootstrap_mean_ci(per_image, n_bootstrap=n_bootstrap, seed=seed)
    return {"value": interval["mean"], "ci_low": interval["ci_low"], "ci_high": interval["ci_high"], "n_images": interval["n"]}


def predict_mask(model: torch.nn.Module, image_path: Path, config: SegmentationTrainingConfig) -> sitk.Image:
    """Lesion label map (uint8, 1 = lesion) on the input image's own grid and geometry."""
    image_path = Path(image_path)
    info = _read_information(image_path)
    _check_spacing(info, config, image_path.name)
    device = next(model.parameters()).device
    data = evaluation_transforms(config, with_label=False)({IMAGE_KEY: str(image_path)})
    model.eval()
    with torch.no_grad():
        logits = sliding_window_logits(model, data[IMAGE_KEY].unsqueeze(0).to(device), config)
    # MONAI arrays are indexed (i, j, k) like the NIfTI voxel array; SimpleITK's numpy view is (k, j, i).
    labels = postprocess_mask(lesion_voxels(logits)[0], info.GetSpacing(), config.min_lesion_volume_mm3)
    mask = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    if mask.GetSize() != info.GetSize():
        raise RuntimeError(f"prediction grid {mask.GetSize()} differs from image grid {info.GetSize()}")
    mask.SetOrigin(info.GetOrigin())
    mask.SetSpacing(info.GetSpacing())
    mask.SetDirection(info.GetDirection())
    return mask


# ---------------------------------------------------------------- training


def _champion_dice_on(client, model_name: str, val_pairs, device: torch.device) -> tuple[float | None, int | None]:
    """Current champion's Dice on this run's validation images, with the preprocessing it was trained with."""
    champion = registry.champion_version(client, model_name)
    if champion is None:
        return None, None
    champion_config = SegmentationTrainingConfig.from_params(client.get_run(champion.run_id).data.params)
    network = registry.load_model_version(client, champion)
    return evaluate_dice(network, val_pairs, champion_config, device), int(champion.version)


def train_segmentation(
    pairs: list[tuple[Path, Path]],
    config: SegmentationTrainingConfig,
    *,
    tracking_uri: str,
    artifact_root: Path,
    model_name: str = "radplan-lesion-seg",
    progress: Callable[[str], None] | None = None,
    patients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train, validate, log and register a lesion segmentation model; returns a PHI-free summary.

    ``patients``: the (pseudonymous) patient of each pair, so that validation holds out whole patients
    (:func:`split_held_out`); the ids are used for the split only, never logged.
    """
    pairs = [(Path(i), Path(l)) for i, l in pairs]
    _check_pairs(pairs, config)
    train_idx, val_idx, split_how = split_held_out(len(pairs), config.val_fraction, config.seed, patients)
    train_pairs = [pairs[i] for i in train_idx]
    val_pairs = [pairs[i] for i in val_idx]

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    set_determinism(seed=config.seed)
    L.seed_everything(config.seed, workers=True, verbose=False)

    as_items = lambda subset: [{IMAGE_KEY: str(i), LABEL_KEY: str(l)} for i, l in subset]  # noqa: E731
    train_ds = CacheDataset(as_items(train_pairs), training_transforms(config), cache_rate=config.cache_rate, num_workers=0, progress=False)
    val_ds = Dataset(as_items(val_pairs), evaluation_transforms(config))
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                              generator=torch.Generator().manual_seed(config.seed))
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=config.num_workers)

    network = build_network(config)
    module = LesionSegmentationModule(network, config)

    client = registry.mlflow_client(tracking_uri, artifact_root)
    experiment_id = registry.ensure_experiment(client, registry.SEGMENTATION_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        mlflow.log_params(config.to_params())
        mlflow.log_params({"n_train_images": len(train_pairs), "n_val_images": len(val_pairs), "validation_split": split_how,
                           "model_name": model_name})
        mlflow.set_tags({"radplan.model": "lesion-segmentation", "radplan.device": device.type})
        trainer = L.Trainer(
            max_epochs=config.max_epochs,
            check_val_every_n_epoch=config.val_every_n_epochs,
            precision=config.precision if cuda else "32-true",
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            deterministic="warn",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[MlflowEpochMetrics(client, run_id, progress)],
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        # Fewer than max_epochs when a time budget ended the fit (possibly inside an epoch: see the steps).
        epochs_trained, steps_trained = int(trainer.current_epoch), int(trainer.global_step)

        network = module.network.to(device).eval()
        val_dice_ci = dice_confidence_interval(dice_per_image(network, val_pairs, config, device), seed=config.seed)
        val_dice = val_dice_ci["value"]
        champion_dice, champion_version = _champion_dice_on(client, model_name, val_pairs, device)
        mlflow.log_metrics({"final_val_dice": val_dice, "final_val_dice_ci_low": val_dice_ci["ci_low"],
                            "final_val_dice_ci_high": val_dice_ci["ci_high"], "train_seconds": train_seconds,
                            "train_cpu_seconds": train_cpu_seconds, "steps_trained": steps_trained,
                            "epochs_trained": epochs_trained})
        if champion_dice is not None:
            mlflow.log_metric("champion_val_dice_same_images", champion_dice)

        network = network.cpu()
        example = torch.zeros((1, 1, *config.roi_size), dtype=torch.float32)
        with torch.no_grad():
            signature = infer_signature(example.numpy(), network(example).numpy())
        # Whole-module pickle: sliding-window inference feeds variable batch sizes, which a traced pt2 graph would fix.
        mlflow.pytorch.log_model(
            network, name=MODEL_ARTIFACT, signature=signature, pip_requirements=registry.pinned_requirements("torch", "monai", "numpy"), serialization_format="pickle"
        )

    registration = registry.register_with_champion_challenger(
        client,
        model_name=model_name,
        run_id=run_id,
        artifact_path=MODEL_ARTIFACT,
        metric_name="val_dice",
        new_value=val_dice,
        higher_is_better=True,
        champion_value_on_same_data=champion_dice,
    )
    if progress is not None:
        progress(f"registered {model_name} v{registration['version']} as {registration['alias']} (val_dice={val_dice:.3f})")
    return {
        "run_id": run_id,
        "model_name": model_name,
        "version": registration["version"],
        "alias": registration["alias"],
        "val_dice": val_dice,
        "val_dice_ci": val_dice_ci,
        "champion_comparison": registration,
        "champion_version_evaluated": champion_version,
        "n_train_images": len(train_pairs),
        "n_val_images": len(val_pairs),
        "validation_split": split_how,
        "epochs": epochs_trained,
        "steps": steps_trained,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "device": device.type,
    }


# ---------------------------------------------------------------- DICOM SEG export


def _without_empty_charset(dataset):
    """An empty Specific Character Set means the default repertoire; highdicom rejects the empty value."""
    if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
        dataset = copy.copy(dataset)
        del dataset.SpecificCharacterSet
    return dataset


def write_seg_dicom(
    mask: np.ndarray | sitk.Image,
    source_ct_datasets: list,
    out_path: Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    segment_labels: dict[int, str] | None = None,
) -> Path:
    """Write the label map as a DICOM Segmentation (BINARY, AUTOMATIC) referencing the source CT.

    ``mask`` is on the CT grid: a SimpleITK image or a (slices, rows, columns)
    array whose slice axis runs in ascending position along the slice normal
    (SimpleITK's order for a DICOM series). Label value k becomes segment k
    (default label "Lesion k"). The Series/SOP Instance UIDs derive from the
    source SOP Instance UIDs, the algorithm and the mask content, so the same
    input gives the same UIDs; Content Date/Time are the time of writing.
    """
    if not source_ct_datasets:
        raise ValueError("no source CT datasets given")
    sources = [_without_empty_charset(ds) for ds in sorted(source_ct_datasets, key=slice_position)]
    array = sitk.GetArrayFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if array.shape != expected:
        raise ValueError(f"mask shape {array.shape} does not match the CT grid {expected} (slices, rows, columns)")
    if array.min() < 0 or not np.array_equal(array, np.round(array)):
        raise ValueError("mask must be a non-negative integer label map")
    labels = array.astype(np.uint8)
    n_segments = max(int(labels.max()), 1)

    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=(segment_labels or {}).get(number, f"Lesion {number}"),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number in range(1, n_segments + 1)
    ]
    source_uids = [str(ds.SOPInstanceUID) for ds in sources]
    content = hashlib.sha256(labels.tobytes()).hexdigest()
    series_uid = derived_uid("seg-series", algorithm_name, algorithm_version, *source_uids)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=900,
        sop_instance_uid=derived_uid("seg-instance", series_uid, content),
        instance_number=1,
        manufacturer="radplan",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=f"{algorithm_name} {algorithm_version} lesion segmentation",
        omit_empty_frames=bool(labels.any()),
    )
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        pydicom.dcmwrite(tmp, seg, enforce_file_format=True)
    return out_path
