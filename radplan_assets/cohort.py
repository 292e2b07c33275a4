"""Cohort: one feature row per patient, the cohort table on Spark, cohort summary and strata."""

import json

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AssetRecordsFilter, MaterializeResult, MetadataValue, asset

from radplan import cohort
from radplan_assets.partitions import patient_partitions
from radplan_resources import LakeResource, SparkResource
from radplan_resources.io_manager import optional_input


PATIENT_FEATURE_INPUTS = ("radiomic_features", "annotated_variants", "pgx_phenotypes", "clinical_features", "note_findings", "variants")


def upstream_run_ids(context: AssetExecutionContext, asset_keys, partition_key: str | None) -> dict[str, str | None]:
    """Lineage: the run that last materialized each input (for this patient's partition)."""
    versions = {}
    for key in asset_keys:
        key = key if isinstance(key, AssetKey) else AssetKey(key)
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=[partition_key] if partition_key else None), limit=1
        ).records
        versions[key.to_user_string()] = records[0].run_id if records else None
    return versions


def input_keys(context: AssetExecutionContext) -> list[AssetKey]:
    """The asset keys this asset reads (its declared inputs), for lineage records."""
    return sorted(context.assets_def.keys_by_input_name.values(), key=lambda key: key.to_user_string())


@asset(
    group_name="cohort",
    partitions_def=patient_partitions,
    # A patient without imaging, genomics or notes has no such partition: the row then says so (has_* = false).
    ins={name: optional_input() for name in PATIENT_FEATURE_INPUTS},
    description="One row per patient joining radiomics (latest study, aggregated over lesions), actionable variants, "
    "PGx phenotypes, clinical features and note findings; a missing modality gives nulls and has_* = false.",
)
def patient_features(
    context: AssetExecutionContext,
    radiomic_features: pd.DataFrame,
    annotated_variants: pd.DataFrame,
    pgx_phenotypes: pd.DataFrame,
    clinical_features: pd.DataFrame,
    note_findings: pd.DataFrame,
    variants: pd.DataFrame,
) -> MaterializeResult:
    patient_key = context.partition_key
    versions = upstream_run_ids(context, input_keys(context), patient_key)
    frame = cohort.build_patient_features(
        patient_key,
        clinical=clinical_features,
        radiomics=radiomic_features,
        actionable=annotated_variants,
        pgx=pgx_phenotypes,
        findings=note_findings,
        # A delivered VCF with no records still leaves its columns; no VCF leaves only the partition column.
        has_genomics=len(variants) > 0 or len(variants.columns) > 1,
        source_versions=versions,
    )
    row = frame.iloc[0]
    return MaterializeResult(
        value=cohort.patient_features_table(frame),
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
    description="The cohort table: every patient's feature row, from the compacted snapshot of patient_features (one "
    "Parquet file; only partitions changed since the last build are read), read with PySpark (local[*] by default, "
    "any Spark master by configuration) plus derived cohort columns.",
)
def cohort_features(context: AssetExecutionContext, lake: LakeResource, spark: SparkResource) -> MaterializeResult:
    session = spark.session()
    # Spark reads one compacted file instead of one folder per patient: at 100,000 patients opening every small
    # partition file dominates (benchmarks/bench_cohort_read.py); the snapshot re-reads only changed partitions.
    table = cohort.cohort_table_spark(session, str(lake.compacted_table("features", "patient_features")))
    return MaterializeResult(value=table, metadata={"patients": len(table), "columns": int(table.shape[1]), "spark_master": spark.master})


@asset(
    group_name="cohort",
    description="Cohort summary: patients per modality and missingness per column.",
)
def cohort_summary(context: AssetExecutionContext, cohort_features: pd.DataFrame) -> MaterializeResult:
    summary = cohort.cohort_summary(cohort_features)
    return MaterializeResult(value=pd.DataFrame([{"summary": json.dumps(summary, sort_keys=True)}]), metadata={"patients": summary["patients"], "with_modality": MetadataValue.json(summary["with_modality"])})


@asset(
    group_name="cohort",
    description="Patient strata: k-means and Ward hierarchical clustering on standardized features, with silhouette "
    "and cluster sizes; the k-means stratum feeds the recommendations.",
)
def patient_strata(context: AssetExecutionContext, cohort_features: pd.DataFrame) -> MaterializeResult:
    strata, report = cohort.stratify(cohort_features)
    return MaterializeResult(
        value=strata,
        metadata={
            "n_strata": report["n_strata"],
            "silhouette_kmeans": report["silhouette_kmeans"],
            "silhouette_hierarchical": report["silhouette_hierarchical"],
            "sizes": MetadataValue.json(report["sizes"]),
        }
    )
