"""The lesion segmentation network served from ONNX: export, storage beside the torch model, onnxruntime inference.

Export: ``torch.onnx.export`` (the torch.export-based exporter, which needs onnxscript) at opset 18
with a dynamic batch axis and dynamic spatial axes, so the same file serves sliding-window tiles of
any ROI and whole volumes. Input ``image`` (B, 1, X, Y, Z) float32 scaled as in training, output
``logits`` (B, 2, X, Y, Z); spatial sizes must be multiples of the network's total stride, as in
training (sliding-window tiles always are).

Storage: the ONNX file is an MLflow artifact of the run that logged the torch model
(``onnx/lesion_segmentation.onnx``), so a registered version carries both; the version gets a tag
``onnx.artifact`` naming it. :func:`champion_onnx` exports it on first use when a version has none
(versions trained before this module existed), so the asset that trains need not change.

Inference: :class:`OnnxSegmentationNetwork` wraps an onnxruntime session (CPU execution provider,
2 intra-op threads by default) as a ``torch.nn.Module``, so the project's one inference path
(:func:`radplan.models.segmentation.predict_mask`: same transforms, same MONAI sliding window with
Gaussian blending, same argmax) runs unchanged on it. :func:`segment_series` does one study series
end to end: read the DICOM series, resample it to the training spacing as ``normalized_volumes``
does, infer, split into lesions as ``predicted_lesion_masks`` does, resample the label map back to
the source grid, and write a DICOM SEG and an RTSTRUCT that reference the source instances.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import torch

from radplan.imaging import masks as mask_ops
from radplan.imaging import volumes
from radplan.imaging.rtstruct import write_rtstruct
from radplan.models import registry
from radplan.models.segmentation import SegmentationTrainingConfig, predict_mask, write_seg_dicom

ONNX_ARTIFACT_DIR = "onnx"
ONNX_FILE = "lesion_segmentation.onnx"
ONNX_VERSION_TAG = "onnx.artifact"
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_THREADS = 2


def export_onnx(network: torch.nn.Module, config: SegmentationTrainingConfig, out_path: Path) -> Path:
    """Export ``network`` (CPU, eval mode) to ONNX with dynamic batch and spatial axes; checked with onnx.checker."""
    import onnx

    network = network.cpu().eval()
    example = torch.zeros((2, 1, *config.roi_size), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1024)
    spatial = {axis: torch.export.Dim.AUTO for axis in (2, 3, 4)}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter prints its progress through the root logger and stdout at INFO; keep the warnings only.
    exporter_logger = logging.getLogger("torch.onnx")
    previous_level = exporter_logger.level
    exporter_logger.setLevel(logging.WARNING)
    try:
        with torch.no_grad():
            torch.onnx.export(
                network,
                (example,),
                str(out_path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, **spatial},),
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        exporter_logger.setLevel(previous_level)
    onnx.checker.check_model(str(out_path))
    return out_path


def onnx_session(path: Path, threads: int = DEFAULT_THREADS):
    """An onnxruntime CPU session with ``threads`` intra-op threads and no inter-op parallelism."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxSegmentationNetwork(torch.nn.Module):
    """An onnxruntime session behind the torch.nn.Module interface the inference code expects."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        # predict_mask asks the module for its device; ONNX Runtime here runs on the CPU.
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


# ---------------------------------------------------------------- storage beside the torch model


def store_onnx(client, model_version, network: torch.nn.Module, config: SegmentationTrainingConfig) -> str:
    """Export ``network`` and log it as an artifact of the version's run; tags the version. Returns the artifact path."""
    with tempfile.TemporaryDirectory(prefix="radplan-onnx-") as folder:
        path = export_onnx(network, config, Path(folder) / ONNX_FILE)
        client.log_artifact(model_version.run_id, str(path), artifact_path=ONNX_ARTIFACT_DIR)
    artifact = f"{ONNX_ARTIFACT_DIR}/{ONNX_FILE}"
    client.set_model_version_tag(model_version.name, model_version.version, ONNX_VERSION_TAG, artifact)
    return artifact


def _download_onnx(client, model_version) -> Path | None:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    if model_version.tags.get(ONNX_VERSION_TAG) is None:
        return None
    try:
        local = download_artifacts(run_id=model_version.run_id, artifact_path=model_version.tags[ONNX_VERSION_TAG],
                                   tracking_uri=client.tracking_uri)
    except (MlflowException, OSError):
        return None
    return Path(local)


@dataclass(frozen=True)
class OnnxChampion:
    network: OnnxSegmentationNetwork
    config: SegmentationTrainingConfig
    version: int
    onnx_path: Path
    exported_now: bool


def champion_onnx(client, model_name: str, threads: int = DEFAULT_THREADS) -> OnnxChampion | None:
    """The champion version as an onnxruntime network with the config it was trained with; None without a champion.

    A champion without an ONNX artifact gets one now (exported from its torch model and logged to its run).
    """
    version = registry.champion_version(client, model_name)
    if version is None:
        return None
    config = SegmentationTrainingConfig.from_params(client.get_run(version.run_id).data.params)
    path = _download_onnx(client, version)
    exported_now = path is None
    if exported_now:
        store_onnx(client, version, registry.load_model_version(client, version), config)
        version = client.get_model_version(version.name, version.version)
        path = _download_onnx(client, version)
        if path is None:
            raise RuntimeError(f"{model_name} v{version.version}: the ONNX artifact just logged cannot be read back")
    network = OnnxSegmentationNetwork(onnx_session(path, threads))
    return OnnxChampion(network, config, int(version.version), path, exported_now)


# ---------------------------------------------------------------- one study series end to end


@dataclass(frozen=True)
class SeriesSegmentation:
    """What :func:`segment_series` wrote. Paths hold PHI when the source does (the source's patient and study modules)."""

    seg_path: Path
    rtstruct_path: Path | None
    lesions: int
    lesion_voxels: int
    seconds: dict


def predict_series_labels(series_paths: list[Path], network: torch.nn.Module, config: SegmentationTrainingConfig,
                          work_dir: Path) -> tuple[sitk.Image, dict]:
    """Lesion label map (1..n, largest first) on the source series' own grid, and timings in seconds."""
    if config.spacing_mm is None:
        raise ValueError("the model's training config records no voxel spacing; cannot resample the series for it")
    started = time.perf_counter()
    image = volumes.load_series_volume(series_paths)
    header = pydicom.dcmread(series_paths[0], stop_before_pixels=True)
    normalized, _ = volumes.normalize_volume(image, "CT", header, spacing_mm=config.spacing_mm)
    # predict_mask reads NIfTI through the training transforms: the exact preprocessing of training and of
    # predicted_lesion_masks. Uncompressed, in the caller's (temporary) folder.
    volume_path = Path(work_dir) / "volume.nii"
    sitk.WriteImage(normalized, str(volume_path), useCompression=False)
    resampled = time.perf_counter()
    mask = predict_mask(network, volume_path, config)
    volume_path.unlink()
    inferred = time.perf_counter()
    labels = mask_ops.label_lesions(mask)
    on_source_grid = volumes.resample_mask_to(labels, image)
    done = time.perf_counter()
    return on_source_grid, {"read_resample": resampled - started, "infer": inferred - resampled, "to_source_grid": done - inferred}


def segment_series(
    series_paths: list[Path],
    network: torch.nn.Module,
    config: SegmentationTrainingConfig,
    out_dir: Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    with_rtstruct: bool = True,
) -> SeriesSegmentation:
    """Segment one CT series and write ``seg.dcm`` (and ``rtstruct.dcm``) into ``out_dir``, referencing the source."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series_paths = [Path(p) for p in series_paths]
    labels, seconds = predict_series_labels(series_paths, network, config, out_dir)
    started = time.perf_counter()
    sources = [pydicom.dcmread(p) for p in series_paths]
    seg_path = write_seg_dicom(labels, sources, out_dir / "seg.dcm", algorithm_name=algorithm_name, algorithm_version=algorithm_version)
    seconds["write_seg"] = time.perf_counter() - started
    rtstruct_path = None
    if with_rtstruct:
        started = time.perf_counter()
        rtstruct_path = write_rtstruct(labels, sources, out_dir / "rtstruct.dcm", algorithm_name=algorithm_name, algorithm_version=algorithm_version)
        seconds["write_rtstruct"] = time.perf_counter() - started
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    voxels = int(sum(stats.GetNumberOfPixels(label) for label in stats.GetLabels()))
    return SeriesSegmentation(seg_path, rtstruct_path, len(stats.GetLabels()), voxels, seconds)
