"""Decision support: rules + model scores + PGx + trials -> per-patient recommendations -> clinician exports."""

import json

import numpy as np
import SimpleITK as sitk
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from radplan.decision import export, recommend, rules, trials
from radplan.genomics.actionable import load_knowledge_base
from radplan_assets.cohort import upstream_run_ids
from radplan_assets.imaging import mask_table
from radplan_assets.partitions import patient_partitions
from radplan_resources import LakeResource, LandingZoneResource


def _facts(lake: LakeResource, patient_key: str) -> dict:
    row = lake.read_table("features", "patient_features", patient_key).iloc[0].to_dict()
    strata = lake.read_table_if_present("features", "patient_strata")
    mine = strata[strata["patient_key"] == patient_key] if len(strata) else strata
    row["stratum"] = int(mine["stratum"].iloc[0]) if len(mine) else None
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}


@asset(
    group_name="decision",
    partitions_def=patient_partitions,
    deps=["patient_features", "patient_strata", "response_model"],
    description="Per patient and candidate therapy: rule verdicts with the facts that matched, model response probability "
    "with interval and top attributions, PGx adjustments, interactions, matched trials, stratum, rank and a "
    "plain-language rationale; every row carries rule-base, knowledge-base, model and source versions.",
)
def patient_recommendations(context: AssetExecutionContext, lake: LakeResource, landing: LandingZoneResource) -> MaterializeResult:
    patient_key = context.partition_key
    facts = _facts(lake, patient_key)
    predictions = lake.read_table("features", "response_predictions")
    mine = predictions[predictions["patient_key"] == patient_key]
    rule_base = rules.load_rule_base()
    catalog = trials.load_trial_catalog([landing.trials_dir] if landing.trials_dir.is_dir() else [])
    versions = {
        "rule_base_version": rule_base.version,
        "trial_catalog_version": trials.catalog_version(catalog),
        "knowledge_base_version": load_knowledge_base().kb_version,
        "model_name": mine["model_name"].iloc[0] if len(mine) else None,
        "model_version": mine["model_version"].iloc[0] if len(mine) else None,
        "source_runs": upstream_run_ids(context, ["patient_features"], patient_key) | upstream_run_ids(context, ["response_model", "patient_strata"], None),
    }
    frame = recommend.recommend_for_patient(facts, rule_base, model_predictions=mine, trials=catalog, versions=versions)
    lake.write_table(frame, "features", "patient_recommendations", patient_key)
    return MaterializeResult(
        metadata={
            "recommendations": len(frame),
            "actions": MetadataValue.json(frame["action"].value_counts().to_dict() if len(frame) else {}),
            "rule_base_version": str(rule_base.version),
        }
    )


def _key_slice(lake: LakeResource, patient_key: str) -> bytes | None:
    masks = mask_table(lake, patient_key)
    if masks.empty:
        return None
    vols = lake.read_table("features", "normalized_volumes", patient_key)
    item = masks.iloc[0]
    volume = vols[vols["series_uid"] == item["image_series_uid"]].iloc[0]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(lake.root_path / volume["volume_path"])))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(lake.root_path / item["mask_path"])))
    return export.key_slice_png(image, mask)


class ExportConfig(Config):
    patient_keys: list[str] = Field(
        default_factory=list,
        description="Rewrite only these patients' FHIR bundles and reports (the tables are always rebuilt); empty: every patient.",
    )


@asset(
    group_name="decision",
    deps=[patient_recommendations],
    description="What clinicians use, in lake/exports: recommendations.parquet and .csv, a validated FHIR R4 Bundle per "
    "patient, and a self-contained HTML report per patient.",
)
def recommendation_export(context: AssetExecutionContext, config: ExportConfig, lake: LakeResource) -> MaterializeResult:
    recommendations = lake.read_table("features", "patient_recommendations")
    recommendations = recommendations[list(recommend.RECOMMENDATION_COLUMNS)].sort_values(["patient_key", "rank"], ignore_index=True)
    patients = sorted(lake.read_table("features", "patient_features")["patient_key"])
    if config.patient_keys:
        # Incremental export (patient export sensor): the other patients' bundles and reports stay as they are.
        unknown = sorted(set(config.patient_keys) - set(patients))
        if unknown:
            raise ValueError(f"no feature row for patients {unknown}")
        patients = sorted(config.patient_keys)
    bundles, reports = {}, {}
    for patient_key in patients:
        # Every patient gets a bundle and a report, also one with no matching rule or trial.
        rows = recommendations[recommendations["patient_key"] == patient_key]
        facts = _facts(lake, patient_key)
        variants = lake.read_table_if_present("features", "annotated_variants", patient_key)
        pgx = lake.read_table_if_present("features", "pgx_phenotypes", patient_key)
        attributions = json.loads(rows["top_attributions"].dropna().iloc[0]) if len(rows) and rows["top_attributions"].notna().any() else []
        bundles[patient_key] = export.fhir_bundle(patient_key, rows, facts)
        reports[patient_key] = export.render_report_html(
            patient_key,
            facts,
            rows,
            key_slice_png=_key_slice(lake, patient_key),
            attribution_png=export.attribution_png(attributions) if attributions else None,
            variants=variants,
            pgx=pgx,
            radiomics_highlights={k: v for k, v in facts.items() if k.startswith("rad_") or k.endswith("lesion_volume_ml")},
        )
    summary = export.write_exports(recommendations, bundles, reports, lake.zone("exports"))
    return MaterializeResult(metadata={"patients": len(bundles), "incremental": bool(config.patient_keys), **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}})
