"""Imaging chain: PACS studies -> de-identified DICOM -> series metadata, normalized volumes, lesion masks, radiomics."""

import json
from typing import Literal

import pandas as pd
import pydicom
import SimpleITK as sitk
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from radplan.errors import InvalidDicomError, RadplanInputError
from radplan.imaging import masks as mask_ops
from radplan.imaging import radiomics, volumes
from radplan.imaging.deid import DeidOptions, deidentify_file
from radplan.imaging.series import InstanceHeader, group_series, read_instance_header, validate_instance
from radplan_assets.ingest import patient_inventory
from radplan_assets.partitions import patient_partitions
from radplan_resources import DeidKeyResource, LakeResource, PacsResource
from radplan_resources.io_manager import one_table_of, optional_input
from radplan_resources.pacs import PACS_RETRY_POLICY, StudyLocation

IMAGE_MODALITIES = {"CT", "MR", "PT"}
MASK_MODALITIES = {"SEG", "RTSTRUCT"}


def _deid_headers(lake: LakeResource, patient_key: str) -> list[InstanceHeader]:
    folder = lake.zone("deid") / "dicom" / patient_key
    return [read_instance_header(p) for p in sorted(folder.rglob("*.dcm"))] if folder.is_dir() else []


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    retry_policy=PACS_RETRY_POLICY,
    description="The patient's studies fetched from the PACS into the raw zone (PHI). Each instance is validated; "
    "non-DICOM, truncated or pixel-less instances are quarantined and the rest of the study goes on.",
    ins={"landing_inventory": one_table_of("dicom_studies")},
)
def pacs_studies(
    context: AssetExecutionContext, landing_inventory: pd.DataFrame, lake: LakeResource, pacs: PacsResource, deid_key: DeidKeyResource
) -> MaterializeResult:
    patient_key = context.partition_key
    pseudonymizer = deid_key.pseudonymizer()
    studies = patient_inventory(landing_inventory, patient_key)
    kept, quarantined = 0, []
    with lake.rebuild_patient_dir("raw", "dicom", patient_key) as staging:
        for row in studies.itertuples():
            location = StudyLocation(row.source_patient_id, row.study_ref, tuple(row.files))
            for path in pacs.fetch_study(location, staging / pseudonymizer.token("study-folder", row.study_ref)):
                try:
                    validate_instance(path)
                    kept += 1
                except InvalidDicomError as error:
                    quarantined.append(lake.quarantine(path, "pacs-ingest", error).safe_summary())
                    path.unlink()
    context.log.info(f"{len(studies)} studies, {kept} instances kept, {len(quarantined)} quarantined")
    return MaterializeResult(
        metadata={"studies": len(studies), "instances": kept, "quarantined": len(quarantined), "quarantine_ids": MetadataValue.json(quarantined)}
    )


class DeidStudiesConfig(Config):
    burned_in_policy: str = "quarantine"


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    deps=[pacs_studies],
    description="DICOM de-identified per PS3.15 Annex E (Basic Profile + Retain Longitudinal Temporal Information with "
    "Modified Dates, Retain Patient Characteristics, Clean Descriptors); UIDs remapped with the keyed hash; burned-in "
    "annotation quarantined. Everything from here on is PHI-free.",
)
def deid_studies(context: AssetExecutionContext, config: DeidStudiesConfig, lake: LakeResource, deid_key: DeidKeyResource) -> MaterializeResult:
    patient_key = context.partition_key
    pseudonymizer = deid_key.pseudonymizer()
    options = DeidOptions(burned_in_policy=config.burned_in_policy)
    sources = sorted((lake.zone("raw") / "dicom" / patient_key).rglob("*.dcm"))
    written, flagged, quarantined = 0, 0, []
    with lake.rebuild_patient_dir("deid", "dicom", patient_key) as staging:
        for index, source in enumerate(sources, start=1):
            with lake.open_raw(source) as plain:  # decrypted when the raw zone is encrypted at rest
                try:
                    result = deidentify_file(plain, staging, pseudonymizer, options)
                except RadplanInputError as error:
                    quarantined.append(lake.quarantine(plain, "dicom-deid", error).safe_summary())
                    continue
            if result.patient_key != patient_key:
                raise RuntimeError("de-identified instance maps to another patient key; inventory and PACS disagree")
            written += 1
            flagged += int(result.burned_in_flagged)
            if index % 200 == 0:
                context.log.info(f"de-identified {index}/{len(sources)} instances")
        # deidentify_file writes <out>/<patient_key>/...; the staging folder is already the patient's folder.
        nested = staging / patient_key
        if nested.is_dir():
            for child in nested.iterdir():
                child.rename(staging / child.name)
            nested.rmdir()
    return MaterializeResult(
        metadata={
            "instances": written,
            "burned_in_flagged": flagged,
            "quarantined": len(quarantined),
            "quarantine_ids": MetadataValue.json(quarantined),
            "key_fingerprint": pseudonymizer.key_fingerprint,
        }
    )


def _series_row(series_uid: str, instances: list[InstanceHeader]) -> dict:
    first = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
    spacing = [float(v) for v in first.get("PixelSpacing", [])] or [None, None]
    return {
        "study_uid": instances[0].study_uid,
        "series_uid": series_uid,
        "modality": instances[0].modality,
        "sop_class_uid": instances[0].sop_class_uid,
        "instances": len(instances),
        "rows": int(first.get("Rows", 0) or 0),
        "columns": int(first.get("Columns", 0) or 0),
        "pixel_spacing_row_mm": spacing[0],
        "pixel_spacing_col_mm": spacing[1],
        "slice_thickness_mm": float(first.get("SliceThickness")) if first.get("SliceThickness") not in (None, "") else None,
        "kvp": float(first.get("KVP")) if first.get("KVP") not in (None, "") else None,
        "convolution_kernel": str(first.get("ConvolutionKernel", "")) or None,
        "manufacturer": str(first.get("Manufacturer", "")) or None,
        "study_date_shifted": str(first.get("StudyDate", "")) or None,
        "series_date_shifted": str(first.get("SeriesDate", "")) or None,
        "body_part": str(first.get("BodyPartExamined", "")) or None,
    }


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    deps=[deid_studies],
    description="One row per de-identified series: modality, geometry, counts, acquisition parameters, shifted dates.",
)
def imaging_metadata(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    rows = [
        _series_row(series_uid, instances)
        for series in group_series(_deid_headers(lake, patient_key)).values()
        for series_uid, instances in series.items()
    ]
    frame = pd.DataFrame(rows)
    return MaterializeResult(
        value=frame,
        metadata={
            "series": len(frame),
            "studies": int(frame["study_uid"].nunique()) if len(frame) else 0,
            "modalities": MetadataValue.json(sorted(frame["modality"].unique().tolist()) if len(frame) else []),
        }
    )


class VolumeConfig(Config):
    spacing_mm: float = 1.5


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    deps=[deid_studies],
    description="Each image series (CT/MR/PET) as a 3-D volume: slices ordered by geometry, CT in HU, PET in SUV, "
    "MR z-scored, resampled to an isotropic grid; NIfTI files plus a table of settings.",
)
def normalized_volumes(context: AssetExecutionContext, config: VolumeConfig, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    rows, quarantined = [], []
    with lake.rebuild_patient_dir("features", "volumes", patient_key) as staging:
        for series in group_series(_deid_headers(lake, patient_key)).values():
            for series_uid, instances in series.items():
                if instances[0].modality not in IMAGE_MODALITIES:
                    continue
                paths = [i.path for i in instances]
                header = pydicom.dcmread(paths[0], stop_before_pixels=True)
                try:
                    image = volumes.load_series_volume(paths)
                    normalized, settings = volumes.normalize_volume(image, instances[0].modality, header, spacing_mm=config.spacing_mm)
                except RadplanInputError as error:
                    quarantined.append(lake.quarantine(paths[0].parent, "volume", error).safe_summary())
                    continue
                target = staging / f"{series_uid}.nii.gz"
                sitk.WriteImage(normalized, str(target), useCompression=True)
                rows.append(
                    {
                        "study_uid": instances[0].study_uid,
                        "series_uid": series_uid,
                        "modality": instances[0].modality,
                        "study_date_shifted": str(header.get("StudyDate", "")),
                        "volume_path": f"features/volumes/{patient_key}/{series_uid}.nii.gz",
                        "size": json.dumps(list(normalized.GetSize())),
                        "settings": json.dumps(settings, sort_keys=True, default=str),
                    }
                )
    frame = pd.DataFrame(rows)
    return MaterializeResult(
        value=frame,
        metadata={
            "volumes": len(frame),
            "quarantined": len(quarantined),
            "spacing_mm": config.spacing_mm,
            "settings": MetadataValue.json(json.loads(rows[0]["settings"]) if rows else {}),
        }
    )


def _referenced_series_uid(ds: pydicom.Dataset) -> str | None:
    """The image series a SEG or RTSTRUCT was drawn on."""
    for item in ds.get("ReferencedSeriesSequence", []):
        return str(item.SeriesInstanceUID)
    for frame_ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame_ref.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID)
    return None


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    deps=[deid_studies],
    description="Reference lesion masks from the study's DICOM SEG or RTSTRUCT, rasterized on the image grid, moved "
    "onto the normalized volume grid and split into connected lesions (labels 1..n).",
)
def lesion_masks(context: AssetExecutionContext, normalized_volumes: pd.DataFrame, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    headers = _deid_headers(lake, patient_key)
    by_series: dict[str, list[InstanceHeader]] = {}
    for series in group_series(headers).values():
        by_series.update(series)
    vols = normalized_volumes
    volume_by_series = dict(zip(vols["series_uid"], vols["volume_path"])) if len(vols) else {}
    rows, quarantined = [], []
    with lake.rebuild_patient_dir("features", "masks", patient_key) as staging:
        for series_uid, instances in sorted(by_series.items()):
            modality = instances[0].modality
            if modality not in MASK_MODALITIES:
                continue
            source = instances[0].path
            reference_uid = _referenced_series_uid(pydicom.dcmread(source, stop_before_pixels=True))
            try:
                if reference_uid not in by_series or reference_uid not in volume_by_series:
                    raise InvalidDicomError(f"{modality} references a series that is not in the study or has no volume")
                reference_paths = [i.path for i in by_series[reference_uid]]
                extract = mask_ops.mask_from_seg if modality == "SEG" else mask_ops.mask_from_rtstruct
                named_masks = extract(source, reference_paths)
            except RadplanInputError as error:
                quarantined.append(lake.quarantine(source, "lesion-mask", error).safe_summary())
                continue
            reference = sitk.ReadImage(str(lake.root_path / volume_by_series[reference_uid]))
            combined = None
            for mask in named_masks.values():
                on_grid = volumes.resample_mask_to(mask, reference)
                combined = on_grid if combined is None else sitk.Or(combined, on_grid)
            labels = mask_ops.label_lesions(combined)
            target = staging / f"{reference_uid}.nii.gz"
            sitk.WriteImage(labels, str(target), useCompression=True)
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(labels)
            rows.append(
                {
                    "image_series_uid": reference_uid,
                    "mask_series_uid": series_uid,
                    "source": modality,
                    "lesions": len(stats.GetLabels()),
                    "mask_path": f"features/masks/{patient_key}/{reference_uid}.nii.gz",
                }
            )
    frame = pd.DataFrame(rows, columns=["image_series_uid", "mask_series_uid", "source", "lesions", "mask_path"])
    return MaterializeResult(
        value=frame,
        metadata={"masks": len(frame), "lesions": int(frame["lesions"].sum()) if len(frame) else 0, "quarantined": len(quarantined)}
    )


class RadiomicsConfig(Config):
    workers: int = Field(default=2, description="Processes extracting the patient's lesions (1: in this process).")
    mode: Literal["pyradiomics", "ibsi"] = Field(
        default="pyradiomics",
        description="pyradiomics: output identical to bare pyradiomics with the modality's parameter file. ibsi: the IBSI "
        "preprocessing (rounding, range + outlier re-segmentation, FBS from the range's lower bound) in front; the "
        "volumes are resampled upstream by normalized_volumes, not on the IBSI grid (recorded in extraction_settings).",
    )


@asset(
    group_name="imaging",
    partitions_def=patient_partitions,
    ins={"predicted_lesion_masks": optional_input()},
    description="pyradiomics features per lesion (IBSI-aligned parameter file per modality; pyradiomics-compatible or "
    "IBSI preprocessing, config mode), one row per lesion, with the mode, every extraction setting, the upstream "
    "resampling and the pyradiomics version stored beside every row.",
)
def radiomic_features(
    context: AssetExecutionContext,
    config: RadiomicsConfig,
    normalized_volumes: pd.DataFrame,
    lesion_masks: pd.DataFrame,
    predicted_lesion_masks: pd.DataFrame,
    lake: LakeResource,
) -> MaterializeResult:
    masks = mask_ops.preferred_masks(lesion_masks, predicted_lesion_masks)

    def report(done: int, total: int) -> None:
        context.log.info(f"radiomics: lesion {done}/{total} of {len(masks)} series")

    frame, series = radiomics.lesion_feature_table(normalized_volumes, masks, lake.root_path, mode=config.mode,
                                                   n_workers=config.workers, progress=report)
    return MaterializeResult(value=frame, metadata={"lesions": len(frame), "series": series, "mode": config.mode,
                                                    "features_per_lesion": int(frame.shape[1]) if len(frame) else 0})
