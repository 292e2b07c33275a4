"""Back to the PACS: the champion's lesion SEG and RTSTRUCT for a newly stable study, stored in the hospital's Orthanc.

The study is read from the PACS as the hospital sent it, segmented with the champion's ONNX export on
onnxruntime (radplan.models.segmentation_onnx), and the results are stored back next to it. They
reference the ORIGINAL study, series and instance UIDs because they are made from the original
instances, in a temporary folder that is deleted when the run ends; the pseudonymised lake is not
involved, so no mapping from pseudonymised UIDs back to the originals is needed or stored anywhere.
Dagster sees a keyed token per study (from the sensor) and counts; no UID, Orthanc id or name.
torch, MONAI and onnxruntime are imported when the asset runs, not when the code location loads.
"""

import tempfile
import time
from pathlib import Path

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from radplan.errors import RadplanInputError
from radplan_assets.models import SEGMENTATION_MODEL_NAME, champion_validation_dice
from radplan_resources import DeidKeyResource, LakeResource, MlflowResource, OrthancPacs, PacsResource
from radplan_resources.pacs import PACS_RETRY_POLICY

# Purpose string of the keyed token that names an Orthanc study in run configs and run keys.
STUDY_TOKEN_PURPOSE = "pacs-return-study"
SEGMENTED_MODALITIES = {"CT"}
# radplan.models.segmentation_onnx.DEFAULT_THREADS, spelled out so that loading the code location imports no torch
# (tests/test_definitions.py checks they agree).
ONNX_DEFAULT_THREADS = 2


class PacsSegmentationConfig(Config):
    study_tokens: list[str] = Field(default=[], description="Keyed tokens of the Orthanc studies to segment (from pacs_segmentation_sensor)")
    min_champion_dice: float = Field(default=0.5, description="Quality gate: the champion's held-out Dice must reach this")
    onnx_threads: int = Field(default=ONNX_DEFAULT_THREADS, description="onnxruntime intra-op threads")
    with_rtstruct: bool = True


@asset(
    group_name="models",
    deps=["segmentation_model"],
    retry_policy=PACS_RETRY_POLICY,
    description="For newly stable PACS studies (pacs_segmentation_sensor): the champion lesion model's DICOM SEG and RTSTRUCT "
    "per CT series, inferred with onnxruntime on the original instances and stored back into Orthanc, referencing the "
    "original UIDs. radplan's own SEG/RTSTRUCT (Manufacturer radplan) are never taken for new studies or reference masks. "
    "PHI only in a temporary folder during the run; metadata holds counts.",
)
def pacs_lesion_segmentations(
    context: AssetExecutionContext,
    config: PacsSegmentationConfig,
    pacs: PacsResource,
    mlflow: MlflowResource,
    deid_key: DeidKeyResource,
    lake: LakeResource,
) -> MaterializeResult:
    if not isinstance(pacs, OrthancPacs):
        raise RadplanInputError(f"pacs_lesion_segmentations stores results through Orthanc's REST API; the PACS is a {type(pacs).__name__}")
    from radplan.models import registry, segmentation_onnx

    started = time.perf_counter()
    pseudonymizer = deid_key.pseudonymizer()
    wanted = set(config.study_tokens)
    studies = [study for study in pacs.study_ids() if pseudonymizer.token(STUDY_TOKEN_PURPOSE, study) in wanted]
    client = registry.mlflow_client(mlflow.tracking_uri, mlflow.artifact_path)
    champion_dice = champion_validation_dice(client)
    summary = {"studies_requested": len(wanted), "studies_found": len(studies), "series_segmented": 0, "lesions": 0,
               "instances_stored": 0, "series_failed": 0, "quarantine_ids": []}
    if champion_dice is None or champion_dice < config.min_champion_dice:
        context.log.warning(f"no usable champion (held-out Dice {champion_dice}, minimum {config.min_champion_dice}): nothing segmented")
        return MaterializeResult(metadata={**summary, "model_version": "none", "quarantine_ids": MetadataValue.json([])})
    champion = segmentation_onnx.champion_onnx(client, SEGMENTATION_MODEL_NAME, threads=config.onnx_threads)
    if champion.exported_now:
        context.log.info(f"exported champion v{champion.version} to ONNX and stored it beside the torch model")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="radplan-pacs-return-") as folder:
        for study_index, study in enumerate(studies):
            for series_index, series in enumerate(pacs.source_series(study)):
                if series.get("MainDicomTags", {}).get("Modality") not in SEGMENTED_MODALITIES:
                    continue
                work = Path(folder) / f"{study_index:04d}-{series_index:04d}"
                files = pacs.fetch_series(series["ID"], work / "source")
                try:
                    result = segmentation_onnx.segment_series(
                        files, champion.network, champion.config, work / "out",
                        algorithm_name=SEGMENTATION_MODEL_NAME, algorithm_version=str(champion.version), with_rtstruct=config.with_rtstruct,
                    )
                except RadplanInputError as error:
                    # A series that is not one regular CT volume: quarantined (raw zone, PHI), the others go on.
                    summary["series_failed"] += 1
                    summary["quarantine_ids"].append(lake.quarantine(work / "source", "pacs-return", error).safe_summary())
                    continue
                for path in (result.seg_path, result.rtstruct_path):
                    if path is not None:
                        pacs.store_instance(path)
                        summary["instances_stored"] += 1
                summary["series_segmented"] += 1
                summary["lesions"] += result.lesions
                for step, seconds in result.seconds.items():
                    timings[step] = timings.get(step, 0.0) + seconds
    context.log.info(
        f"{summary['series_segmented']} CT series segmented in {len(studies)} studies, {summary['instances_stored']} objects "
        f"stored back, {summary['series_failed']} series quarantined"
    )
    return MaterializeResult(
        metadata={
            **summary,
            "quarantine_ids": MetadataValue.json(summary["quarantine_ids"]),
            "model_version": str(champion.version),
            "champion_val_dice": champion_dice,
            "seconds": round(time.perf_counter() - started, 2),
            "step_seconds": MetadataValue.json({step: round(value, 3) for step, value in timings.items()}),
        }
    )
