"""Federated lesion segmentation: each site's CT volumes (its own scanner settings) and local training.

Site images come from the generator's CT renderer (:func:`radplan.synth.ct.render_study`, the patient's baseline
study) re-rendered at the site's slice thickness, with the site's extra noise and HU offset, resampled to the
segmentation model's 1.5 mm grid and written as NIfTI (image, lesion label map) under ``<site>/images/``, named by
the site's pseudonym. ``<site>/lake/segmentation_pairs.parquet`` lists them with the same ``held_out`` flag as
the site's response labels.

Local training is the segmentation recipe of :mod:`radplan.models.segmentation` (network, transforms,
Dice+CE Lightning module and optimizer) for ``local_epochs`` epochs from the received weights, with FedProx's
proximal term when the server sends ``fedprox_mu`` > 0; evaluation is its whole-image sliding-window Dice.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from radplan.federated.sites import LABELS_FILE, SiteSpec, _site_patients
from radplan.imaging.volumes import resample_mask_to, resample_to_spacing
from radplan.lake import atomic_path
from radplan.models.segmentation import (IMAGE_KEY, LABEL_KEY, LesionSegmentationModule, SegmentationTrainingConfig, build_network,
                                         dice_per_image, training_transforms)
from radplan.synth.ct import render_study

PAIRS_FILE = "lake/segmentation_pairs.parquet"


def federated_segmentation_config(**overrides) -> SegmentationTrainingConfig:
    """The CPU recipe of the segmentation model (its defaults) with ``overrides`` of its fields. A federated job
    sends the same overrides to the server (round 0 weights) and every site as JSON: lists come back as tuples."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SegmentationTrainingConfig)})
    if unknown:
        raise ValueError(f"unknown segmentation recipe fields {unknown} (fields of radplan.models.segmentation.SegmentationTrainingConfig)")
    return dataclasses.replace(SegmentationTrainingConfig(), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def _to_image(array: np.ndarray, spacing_xy: float, spacing_z: float, origin: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing_xy, spacing_xy, spacing_z))
    image.SetOrigin(origin)
    return image


def write_site_images(spec: SiteSpec, site_dir: str | os.PathLike, spacing_mm: float = 1.5) -> Path:
    """Render every patient of the site (baseline study, the site's scanner) to NIfTI; returns the pairs table path."""
    site_dir = Path(site_dir)
    labels = pd.read_parquet(site_dir / LABELS_FILE)
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed + 7)
    rows = []
    for plan, (pseudonym, held_out) in zip(_site_patients(spec), zip(labels["patient_key"], labels["held_out"])):
        study = plan.studies[0]
        extent = study.n_slices * study.slice_thickness
        thickness = spec.scanner.slice_thickness_mm
        study = dataclasses.replace(study, slice_thickness=thickness, n_slices=max(8, int(round(extent / thickness))))
        hu, label_map, geometry = render_study(plan, study, spec.seed)
        hu = hu.astype(np.float32) + spec.scanner.hu_offset + rng.normal(0.0, spec.scanner.noise_hu, hu.shape).astype(np.float32)
        image = _to_image(hu, geometry.spacing_xy, geometry.spacing_z, geometry.origin)
        resampled = resample_to_spacing(image, (spacing_mm,) * 3, sitk.sitkLinear, -1000.0)
        mask = resample_mask_to(_to_image((label_map > 0).astype(np.uint8), geometry.spacing_xy, geometry.spacing_z, geometry.origin), resampled)
        image_path, label_path = site_dir / "images" / f"{pseudonym}_ct.nii.gz", site_dir / "images" / f"{pseudonym}_lesions.nii.gz"
        sitk.WriteImage(sitk.Cast(resampled, sitk.sitkFloat32), str(image_path))
        sitk.WriteImage(mask, str(label_path))
        rows.append({"patient_key": pseudonym, "image": image_path.relative_to(site_dir).as_posix(),
                     "label": label_path.relative_to(site_dir).as_posix(), "held_out": bool(held_out)})
    path = site_dir / PAIRS_FILE
    with atomic_path(path) as temporary:
        pd.DataFrame(rows, columns=["patient_key", "image", "label", "held_out"]).to_parquet(temporary, index=False)
    return path


def site_pairs(site_dir: str | os.PathLike) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(training pairs, held-out pairs) of a site's images."""
    site_dir = Path(site_dir)
    path = site_dir / PAIRS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the site has no segmentation images")
    table = pd.read_parquet(path)
    pairs = [(site_dir / i, site_dir / l) for i, l in zip(table["image"], table["label"])]
    held_out = table["held_out"].to_numpy(bool)
    return [p for p, h in zip(pairs, held_out) if not h], [p for p, h in zip(pairs, held_out) if h]


def initial_parameters(config: SegmentationTrainingConfig) -> dict[str, np.ndarray]:
    torch.manual_seed(config.seed)
    return {k: v.detach().cpu().numpy().copy() for k, v in build_network(config).state_dict().items()}


def network_from(parameters: dict[str, np.ndarray], config: SegmentationTrainingConfig) -> torch.nn.Module:
    network = build_network(config)
    network.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in parameters.items()})
    return network


@dataclasses.dataclass
class OptimizerMoments:
    """One site's AdamW state (moments and step counts), carried from one round's local fit to the next in the site's
    own process; never sent. Only the per-parameter state is carried: the learning rate is the round's schedule."""

    state: dict | None = None


class _SiteModule(LesionSegmentationModule):
    """The recipe's module as a site trains it in a round: its optimizer state carried from the last round
    (``moments``, when given), and FedProx's proximal term ``(mu/2) ||w - w_received||^2`` added to the loss when
    ``fedprox_mu`` > 0, which keeps the site's weights near the global model it received (the skewed-site case)."""

    def __init__(self, network: torch.nn.Module, config: SegmentationTrainingConfig, moments: OptimizerMoments | None,
                 fedprox_mu: float = 0.0) -> None:
        super().__init__(network, config)
        self.moments = moments
        self.fedprox_mu = fedprox_mu
        self.received = [p.detach().clone() for p in network.parameters()] if fedprox_mu > 0 else []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.fedprox_mu > 0:
            loss = loss + self.fedprox_mu / 2 * sum(((p - r) ** 2).sum() for p, r in zip(self.network.parameters(), self.received))
        return loss

    def configure_optimizers(self):
        configured = super().configure_optimizers()
        if self.moments is not None and self.moments.state is not None:
            optimizer = configured["optimizer"]
            groups = [{**fresh, "params": saved["params"]}
                      for fresh, saved in zip(optimizer.state_dict()["param_groups"], self.moments.state["param_groups"])]
            optimizer.load_state_dict({"state": self.moments.state["state"], "param_groups": groups})
        return configured

    def on_train_end(self) -> None:
        if self.moments is not None:
            self.moments.state = copy.deepcopy(self.trainer.optimizers[0].state_dict())


def train_locally(parameters: dict[str, np.ndarray], pairs: list[tuple[Path, Path]], config: SegmentationTrainingConfig,
                  epochs: int, seed: int = 0, schedule: tuple[int, int] | None = None,
                  moments: OptimizerMoments | None = None, fedprox_mu: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``epochs`` epochs of the segmentation recipe from ``parameters`` on ``pairs``; new weights and the last loss.

    ``schedule`` (epochs before this fit, epochs in all): the fit is part of a longer training, a federated round's
    local epochs, and its learning rate continues that training's cosine instead of restarting it. ``moments``: the
    optimizer state starts from it (when set) and is left in it, for the site's next round. ``fedprox_mu`` > 0:
    FedProx, the loss holds the weights near ``parameters``."""
    import lightning as L
    from monai.data import CacheDataset, DataLoader
    from monai.utils import set_determinism

    if not pairs:
        raise ValueError("no training images: every patient of this site is held out or none has a mask")
    config = dataclasses.replace(config, max_epochs=epochs)
    if schedule is not None:
        config = dataclasses.replace(config, schedule_epochs_before=schedule[0], schedule_epochs_total=schedule[1])
    set_determinism(seed=seed)
    L.seed_everything(seed, verbose=False)
    items = [{IMAGE_KEY: str(i), LABEL_KEY: str(l)} for i, l in pairs]
    dataset = CacheDataset(items, training_transforms(config), cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed))
    module = _SiteModule(network_from(parameters, config), config, moments, fedprox_mu)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic="warn", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    loss = trainer.callback_metrics.get("train_loss")
    new = {k: v.detach().cpu().numpy().copy() for k, v in module.network.state_dict().items()}
    return new, {"train_loss": float(loss) if loss is not None else float("nan"), "n_train": float(len(pairs))}


def held_out_dice(parameters: dict[str, np.ndarray], pairs: list[tuple[Path, Path]], config: SegmentationTrainingConfig) -> np.ndarray:
    """Whole-image Dice of each held-out pair (the segmentation model's own evaluation)."""
    return dice_per_image(network_from(parameters, config), pairs, config)
