"""Asset jobs (the stages `make demo` runs in order) and schedules."""

from dagster import AssetCheckKey, AssetKey, AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from radplan_assets.partitions import patient_partitions

# Intake runs are serialized by this tag (instance run coordinator: tag_concurrency_limits, limit 1).
INTAKE_TAGS = {"radplan/intake": "inventory"}
# Export runs too: each rewrites the cohort's export tables, and with 1 s sensor ticks a burst requested a new
# export while the previous one was still writing (21 exports for 22 refreshes in bench_operations' burst).
EXPORT_TAGS = {"radplan/export": "cohort"}
# The run queue starts higher dagster/priority first. An intake (seconds; it gates every later hop) and an export
# (seconds; it ends a study's chain) go before queued patient refreshes (minutes each): in a burst of 50 studies the
# exports had waited behind every refresh (median 432 s queued, benchmarks/results/operations.json daemon.burst_runs).
CHAIN_END_PRIORITY = {"dagster/priority": "1"}

ingest_job = define_asset_job(
    "ingest_job",
    # Not the lake_integrity check hung on landing_inventory: that one hashes the whole lake, daily (lake_verify_job).
    selection=AssetSelection.assets("landing_inventory").without_checks(),
    tags={**INTAKE_TAGS, **CHAIN_END_PRIORITY},
    description="Scan the PACS and the landing zone; register new patient partitions; list the patients whose inputs changed.",
)

patient_preparation_job = define_asset_job(
    "patient_preparation_job",
    selection=AssetSelection.groups("imaging", "genomics", "ehr") - AssetSelection.assets("radiomic_features"),
    partitions_def=patient_partitions,
    description="Per patient: ingest, de-identify and featurize imaging, genomics and EHR (up to reference masks).",
)

segmentation_training_job = define_asset_job(
    "segmentation_training_job",
    selection=AssetSelection.assets("segmentation_model"),
    description="Train the lesion segmentation model on studies with reference masks; champion/challenger in MLflow.",
)

patient_features_job = define_asset_job(
    "patient_features_job",
    selection=AssetSelection.assets("predicted_lesion_masks", "radiomic_features", "patient_features"),
    partitions_def=patient_partitions,
    description="Per patient: model masks where no reference mask exists, radiomics, the joined feature row.",
)

cohort_job = define_asset_job(
    "cohort_job",
    selection=AssetSelection.assets("cohort_features", "cohort_summary", "patient_strata", "response_model"),
    description="Cohort table on Spark, strata, response model (champion/challenger in MLflow).",
)

recommendation_job = define_asset_job(
    "recommendation_job",
    selection=AssetSelection.assets("patient_recommendations", "patient_report"),
    partitions_def=patient_partitions,
    description="Per patient: rules + model scores + PGx + trials -> ranked recommendations with rationale, and the "
    "patient's FHIR R4 bundle and HTML report.",
)

export_job = define_asset_job(
    "export_job",
    selection=AssetSelection.assets("recommendation_export"),
    tags={**EXPORT_TAGS, **CHAIN_END_PRIORITY},
    description="Write the cohort's recommendations table (Parquet, CSV, data dictionary) for analysts and downstream systems.",
)

# Incremental path (sensors): one patient's partitions, then the cohort level in batches.
PATIENT_ASSETS = (
    patient_preparation_job.selection | patient_features_job.selection | recommendation_job.selection
)

# The per-patient assets that read each input source (radplan.inventory.INPUT_SOURCES) from the inventory. A refresh
# for some sources reruns their roots and everything downstream of them in the patient's partition
# (tests/test_definitions.py checks every asset reading the inventory is a root here).
SOURCE_ROOT_ASSETS = {
    "imaging": ("pacs_studies",),
    "genomics": ("raw_genomics",),
    "ehr": ("ehr_extracts", "deid_notes"),
}


def refresh_selection(sources) -> AssetSelection:
    """The per-patient assets a change to ``sources`` makes stale: the sources' roots and their downstream patient assets."""
    roots = [root for source in sources for root in SOURCE_ROOT_ASSETS[source]]
    return AssetSelection.assets(*roots).downstream() & PATIENT_ASSETS


patient_refresh_job = define_asset_job(
    "patient_refresh_job",
    selection=PATIENT_ASSETS,
    partitions_def=patient_partitions,
    description="One patient's partition of the per-patient assets, from intake to recommendations and the patient's report: the patient refresh "
    "sensor requests the branches of the input sources that changed (a new study: imaging, its radiomics and what joins "
    "them), or all of them for a new patient.",
)

cohort_refresh_job = define_asset_job(
    "cohort_refresh_job",
    selection=cohort_job.selection | export_job.selection,
    description="Cohort table, strata, response model and the recommendations table, once per batch of patient updates.",
)

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.assets("segmentation_model", "response_model"),
    description="Retrain both models; a new version becomes champion only if it beats the current one.",
)

monitoring_job = define_asset_job(
    "monitoring_job",
    selection=AssetSelection.assets("model_monitoring", "clinician_feedback"),
    description="Input drift and missingness of the scored cohort; clinicians' accept/override decisions and override rates.",
)

lake_verify_job = define_asset_job(
    "lake_verify_job",
    selection=AssetSelection.checks(AssetCheckKey(AssetKey("landing_inventory"), "lake_integrity")),
    description="Re-read the whole lake against the content manifests recorded at write time (radplan lake verify).",
)

pacs_segmentation_job = define_asset_job(
    "pacs_segmentation_job",
    selection=AssetSelection.assets("pacs_lesion_segmentations"),
    description="The champion lesion model's SEG and RTSTRUCT for newly stable PACS studies, stored back into Orthanc "
    "(requested by pacs_segmentation_sensor).",
)

# The order `make demo` runs them in: partitioned stages run once per patient.
DEMO_STAGES = (
    ingest_job,
    patient_preparation_job,
    segmentation_training_job,
    patient_features_job,
    cohort_job,
    recommendation_job,
    export_job,
    monitoring_job,
)
federated_training_job = define_asset_job(
    "federated_training_job",
    selection=AssetSelection.assets("federated_response_model"),
    description="One federated round set: FLARE server + one process per hospital site; per-site/global metrics in MLflow; "
    "the global model registered only when every round completed.",
)

federated_segmentation_job = define_asset_job(
    "federated_segmentation_job",
    selection=AssetSelection.assets("federated_segmentation_model"),
    description="One federated round set of the lesion segmentation network: FLARE server + one process per hospital site "
    "training on its own CT images; per-site Dice in MLflow; the global network registered only when every round completed.",
)

ALL_JOBS = [*DEMO_STAGES, patient_refresh_job, cohort_refresh_job, retraining_job, lake_verify_job, federated_training_job,
            federated_segmentation_job, pacs_segmentation_job]


def _utc_schedule(name: str, job, cron_schedule: str, description: str) -> ScheduleDefinition:
    """A UTC schedule, off until an operator turns it on (the demo runs its stages itself)."""
    return ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.STOPPED,
        description=description,
    )


ALL_SCHEDULES = [
    _utc_schedule("nightly_full_intake", ingest_job, "30 1 * * *",
                  "Nightly: an intake that lists every study in the PACS (the change feed's intakes re-read only changed "
                  "studies, and Orthanc before 1.12.1 records no deletion of an instance from a stable study)."),
    _utc_schedule("nightly_cohort_refresh", cohort_job, "0 2 * * *",
                  "Nightly: rebuild the cohort table, strata and response scores from the patients' latest features."),
    _utc_schedule("nightly_export", export_job, "0 4 * * *", "Nightly: rewrite the recommendations table after the cohort refresh."),
    _utc_schedule("weekly_retraining", retraining_job, "0 3 * * 0",
                  "Weekly: retrain the segmentation and response models (champion/challenger)."),
    _utc_schedule("daily_monitoring", monitoring_job, "0 5 * * *",
                  "Daily after the exports: drift, data quality and clinician feedback (the retraining sensor reads them)."),
    _utc_schedule("daily_lake_verify", lake_verify_job, "0 6 * * *",
                  "Daily: verify every lake dataset against its write-time manifest (missing, truncated or altered files)."),
]  # fmt: skip
