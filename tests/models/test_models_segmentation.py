"""Lesion segmentation: end-to-end training into MLflow, grid-faithful inference, DICOM SEG export."""

from __future__ import annotations

import dataclasses

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from models_synthetic import sphere_volumes
from radplan.errors import RadplanInputError
from radplan.models import registry
from radplan.models.segmentation import (
    SegmentationTrainingConfig,
    bootstrap_mean_ci,
    build_network,
    cosine_schedule,
    dice_confidence_interval,
    dice_per_image,
    lesion_metrics,
    lesion_voxels,
    overlap_metrics,
    postprocess_mask,
    predict_mask,
    sliding_window_logits,
    split_held_out,
    train_segmentation,
    write_seg_dicom,
)

TINY = SegmentationTrainingConfig(roi_size=(24, 24, 16), max_epochs=2, samples_per_volume=2, batch_size=2, channels=(4, 8, 16, 32),
                                  val_every_n_epochs=1)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[tuple[Path, Path]]:
    return sphere_volumes(tmp_path_factory.mktemp("spheres"), 5, shape=(32, 32, 20))


def test_split_is_by_whole_image_and_deterministic():
    train, val, how = split_held_out(20, 0.25, seed=3)
    assert sorted(train + val) == list(range(20)) and not set(train) & set(val) and len(val) == 5 and how == "by image"
    assert (train, val, how) == split_held_out(20, 0.25, seed=3)
    assert split_held_out(20, 0.25, seed=4) != (train, val, how)
    with pytest.raises(RadplanInputError):
        split_held_out(1, 0.25, seed=0)


def test_split_keeps_every_image_of_a_patient_on_one_side():
    # 12 patients with 1-3 studies each: no patient on both sides, about a quarter of the images validate.
    patients = [f"p{i}" for i in range(12) for _ in range(1 + i % 3)]
    for seed in range(5):
        train, val, how = split_held_out(len(patients), 0.25, seed, patients)
        assert how == "by patient" and sorted(train + val) == list(range(len(patients)))
        assert not {patients[i] for i in train} & {patients[i] for i in val}
        assert round(0.25 * len(patients)) <= len(val) <= round(0.25 * len(patients)) + 2
    # One patient: nothing to hold out by patient; images are split one by one, and the run says so.
    assert split_held_out(3, 0.5, 0, ["p1"] * 3)[2] == "by image"


def test_dice_interval_is_a_bootstrap_of_the_image_mean():
    per_image = np.array([0.2, 0.5, 0.6, 0.9])
    interval = dice_confidence_interval(per_image, n_bootstrap=2000, seed=1)
    assert interval["value"] == pytest.approx(0.55) and interval["n_images"] == 4
    assert 0.2 <= interval["ci_low"] < 0.55 < interval["ci_high"] <= 0.9
    # One image cannot vary: the interval collapses onto it.
    single = dice_confidence_interval(np.array([0.7]))
    assert single["ci_low"] == single["ci_high"] == single["value"] == pytest.approx(0.7)


def test_postprocess_drops_components_below_the_volume_and_keeps_26_connected_ones():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:6, 2:6, 2:6] = 1  # 64 voxels
    mask[10:12, 10:12, 10:12] = 2  # 8 voxels, any nonzero label is lesion
    mask[15, 15, 15] = mask[16, 16, 16] = 1  # two voxels touching at a corner: one component of 2
    # Voxel 1 x 1 x 2 mm = 2 mm3: components of 128, 16 and 4 mm3.
    kept = postprocess_mask(mask, (1.0, 1.0, 2.0), min_volume_mm3=10.0)
    assert kept.dtype == np.uint8 and set(np.unique(kept)) == {0, 1}
    assert kept.sum() == 64 + 8 and kept[15, 15, 15] == 0 and kept[10, 10, 10] == 1
    assert postprocess_mask(mask, (1.0, 1.0, 2.0), min_volume_mm3=4.0).sum() == 64 + 8 + 2
    assert postprocess_mask(mask, (1.0, 1.0, 2.0), min_volume_mm3=200.0).sum() == 0
    assert postprocess_mask(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0), 10.0).sum() == 0
    with pytest.raises(ValueError, match="spacing"):
        postprocess_mask(mask, (1.0, 1.0), 10.0)


def test_overlap_metrics_on_masks_with_known_dice_and_hd95():
    truth = np.zeros((12, 12, 12), bool)
    truth[5, 5, 5] = True
    shifted = np.zeros_like(truth)
    shifted[5, 5, 8] = True
    # Single voxels 3 steps apart along an axis of 2 mm spacing: every surface distance is 6 mm.
    assert overlap_metrics(shifted, truth, (1.0, 1.0, 2.0)) == pytest.approx({"dice": 0.0, "hd95_mm": 6.0})
    cube = np.zeros_like(truth)
    cube[2:8, 2:8, 2:8] = True
    half = cube.copy()
    half[2:5] = False
    assert overlap_metrics(cube, cube, (1.5, 1.5, 1.5)) == pytest.approx({"dice": 1.0, "hd95_mm": 0.0})
    assert overlap_metrics(half, cube, (1.0, 1.0, 1.0))["dice"] == pytest.approx(2 * 108 / (108 + 216))
    assert overlap_metrics(np.zeros_like(truth), np.zeros_like(truth), (1.0, 1.0, 1.0)) == {"dice": 1.0, "hd95_mm": 0.0}
    missed = overlap_metrics(np.zeros_like(truth), truth, (1.0, 1.0, 1.0))
    assert missed["dice"] == 0.0 and np.isnan(missed["hd95_mm"]), "a missed lesion has no distance to invent"


def test_lesion_metrics_charge_false_positives_to_the_nearest_lesion():
    labels = np.zeros((30, 12, 12), np.int32)
    labels[2:6, 2:6, 2:6] = 1
    labels[20:24, 2:6, 2:6] = 2
    prediction = labels > 0
    prediction[26:28, 2:6, 2:6] = True  # 32 false-positive voxels next to lesion 2, far from lesion 1
    scores = lesion_metrics(prediction, labels, (1.0, 1.0, 1.0))
    assert sorted(scores) == [1, 2]
    assert scores[1]["dice"] == 1.0 and scores[1]["hd95_mm"] == 0.0 and scores[1]["volume_mm3"] == 64.0
    assert scores[2]["dice"] == pytest.approx(2 * 64 / (64 + 96)) and scores[2]["hd95_mm"] > 0
    assert lesion_metrics(np.zeros_like(prediction), np.zeros_like(labels), (1.0, 1.0, 1.0)) == {}


def test_bootstrap_resamples_whole_clusters_and_counts_undefined_values():
    # Two patients, each with two identical lesions: a cluster bootstrap only sees patient means 1 and 0.
    clustered = bootstrap_mean_ci([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"], n_bootstrap=500, seed=2)
    assert clustered["mean"] == 0.5 and clustered["n"] == 4 and clustered["n_undefined"] == 0
    assert (clustered["ci_low"], clustered["ci_high"]) == (0.0, 1.0)
    with_missing = bootstrap_mean_ci([2.0, np.nan, 4.0], n_bootstrap=500, seed=2)
    assert with_missing["mean"] == 3.0 and with_missing["n"] == 2 and with_missing["n_undefined"] == 1
    assert 2.0 <= with_missing["ci_low"] <= with_missing["ci_high"] <= 4.0
    assert np.isnan(bootstrap_mean_ci([np.nan])["mean"])


def test_learning_rate_schedule_is_torchs_cosine_and_rounds_continue_one_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=8)
    expected = []
    for _ in range(8):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    whole = cosine_schedule(dataclasses.replace(TINY, max_epochs=8))
    assert [whole(epoch) for epoch in range(8)] == pytest.approx(expected)
    # Four rounds of two local epochs (a federated training): each fit continues the cosine where the last one ended.
    rounds = [cosine_schedule(dataclasses.replace(TINY, max_epochs=2, schedule_epochs_before=2 * r, schedule_epochs_total=8))
              for r in range(4)]
    assert [factor(epoch) for factor in rounds for epoch in range(2)] == pytest.approx(expected)
    with pytest.raises(ValueError, match="schedule_epochs"):
        SegmentationTrainingConfig(schedule_epochs_before=-1)


def test_training_logs_registers_and_is_deterministic(volumes, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    messages: list[str] = []
    first = train_segmentation(volumes, TINY, tracking_uri=tracking_uri, artifact_root=tmp_path / "artifacts", progress=messages.append)
    second = train_segmentation(volumes, TINY, tracking_uri=tracking_uri, artifact_root=tmp_path / "artifacts")

    assert (first["version"], first["alias"]) == (1, "champion")
    assert first["n_train_images"] + first["n_val_images"] == len(volumes)
    assert 0.0 <= first["val_dice"] <= 1.0 and first["device"] == "cpu"
    interval = first["val_dice_ci"]
    assert interval["n_images"] == first["n_val_images"] and interval["value"] == first["val_dice"]
    assert interval["ci_low"] <= first["val_dice"] <= interval["ci_high"]
    # Same seed, same data: the same network, so the second run ties the champion and stays challenger.
    assert second["val_dice"] == pytest.approx(first["val_dice"], abs=1e-6)
    comparison = second["champion_comparison"]
    assert (second["version"], second["alias"], comparison["champion_version_before"]) == (2, "challenger", 1)
    assert comparison["champion_value"] == pytest.approx(first["val_dice"], abs=1e-6)
    assert any("epoch 2/2" in m for m in messages)

    summary_text = json.dumps(first)
    assert str(tmp_path) not in summary_text and "case0" not in summary_text, "summary must not carry file names"

    client = registry.mlflow_client(tracking_uri, tmp_path / "artifacts")
    run = client.get_run(first["run_id"])
    assert json.loads(run.data.params["roi_size"]) == list(TINY.roi_size)
    assert run.data.params["network"] == '"unet"'
    for key in ("train_loss", "val_dice"):
        assert [m.step for m in client.get_metric_history(first["run_id"], key)] == [0, 1]
    assert run.data.metrics["final_val_dice"] == pytest.approx(first["val_dice"])
    tags = client.get_model_version("radplan-lesion-seg", 2).tags
    assert tags["comparison.decision"] == "challenger" and tags["comparison.metric"] == "val_dice"

    network, version = registry.load_champion(client, "radplan-lesion-seg")
    assert version == 1 and isinstance(network, torch.nn.Module)
    mask = predict_mask(network, volumes[0][0], TINY)
    assert mask.GetSize() == sitk.ReadImage(str(volumes[0][0])).GetSize()


def test_short_training_learns_what_an_untrained_network_cannot(volumes, tmp_path):
    """Smoke test of the recipe (crops around lesions, Dice+CE, post-processing): Dice rises well above the start."""
    config = SegmentationTrainingConfig(roi_size=(24, 24, 16), max_epochs=8, samples_per_volume=4, batch_size=2, channels=(4, 8, 16, 32),
                                        learning_rate=1e-2, val_every_n_epochs=8, seed=1)
    result = train_segmentation(volumes, config, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=tmp_path / "a")
    _, val_idx, _ = split_held_out(len(volumes), config.val_fraction, config.seed)
    torch.manual_seed(config.seed)
    untrained = float(np.mean(dice_per_image(build_network(config), [volumes[i] for i in val_idx], config)))
    assert result["val_dice"] > max(0.6, untrained + 0.4), (result["val_dice"], untrained)


class _ThresholdOracle(torch.nn.Module):
    """Logits that say 'lesion' exactly where the windowed intensity exceeds the lesion threshold."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x):
        return torch.cat([torch.full_like(x, self.threshold), x], dim=1)


class _ShapeRecorder(torch.nn.Module):
    """A 3x3x3 convolution (zero padding) that records the spatial shape of every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.convolution = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.convolution(x)


def _body_in_air(shape=(40, 44, 30), box=(slice(6, 20), slice(9, 40), slice(2, 21))) -> torch.Tensor:
    image = torch.zeros((1, 1, *shape))
    generator = torch.Generator().manual_seed(5)
    image[(0, 0, *box)] = torch.rand(tuple(s.stop - s.start for s in box), generator=generator) * 0.9 + 0.05
    return image


def test_inference_crops_to_the_body_without_changing_what_the_network_sees():
    image, network = _body_in_air(), _ShapeRecorder().eval()
    config = SegmentationTrainingConfig(roi_size=(16, 16, 8), sw_batch_size=1, sw_overlap=0.0)
    with torch.no_grad():
        cropped, full = sliding_window_logits(network, image, config), network.convolution(image)
    # Tiles cover the body's box (14 x 31 x 19 voxels: 1 x 2 x 3 tiles), not the 40 x 44 x 30 volume (3 x 3 x 4).
    assert network.shapes == [(16, 16, 8)] * 6
    box = (slice(None), slice(None), slice(6, 20), slice(9, 40), slice(2, 21))
    outside = torch.ones(image.shape[2:], dtype=torch.bool)
    outside[box[2:]] = False
    assert (torch.argmax(cropped, dim=1)[0][outside] == 0).all()
    # Within one tile and away from tile edges, the convolution sees the same neighbours as on the whole volume:
    # outside the box the image is 0, what the padding adds.
    inner = (slice(None), slice(None), slice(7, 19), slice(10, 24), slice(3, 9))
    assert torch.allclose(cropped[inner], full[inner], atol=1e-5)


def test_lesion_voxels_is_the_argmax_of_the_two_logits_with_ties_to_background():
    logits = torch.randn((2, 2, 9, 7, 5), generator=torch.Generator().manual_seed(1))
    logits[0, 1, :3] = logits[0, 0, :3]  # ties
    assert np.array_equal(lesion_voxels(logits), torch.argmax(logits, dim=1).numpy())


def test_inference_of_an_image_without_body_voxels_is_background_without_running_the_network():
    network = _ShapeRecorder().eval()
    logits = sliding_window_logits(network, torch.zeros((1, 1, 20, 20, 10)), SegmentationTrainingConfig(roi_size=(16, 16, 8)))
    assert network.shapes == [] and (torch.argmax(logits, dim=1) == 0).all()


def test_predict_mask_maps_back_to_the_input_grid(tmp_path):
    (image_path, label_path), = sphere_volumes(tmp_path, 1, shape=(36, 28, 20), seed=7)
    # Give the image a non-trivial direction and origin: the mask must copy them.
    image = sitk.ReadImage(str(image_path))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(image_path))
    config = SegmentationTrainingConfig(roi_size=(16, 16, 8), sw_overlap=0.0)
    # Window [-200, 300] -> [0, 1]: tissue 40 HU ~ 0.48, lesions 160 HU ~ 0.72; cut halfway.
    oracle = _ThresholdOracle(0.60)
    mask = predict_mask(oracle, image_path, config)
    truth = sitk.ReadImage(str(label_path))
    assert mask.GetSize() == truth.GetSize()
    assert mask.GetDirection() == image.GetDirection() and mask.GetOrigin() == image.GetOrigin()
    predicted, expected = sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) > 0
    dice = 2 * (predicted & expected).sum() / (predicted.sum() + expected.sum())
    assert dice > 0.9, f"oracle mask misplaced on the grid (Dice {dice:.3f})"


def test_spacing_mismatch_is_an_input_error(volumes, tmp_path):
    with pytest.raises(RadplanInputError, match="spacing"):
        predict_mask(_ThresholdOracle(0.6), volumes[0][0], SegmentationTrainingConfig(spacing_mm=0.8))
    with pytest.raises(RadplanInputError, match="at least 2"):
        train_segmentation(volumes[:1], TINY, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=tmp_path / "a")


def _ct_series(shared_data: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((shared_data / "imaging" / "dcmqi_ct_liver_seg" / "ct").glob("*.dcm"))]


def test_seg_dicom_round_trip_on_real_ct(shared_data, tmp_path):
    folder = shared_data / "imaging" / "dcmqi_ct_liver_seg"
    liver = sitk.ReadImage(str(folder / "liver_seg.nrrd"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "ct")))
    ct = reader.Execute()
    assert liver.GetSize() == ct.GetSize() and np.allclose(liver.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    label_map = sitk.GetArrayFromImage(liver).astype(np.uint8)

    out = write_seg_dicom(liver, _ct_series(shared_data), tmp_path / "liver_seg.dcm", algorithm_name="radplan-lesion-seg", algorithm_version="7")
    seg = hd.seg.segread(out)
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "radplan-lesion-seg"
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in _ct_series(shared_data)}
    # SimpleITK orders slices ascending along the slice normal; read the SEG back frame by source instance in that order.
    normal = np.cross(*np.reshape(_ct_series(shared_data)[0].ImageOrientationPatient, (2, 3)))
    ordered = sorted(_ct_series(shared_data), key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))
    frames = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in ordered], combine_segments=True, relabel=False)
    assert np.array_equal(np.asarray(frames), label_map), "mask -> SEG -> mask must be lossless"
    assert int(label_map.sum()) == 107098

    again = write_seg_dicom(liver, list(reversed(_ct_series(shared_data))), tmp_path / "again.dcm", algorithm_name="radplan-lesion-seg", algorithm_version="7")
    assert pydicom.dcmread(again).SOPInstanceUID == pydicom.dcmread(out).SOPInstanceUID, "UIDs derive from content"
    with pytest.raises(ValueError, match="CT grid"):
        write_seg_dicom(label_map[:2], _ct_series(shared_data), tmp_path / "bad.dcm", algorithm_name="x", algorithm_version="1")

    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


@pytest.mark.slow
def test_cpu_default_training_learns_the_lesions(tmp_path):
    """The CPU demo setting: 20 volumes of 128x128x50 at 1.5 mm, the default CPU recipe cut to 5 epochs (its full
    run is benchmarks/bench_segmentation.py's; the whole suite must stay within its 20 minutes)."""
    pairs = sphere_volumes(tmp_path / "data", 20, shape=(128, 128, 50), seed=1)
    config = dataclasses.replace(SegmentationTrainingConfig.for_device(False), max_epochs=5)
    result = train_segmentation(pairs, config, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                                artifact_root=tmp_path / "a")
    # Untrained networks score ~0 here (whole-image Dice); this checks learning, not a quality target.
    assert result["val_dice"] > 0.3
