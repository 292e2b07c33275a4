"""Decision support: rules + model scores + PGx + trials -> per-patient recommendations -> clinician exports."""

import json

import numpy as np
import pandas as pd
import SimpleITK as sitk
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from radplan.decision import export, recommend, rules, trials
from radplan.genomics.actionable import load_knowledge_base
from radplan.imaging.masks import preferred_masks
from radplan_assets.cohort import upstream_run_ids
from radplan_assets.partitions import patient_partitions
from radplan_resources import LakeResource, LandingZoneResource
from radplan_resources.io_manager import one_table_of, optional_input


def _rows_of(frame: pd.DataFrame, patient_key: str) -> pd.DataFrame:
    return frame[frame["patient_key"] == patient_key] if len(frame) else frame


def _facts(patient_features: pd.DataFrame, patient_strata: pd.DataFrame, patient_key: str) -> dict:
    row = _rows_of(patient_features, patient_key).iloc[0].to_dict()
    mine = _rows_of(patient_strata, patient_key)
    row["stratum"] = int(mine["stratum"].iloc[0]) if len(mine) else None
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}


@asset(
    group_name="decision",
    partitions_def=patient_partitions,
    ins={"patient_strata": optional_input(), "response_model": one_table_of("predictions")},
    description="Per patient and candidate therapy: rule verdicts with the facts that matched, model response probability "
    "with interval and top attributions, PGx adjustments, interactions, matched trials, stratum, rank and a "
    "plain-language rationale; every row carries rule-base, knowledge-base, model and source versions.",
)
def patient_recommendations(
    context: AssetExecutionContext,
    patient_features: pd.DataFrame,
    patient_strata: pd.DataFrame,
    response_model: pd.DataFrame,
    landing: LandingZoneResource,
) -> MaterializeResult:
    patient_key = context.partition_key
    facts = _facts(patient_features, patient_strata, patient_key)
    mine = _rows_of(response_model, patient_key)
    rule_base = rules.load_rule_base()
    catalog = trials.load_trial_catalog([landing.trials_dir] if landing.trials_dir.is_dir() else [])
    versions = {
        "rule_base_version": rule_base.version,
        "trial_catalog_version": trials.catalog_version(catalog),
        "knowledge_base_version": load_knowledge_base().kb_version,
        "model_name": mine["model_name"].iloc[0] if len(mine) else None,
        "model_version": mine["model_version"].iloc[0] if len(mine) else None,
        "source_runs": upstream_run_ids(context, [context.asset_key_for_input("patient_features")], patient_key)
        | upstream_run_ids(context, [context.asset_key_for_input(name) for name in ("response_model", "patient_strata")], None),
    }
    frame = recommend.recommend_for_patient(facts, rule_base, model_predictions=mine, trials=catalog, versions=versions)
    return MaterializeResult(
        value=frame,
        metadata={
            "recommendations": len(frame),
            "actions": MetadataValue.json(frame["action"].value_counts().to_dict() if len(frame) else {}),
            "rule_base_version": str(rule_base.version),
        }
    )


def _key_slice(lake: LakeResource, masks: pd.DataFrame, vols: pd.DataFrame) -> bytes | None:
    """The patient's first masked series: the slice with the most lesion, outlined."""
    if masks.empty:
        return None
    item = masks.iloc[0]
    volume = vols[vols["series_uid"] == item["image_series_uid"]].iloc[0]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(lake.root_path / volume["volume_path"])))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(lake.root_path / item["mask_path"])))
    return export.key_slice_png(image, mask)


@asset(
    group_name="decision",
    partitions_def=patient_partitions,
    ins={name: optional_input() for name in ("annotated_variants", "pgx_phenotypes", "patient_strata", "predicted_lesion_masks")},
    description="What a clinician reads for one patient, written with the patient's recommendations: a validated FHIR R4 "
    "Bundle (lake/exports/fhir/<patient>.json) and a self-contained HTML report (lake/exports/reports/<patient>.html).",
)
def patient_report(
    context: AssetExecutionContext,
    patient_recommendations: pd.DataFrame,
    patient_features: pd.DataFrame,
    patient_strata: pd.DataFrame,
    annotated_variants: pd.DataFrame,
    pgx_phenotypes: pd.DataFrame,
    normalized_volumes: pd.DataFrame,
    lesion_masks: pd.DataFrame,
    predicted_lesion_masks: pd.DataFrame,
    lake: LakeResource,
) -> MaterializeResult:
    patient_key = context.partition_key
    # Every patient gets a bundle and a report, also one with no matching rule or trial.
    columns = list(recommend.RECOMMENDATION_COLUMNS)
    rows = _rows_of(patient_recommendations, patient_key)[columns].sort_values("rank", ignore_index=True)
    facts = _facts(patient_features, patient_strata, patient_key)
    attributions = json.loads(rows["top_attributions"].dropna().iloc[0]) if len(rows) and rows["top_attributions"].notna().any() else []
    masks = preferred_masks(_rows_of(lesion_masks, patient_key), _rows_of(predicted_lesion_masks, patient_key))
    provenance = {"Report run id": context.run_id}
    bundle = export.fhir_bundle(patient_key, rows, facts, provenance=provenance)
    report = export.render_report_html(
        patient_key,
        facts,
        rows,
        key_slice_png=_key_slice(lake, masks, _rows_of(normalized_volumes, patient_key)),
        attribution_png=export.attribution_png(attributions) if attributions else None,
        variants=_rows_of(annotated_variants, patient_key).reset_index(drop=True),
        pgx=_rows_of(pgx_phenotypes, patient_key).reset_index(drop=True),
        radiomics_highlights={k: v for k, v in facts.items() if k.startswith("rad_") or k.endswith("lesion_volume_ml")},
        provenance=provenance,
    )
    summary = export.write_patient_documents({patient_key: bundle}, {patient_key: report}, lake.zone("exports"))
    return MaterializeResult(metadata={"recommendations": len(rows), "fhir_bytes": summary["bytes"]["fhir"],
                                       "report_bytes": summary["bytes"]["reports"]})


@asset(
    group_name="decision",
    description="The cohort's recommendations table for analysts and downstream systems, in lake/exports: "
    "recommendations.parquet and .csv with their data dictionary (COLUMNS.md, columns.json). Each patient's FHIR bundle "
    "and report are written by patient_report.",
)
def recommendation_export(context: AssetExecutionContext, patient_recommendations: pd.DataFrame, lake: LakeResource) -> MaterializeResult:
    recommendations = patient_recommendations[list(recommend.RECOMMENDATION_COLUMNS)].sort_values(["patient_key", "rank"], ignore_index=True)
    summary = export.write_recommendation_tables(recommendations, lake.zone("exports"))
    return MaterializeResult(metadata={k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
