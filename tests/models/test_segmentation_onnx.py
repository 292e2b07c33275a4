"""ONNX lesion segmentation: export beside the torch champion, parity with torch, and the path back to a real Orthanc."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
import torch
from dagster import DagsterInstance

from radplan.imaging.derived import is_radplan_output
from radplan.imaging.masks import dice
from radplan.models import registry, segmentation_onnx
from radplan.models.segmentation import MODEL_ARTIFACT, SegmentationTrainingConfig, build_network
from radplan_assets.models import SEGMENTATION_MODEL_NAME
from radplan_resources import LakeResource, MlflowResource, OrthancPacs

pytestmark = pytest.mark.slow

# Small enough to export and run in seconds on 2 cores; a real UNet of the project's family all the same.
SMALL = SegmentationTrainingConfig(roi_size=(32, 32, 16), channels=(4, 8, 16), strides=(2, 2), sw_batch_size=4)
# The champion of the PACS test: one 1x1x1 convolution, lesion where the windowed intensity exceeds 0.6
# (window [-200, 300] HU: tissue 40 HU ~ 0.48, the synthetic lesions 150 HU ~ 0.70). Smooth, known masks.
THRESHOLD_CONFIG = SegmentationTrainingConfig(roi_size=(64, 64, 32), sw_batch_size=2, sw_overlap=0.0)


def _threshold_network(threshold: float = 0.6, gain: float = 50.0) -> torch.nn.Module:
    convolution = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        convolution.weight.copy_(torch.tensor([-gain, gain]).reshape(2, 1, 1, 1, 1))
        convolution.bias.copy_(torch.tensor([gain * threshold, -gain * threshold]))
    return torch.nn.Sequential(convolution).eval()


@pytest.fixture(scope="module")
def synthetic_ct(tmp_path_factory) -> list[Path]:
    from support.ct_series import write_ct_series

    return write_ct_series(tmp_path_factory.mktemp("ct"), rows=128, columns=128, slices=16, pixel_mm=1.0, slice_mm=2.5, lesions=2, seed=3)


def test_onnx_runtime_matches_torch_on_a_study(synthetic_ct, tmp_path):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    network = build_network(SMALL).eval()
    onnx_network = segmentation_onnx.OnnxSegmentationNetwork(
        segmentation_onnx.onnx_session(segmentation_onnx.export_onnx(network, SMALL, tmp_path / "small.onnx"), threads=2)
    )
    # Dynamic axes: a whole volume that is no sliding-window tile, and another batch size.
    volume = torch.rand((3, 1, 40, 56, 24))
    with torch.no_grad():
        expected = network(volume).numpy()
    assert np.allclose(onnx_network(volume).numpy(), expected, atol=1e-4)

    onnx_labels, _ = segmentation_onnx.predict_series_labels(synthetic_ct, onnx_network, SMALL, tmp_path)
    torch_labels, _ = segmentation_onnx.predict_series_labels(synthetic_ct, network, SMALL, tmp_path)
    onnx_mask, torch_mask = sitk.GetArrayFromImage(onnx_labels) > 0, sitk.GetArrayFromImage(torch_labels) > 0
    assert onnx_mask.shape == (16, 128, 128), "the mask is on the source CT grid"
    assert 0.05 < torch_mask.mean() < 0.95, "parity needs a mask with both classes"
    assert dice(onnx_mask, torch_mask) >= 0.999


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory):
    """An MLflow store whose champion radplan-lesion-seg is the threshold network, logged the way training logs a model."""
    folder = tmp_path_factory.mktemp("mlflow")
    tracking_uri, artifact_root = f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts"
    client = registry.mlflow_client(tracking_uri, artifact_root)
    experiment_id = registry.ensure_experiment(client, registry.SEGMENTATION_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(THRESHOLD_CONFIG.to_params())
        mlflow.log_metric("final_val_dice", 0.8)
        mlflow.pytorch.log_model(_threshold_network(), name=MODEL_ARTIFACT, serialization_format="pickle",
                                 pip_requirements=registry.pinned_requirements("torch", "monai", "numpy"))
    registry.register_with_champion_challenger(
        client, model_name=SEGMENTATION_MODEL_NAME, run_id=run.info.run_id, artifact_path=MODEL_ARTIFACT, metric_name="val_dice",
        new_value=0.8, higher_is_better=True, champion_value_on_same_data=None,
    )
    return {"tracking_uri": tracking_uri, "artifact_root": artifact_root, "client": client}


def _wait_for_stable_study_events(orthanc, count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        changes = requests.get(f"{orthanc.url}/changes", params={"since": 0, "limit": 10000}, timeout=10).json()["Changes"]
        if sum(change["ChangeType"] == "StableStudy" for change in changes) >= count:
            return
        time.sleep(0.3)
    raise TimeoutError(f"Orthanc did not announce {count} StableStudy events in {timeout_s} s")


@pytest.mark.orthanc
def test_seg_and_rtstruct_go_back_to_orthanc_once(champion_store, orthanc, synthetic_ct, tmp_path, monkeypatch):
    from support.inprocess import InProcessDaemon, definitions_with

    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path / "home"))
    source = pydicom.dcmread(synthetic_ct[0], stop_before_pixels=True)
    pacs = OrthancPacs(url=orthanc.url)
    defs = definitions_with(
        pacs=pacs,
        lake=LakeResource(root=str(tmp_path / "home" / "lake")),
        mlflow=MlflowResource(tracking_uri=champion_store["tracking_uri"], artifact_root=str(champion_store["artifact_root"])),
    )
    instance = DagsterInstance.ephemeral()
    daemon = InProcessDaemon(defs, instance)

    orthanc.store(synthetic_ct)
    _wait_for_stable_study_events(orthanc, 1)
    (study_id,) = pacs.study_ids()
    (before,), _ = pacs.list_studies()
    runs = daemon.tick_and_run("pacs_segmentation_sensor")
    assert [run.success for run in runs] == [True]
    # The champion had no ONNX file: the run exported it and stored it beside the torch model.
    client = champion_store["client"]
    version = registry.champion_version(client, SEGMENTATION_MODEL_NAME)
    assert version.tags[segmentation_onnx.ONNX_VERSION_TAG] == "onnx/lesion_segmentation.onnx"
    assert [a.path for a in client.list_artifacts(version.run_id, "onnx")] == ["onnx/lesion_segmentation.onnx"]
    assert not segmentation_onnx.champion_onnx(client, SEGMENTATION_MODEL_NAME).exported_now, "the stored export is reused"

    series = pacs.study_series(study_id)
    returned = {s["MainDicomTags"]["Modality"]: s for s in series if is_radplan_output(s["MainDicomTags"]["Modality"], s["MainDicomTags"].get("Manufacturer"))}
    assert set(returned) == {"SEG", "RTSTRUCT"}, "SEG and RTSTRUCT stored into the source study"
    seg_instance = requests.get(f"{orthanc.url}/series/{returned['SEG']['ID']}/instances", timeout=10).json()[0]
    seg = pydicom.dcmread(pacs.fetch_series(returned["SEG"]["ID"], tmp_path / "seg")[0])
    assert seg_instance["ID"] and seg.Modality == "SEG" and len(seg.SegmentSequence) >= 1
    assert seg.StudyInstanceUID == source.StudyInstanceUID, "the original study UID, not a pseudonym"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in synthetic_ct
    }
    rtstruct = pydicom.dcmread(pacs.fetch_series(returned["RTSTRUCT"]["ID"], tmp_path / "rt")[0])
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID

    # Our own objects changed the study: Orthanc announces it stable again. No second segmentation, no new intake content.
    _wait_for_stable_study_events(orthanc, 2)
    assert daemon.evaluate("pacs_segmentation_sensor") == []
    assert daemon.dropped_duplicates == 1, "the sensor saw the new event and its run key had already run"
    (after,), _ = pacs.list_studies()
    assert after.content_fingerprint == before.content_fingerprint, "the intake does not see radplan's own SEG/RTSTRUCT"
    assert len(pacs.fetch_study(after, tmp_path / "fetched")) == len(synthetic_ct)

    # No PHI in Dagster storage: the run's events and config hold neither UIDs, nor Orthanc ids, nor names.
    records = [str(record.event_log_entry) for record in instance.get_records_for_run(runs[0].run_id).records]
    stored = " ".join(records) + str(instance.get_run_by_id(runs[0].run_id).run_config)
    for phi in (source.StudyInstanceUID, source.SeriesInstanceUID, str(source.PatientName), source.PatientID, study_id):
        assert phi not in stored
