"""Incremental rematerialization: changed patients only, then the cohort level in batches.

- ``patient_refresh_sensor`` reads each new ``landing_inventory`` materialization's list of changed
  patients and requests ``patient_refresh_job`` for each of those partitions (run key = patient key +
  keyed input fingerprint, so a repeated event or a re-sent identical study never reruns). Other
  patients' partitions are not touched.
- ``patient_export_sensor`` rewrites the FHIR bundle and HTML report of the patients whose
  recommendations were just rematerialized (and the recommendations table), without the cohort run.
- ``cohort_batch_sensor`` rebuilds the cohort table, strata, response model and full exports once
  patient updates have settled: one run per batch of arrivals, never one per study.
"""

import time

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from jobs import cohort_refresh_job, export_job, ingest_job, patient_refresh_job
from radplan_assets.ingest import CHANGED_PATIENTS
from radplan.settings import Settings
from sensors.landing import SENSOR_INTERVAL_S
from sensors.cursors import InventoryChange, SensorCursor, cohort_batch_due, patient_refreshes

INVENTORY_KEY = AssetKey("landing_inventory")
# The last asset of a patient refresh: its materialization means the patient is up to date.
REFRESH_DONE_KEY = AssetKey("patient_recommendations")
PAGE = 500
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def cohort_batch_quiet_s() -> float:
    """Seconds without patient updates before the cohort level is rebuilt (RADPLAN_COHORT_BATCH_QUIET_S, default 10 min)."""
    return Settings.from_env().cohort_batch_quiet_s


def _latest_storage_id(instance, key: AssetKey, partition: str | None = None) -> int | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0].storage_id if records else None


def _materializations_after(instance, key: AssetKey, after: int) -> list:
    """Every materialization of ``key`` with a storage id above ``after``, oldest first."""
    records, cursor = [], None
    while True:
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=PAGE, cursor=cursor, ascending=True
        )
        records += result.records
        if not result.has_more:
            return records
        cursor = result.cursor


@sensor(
    job=patient_refresh_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="Per changed patient listed by a new landing_inventory materialization: one patient_refresh_job run for "
    "that patient's partition (run key = patient key + input fingerprint). Unchanged patients are never rerun.",
)
def patient_refresh_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    cursor = SensorCursor.parse(context.cursor)
    after = int(cursor.get("inventory_storage_id", -1))
    records = _materializations_after(instance, INVENTORY_KEY, after)
    if not records:
        return SensorResult(skip_reason=SkipReason("no new intake"))
    changes = []
    for record in records:
        entry = record.asset_materialization.metadata.get(CHANGED_PATIENTS)
        changes.append(InventoryChange(record.storage_id, dict(entry.value) if entry is not None else {}))
    candidates = {key for change in changes for key in change.changed}
    latest = {key: _latest_storage_id(instance, REFRESH_DONE_KEY, key) or -1 for key in candidates}
    refreshes = patient_refreshes(changes, latest)
    next_cursor = cursor.with_value("inventory_storage_id", records[-1].storage_id).dump()
    if not refreshes:
        return SensorResult(skip_reason=SkipReason(f"{len(records)} intakes, no patient with changed inputs"), cursor=next_cursor)
    context.log.info(f"{len(records)} intakes: {len(refreshes)} patients changed, requesting their partitions")
    requests = [
        RunRequest(run_key=refresh.run_key, partition_key=refresh.patient_key, tags={"radplan/trigger": "inventory-change"})
        for refresh in refreshes
    ]
    return SensorResult(run_requests=requests, cursor=next_cursor)


@sensor(
    job=export_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="Rewrites the FHIR bundle and HTML report of every patient whose recommendations were rematerialized since "
    "the last tick (plus the recommendations table), without waiting for the cohort batch.",
)
def patient_export_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    cursor = SensorCursor.parse(context.cursor)
    if cursor.get("recommendations_storage_id") is None:
        # First tick: whatever was materialized before the latest full export is already exported.
        start = _latest_storage_id(instance, AssetKey("recommendation_export")) or -1
    else:
        start = int(cursor.get("recommendations_storage_id"))
    records = _materializations_after(instance, REFRESH_DONE_KEY, start)
    if not records:
        return SensorResult(skip_reason=SkipReason("no new patient recommendations"), cursor=cursor.with_value("recommendations_storage_id", start).dump())
    keys = sorted({record.partition_key for record in records if record.partition_key})
    last = records[-1].storage_id
    context.log.info(f"exporting {len(keys)} patients with new recommendations")
    request = RunRequest(
        run_key=f"patient-export-{last}",
        run_config={"ops": {"recommendation_export": {"config": {"patient_keys": keys}}}},
        tags={"radplan/trigger": "patient-recommendations", "radplan/patients": str(len(keys))},
    )
    return SensorResult(run_requests=[request], cursor=cursor.with_value("recommendations_storage_id", last).dump())


@sensor(
    job=cohort_refresh_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Rebuilds the cohort table, strata, response model and full exports once patient feature rows are newer than "
    "the cohort table, no patient run is in flight and no patient update came for RADPLAN_COHORT_BATCH_QUIET_S.",
)
def cohort_batch_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    newest = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("patient_features")), limit=1).records
    in_flight = sum(
        len(instance.get_run_ids(RunsFilter(job_name=job.name, statuses=IN_FLIGHT)))
        for job in (ingest_job, patient_refresh_job, cohort_refresh_job)
    )
    due, reason = cohort_batch_due(
        newest_patient_storage_id=newest[0].storage_id if newest else None,
        newest_patient_timestamp=newest[0].timestamp if newest else None,
        cohort_storage_id=_latest_storage_id(instance, AssetKey("cohort_features")),
        runs_in_flight=in_flight,
        now=time.time(),
        quiet_s=cohort_batch_quiet_s(),
    )
    if not due:
        return SensorResult(skip_reason=SkipReason(reason))
    return SensorResult(
        run_requests=[RunRequest(run_key=f"cohort-after-{newest[0].storage_id}", tags={"radplan/trigger": "patient-batch"})]
    )
