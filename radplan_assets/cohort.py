"""Cohort: one feature row per patient, the cohort table on Spark, cohort summary and strata."""

import json

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AssetRecordsFilter, MaterializeResult, MetadataValue, asset

from radplan import cohort
from radplan_assets.partitions import patient_partitions
from radplan_resources import LakeResource, SparkResource


PATIENT_FEATURE_INPUTS = ("radiomic_features", "annotated_variants", "pgx_phenotypes", "clinical_features", "note_findings", "variants")


def upstream_run_ids(context: AssetExecutionContext, asset_names, partition_key: str | None) -> dict[str, str | None]:
    """Lineage: the run that last materialized each input (for this patient's partition)."""
    versions = {}
    for name in asset_names:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(name), asset_partitions=[partition_key] if partition_key else None), limit=1
        ).records
        versions[name] = records[0].run_id if records else None
    return versions


@asset(
    group_name="cohort",
    partitions_def=patient_partitions,
    deps=list(PATIENT_FEATURE_INPUTS),
    description="One row per patient joining radiomics (latest study, aggregated over lesions), actionable variants, "
    "PGx phenotypes, clinical features and note findings; a missing modality gives nulls and has_* = false.",
)
def patient_features(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    variants_dir = lake.partition_dir("features", "variants", patient_key)
    versions = upstream_run_ids(context, PATIENT_FEATURE_INPUTS, patient_key)
    frame = cohort.build_patient_features(
        patient_key,
        clinical=lake.read_table_if_present("features", "clinical_features", patient_key),
        radiomics=lake.read_table_if_present("features", "radiomic_features", patient_key),
        actionable=lake.read_table_if_present("features", "annotated_variants", patient_key),
        pgx=lake.read_table_if_present("features", "pgx_phenotypes", patient_key),
        findings=lake.read_table_if_present("features", "note_findings", patient_key),
        has_genomics=variants_dir.is_dir() and any(variants_dir.glob("*.parquet")),
        source_versions=versions,
    )
    lake.write_table(cohort.patient_features_table(frame), "features", "patient_features", patient_key)
    row = frame.iloc[0]
    return MaterializeResult(
        metadata={
            "has_imaging": bool(row["has_imaging"]),
            "has_genomics": bool(row["has_genomics"]),
            "has_ehr": bool(row["has_ehr"]),
            "has_notes": bool(row["has_notes"]),
            "lesions": int(row["lesion_count"]),
            "actionable_alterations": len(row["actionable_alterations"]),
        }
    )


@asset(
    group_name="cohort",
    deps=[patient_features],
    description="The cohort table: every patient's feature partition read as one hive-partitioned dataset with PySpark "
    "(local[*] by default, any Spark master by configuration) plus derived cohort columns.",
)
def cohort_features(context: AssetExecutionContext, lake: LakeResource, spark: SparkResource) -> MaterializeResult:
    session = spark.session()
    table = cohort.cohort_table_spark(session, str(lake.zone("features") / "patient_features"))
    lake.write_table(table, "features", "cohort_features")
    return MaterializeResult(metadata={"patients": len(table), "columns": int(table.shape[1]), "spark_master": spark.master})


@asset(
    group_name="cohort",
    deps=[cohort_features],
    description="Cohort summary: patients per modality and missingness per column.",
)
def cohort_summary(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    summary = cohort.cohort_summary(lake.read_table("features", "cohort_features"))
    lake.write_table(pd.DataFrame([{"summary": json.dumps(summary, sort_keys=True)}]), "features", "cohort_summary")
    return MaterializeResult(metadata={"patients": summary["patients"], "with_modality": MetadataValue.json(summary["with_modality"])})


@asset(
    group_name="cohort",
    deps=[cohort_features],
    description="Patient strata: k-means and Ward hierarchical clustering on standardized features, with silhouette "
    "and cluster sizes; the k-means stratum feeds the recommendations.",
)
def patient_strata(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    strata, report = cohort.stratify(lake.read_table("features", "cohort_features"))
    lake.write_table(strata, "features", "patient_strata")
    return MaterializeResult(
        metadata={
            "n_strata": report["n_strata"],
            "silhouette_kmeans": report["silhouette_kmeans"],
            "silhouette_hierarchical": report["silhouette_hierarchical"],
            "sizes": MetadataValue.json(report["sizes"]),
        }
    )
