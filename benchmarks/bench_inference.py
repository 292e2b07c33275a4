"""Single-study lesion segmentation latency on 2 CPU threads: onnxruntime vs torch, and study stable -> SEG in Orthanc.

Study: a synthetic 512x512x100 CT (0.8 mm pixels, 2.5 mm slices, 3 spherical lesions; tests/support/ct_series.py).
Network: the CPU champion configuration (``SegmentationTrainingConfig()``: UNet 16-32-64-128, ROI 48x48x32, overlap
0.25), seeded and untrained, its output bias set so that about 0.3 % of the voxels are lesion (see
``_calibrate_foreground``). Compute does not depend on the weights; the SEG's size does, so the mask's lesion
count and foreground fraction are recorded next to the timings.

Timed per run (median of ``--runs``): read the DICOM series, resample it to 1.5 mm, infer (MONAI sliding
window), split it into lesions, resample the label map back to the source grid, write the DICOM SEG. Rows:
- onnxruntime (CPU execution provider, 2 intra-op threads) vs torch (2 threads) with the training ROI;
  both crop the resampled volume to the body's bounding box first (voxels above the HU window floor);
- the RTSTRUCT writer alone, on the onnxruntime mask.

``pacs`` row: with a real Orthanc (StableAge 1 s), the time from Orthanc's StableStudy event to the SEG stored
in the same study. The sensor is ticked in-process, as in the tests. The ONNX file is exported beforehand, as
happens the first time a champion is used. Not included: the daemon's sensor interval (up to 15 s) and a run
worker's start-up.

    python benchmarks/bench_inference.py [--runs 3] [--skip-pacs]      (about 6-10 min on 2 quiet cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK, load_average, result_row, write_results  # noqa: E402

TARGET_STUDY_S = 5.0
TARGET_PACS_S = 60.0
THREADS = 2


def _median_run(label: str, runs: int, function) -> tuple[float, list[float], dict]:
    times, last = [], {}
    for index in range(runs):
        started = time.perf_counter()
        last = function()
        times.append(round(time.perf_counter() - started, 3))
        print(f"{label}: run {index + 1}/{runs} {times[-1]:.2f} s (load {load_average()})", flush=True)
    return statistics.median(times), times, last


def _calibrate_foreground(network, config, series_paths, folder: Path, fraction: float) -> float:
    """Shift the output bias of the untrained network so that about ``fraction`` of the study's voxels are lesion.

    Compute does not depend on the weights, but the SEG and RTSTRUCT do: an untrained UNet marks about half the
    volume in speckle, which no lesion model does. The final convolution adds straight onto the logits, so its
    bias moves the lesion/background margin uniformly. Returns the shift.
    """
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from radplan.imaging import volumes
    from radplan.models.segmentation import IMAGE_KEY, evaluation_transforms
    import pydicom
    import SimpleITK as sitk

    image = volumes.load_series_volume(series_paths)
    normalized, _ = volumes.normalize_volume(image, "CT", pydicom.dcmread(series_paths[0], stop_before_pixels=True), spacing_mm=config.spacing_mm)
    path = folder / "calibration.nii"
    sitk.WriteImage(normalized, str(path))
    data = evaluation_transforms(config, with_label=False)({IMAGE_KEY: str(path)})[IMAGE_KEY].unsqueeze(0)
    with torch.no_grad():
        logits = sliding_window_inference(data, config.roi_size, config.sw_batch_size, network, overlap=0.0)
    margin = (logits[:, 1] - logits[:, 0]).flatten().numpy()
    shift = float(np.quantile(margin, 1.0 - fraction))
    last = [m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.bias[1] -= shift / 2
        last.bias[0] += shift / 2
    return shift


def _pacs_latency(network, config, series_paths: list[Path], folder: Path) -> dict:
    """Seconds from Orthanc's StableStudy event to the SEG in the study (sensor ticked once a second, in-process)."""
    import mlflow
    import mlflow.pytorch
    import requests
    from dagster import DagsterInstance

    from radplan.models import registry, segmentation_onnx
    from radplan.models.segmentation import MODEL_ARTIFACT
    from radplan_assets.models import SEGMENTATION_MODEL_NAME
    from radplan_resources import LakeResource, MlflowResource, OrthancPacs
    from support.inprocess import InProcessDaemon, definitions_with
    from support.orthanc import OrthancServer

    tracking_uri, artifact_root = f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts"
    client = registry.mlflow_client(tracking_uri, artifact_root)
    experiment_id = registry.ensure_experiment(client, registry.SEGMENTATION_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(config.to_params())
        mlflow.log_metric("final_val_dice", 0.8)  # passes the asset's quality gate; the weights are untrained
        mlflow.pytorch.log_model(network, name=MODEL_ARTIFACT, serialization_format="pickle",
                                 pip_requirements=registry.pinned_requirements("torch", "monai", "numpy"))
    registry.register_with_champion_challenger(client, model_name=SEGMENTATION_MODEL_NAME, run_id=run.info.run_id, artifact_path=MODEL_ARTIFACT,
                                               metric_name="val_dice", new_value=0.8, higher_is_better=True, champion_value_on_same_data=None)
    segmentation_onnx.champion_onnx(client, SEGMENTATION_MODEL_NAME)  # the export, as on a champion's first use

    server = OrthancServer(folder / "orthanc", stable_age_s=1).start()
    try:
        pacs = OrthancPacs(url=server.url)
        defs = definitions_with(pacs=pacs, lake=LakeResource(root=str(folder / "home" / "lake")),
                                mlflow=MlflowResource(tracking_uri=tracking_uri, artifact_root=str(artifact_root)))
        daemon = InProcessDaemon(defs, DagsterInstance.ephemeral())
        daemon.evaluate("pacs_segmentation_sensor")  # cursor at the feed's end; also imports everything (not timed)
        server.store(series_paths)
        while True:
            changes = requests.get(f"{server.url}/changes", params={"since": 0, "limit": 100000}, timeout=10).json()["Changes"]
            if any(change["ChangeType"] == "StableStudy" for change in changes):
                stable_at = time.perf_counter()
                break
            time.sleep(0.1)
        runs = []
        while not runs:
            runs = daemon.tick_and_run("pacs_segmentation_sensor")
            if not runs:
                time.sleep(1.0)
        study_id = pacs.study_ids()[0]
        stored = [s for s in pacs.study_series(study_id) if s["MainDicomTags"].get("Modality") == "SEG"]
        latency = time.perf_counter() - stable_at
        return {"latency_s": round(latency, 2), "run_success": all(r.success for r in runs), "seg_in_study": len(stored) == 1}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1 if QUICK else 3)
    parser.add_argument("--skip-pacs", action="store_true", help="only the single-study latency rows")
    parser.add_argument("--out", default="inference.json")
    args = parser.parse_args()

    os.environ.setdefault("RADPLAN_DEMO", "1")
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
    import pydicom
    import SimpleITK as sitk
    import torch

    from radplan.imaging.rtstruct import write_rtstruct
    from radplan.models import segmentation_onnx
    from radplan.models.segmentation import SegmentationTrainingConfig, build_network
    from radplan.settings import disable_telemetry
    from support.ct_series import write_ct_series

    disable_telemetry()
    torch.set_num_threads(THREADS)
    load_at_start = load_average()
    rows_, columns, slices = (256, 256, 40) if QUICK else (512, 512, 100)
    with tempfile.TemporaryDirectory(prefix="radplan-bench-inference-") as tmp:
        folder = Path(tmp)
        series = write_ct_series(folder / "ct", rows=rows_, columns=columns, slices=slices, lesions=3, seed=1)
        config = SegmentationTrainingConfig()
        torch.manual_seed(0)
        network = build_network(config).eval()
        bias_shift = _calibrate_foreground(network, config, series, folder, fraction=0.003)
        started = time.perf_counter()
        onnx_path = segmentation_onnx.export_onnx(network, config, folder / "model.onnx")
        export_s = round(time.perf_counter() - started, 2)
        onnx_network = segmentation_onnx.OnnxSegmentationNetwork(segmentation_onnx.onnx_session(onnx_path, THREADS))

        def study(net, cfg, name):
            def run():
                return segmentation_onnx.segment_series(series, net, cfg, folder / name, algorithm_name="radplan-lesion-seg",
                                                        algorithm_version="bench", with_rtstruct=False)
            return run

        measured, peak_rss_mb = {}, {}
        for key, net, cfg in (("onnx", onnx_network, config), ("torch", network, config)):
            measured[key] = _median_run(key, args.runs, study(net, cfg, key))
            # Peak RSS of this process so far (torch runs second: its figure covers both).
            peak_rss_mb[key] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

        onnx_result = measured["onnx"][2]
        seg = pydicom.dcmread(onnx_result.seg_path)
        sources = [pydicom.dcmread(p) for p in series]
        labels_array, _ = segmentation_onnx.predict_series_labels(series, onnx_network, config, folder)
        rt_s, rt_times, _ = _median_run("rtstruct", args.runs, lambda: write_rtstruct(labels_array, sources, folder / "rt.dcm",
                                                                                     algorithm_name="radplan-lesion-seg", algorithm_version="bench"))
        mask_info = {"lesions": onnx_result.lesions, "foreground_fraction": round(onnx_result.lesion_voxels / (rows_ * columns * slices), 4),
                     "seg_segments": len(seg.SegmentSequence), "seg_frames": int(seg.NumberOfFrames)}
        common = {"study": f"synthetic CT {rows_}x{columns}x{slices}, 0.8 mm pixels, 2.5 mm slices", "threads": THREADS,
                  "network": f"SegmentationTrainingConfig() UNet {'-'.join(map(str, config.channels))} (untrained weights, output bias set for ~0.3 % lesion voxels)",
                  "bias_shift": round(bias_shift, 4), "onnx_export_s": export_s,
                  "load_average_at_start": load_at_start, "shared_machine": True, **mask_info}
        ours, peers = measured["onnx"], measured["torch"]
        rows = [result_row(
            "study_seg_latency_onnx", radplan=round(ours[0], 2), peer=round(peers[0], 2), unit="s (median wall time; peer: torch)",
            ratio=round(ours[0] / peers[0], 3), runs=args.runs, mode="body bounding box in sliding-window tiles, training ROI 48x48x32, overlap 0.25",
            times_s=ours[1], peer_times_s=peers[1],
            steps_s={k: round(v, 3) for k, v in ours[2].seconds.items()}, peer_steps_s={k: round(v, 3) for k, v in peers[2].seconds.items()},
            target_seconds=TARGET_STUDY_S, within_target=ours[0] <= TARGET_STUDY_S,
            peak_rss_mb_so_far=peak_rss_mb["onnx"], peer_peak_rss_mb_so_far=peak_rss_mb["torch"], **common,
        )]
        rows.append(result_row("rtstruct_write", radplan=round(rt_s, 3), peer=None, unit="s (median wall time; no peer)",
                               ratio=None, runs=args.runs, times_s=rt_times, **common))
        if not args.skip_pacs:
            pacs = _pacs_latency(network, config, series, folder / "pacs")
            rows.append(result_row("study_stable_to_seg_in_orthanc", radplan=pacs["latency_s"], peer=None, unit="s (one run; no peer)",
                                   ratio=None, runs=1, target_seconds=TARGET_PACS_S, within_target=pacs["latency_s"] <= TARGET_PACS_S,
                                   not_included="daemon sensor interval (<= 15 s) and run-worker start-up; sensor ticked in-process",
                                   **{k: v for k, v in pacs.items() if k != "latency_s"}, **common))
    path = write_results(args.out, rows)
    for row in rows:
        print(f"{row['name']}: {row['radplan']} vs {row['peer']} ({row.get('mode', '')}) load {row['load_average']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
