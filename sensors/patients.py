"""Incremental rematerialization: changed patients only, then the cohort level in batches.

- ``patient_refresh_sensor`` reads each new ``landing_inventory`` materialization's list of changed
  patients and requests ``patient_refresh_job`` for each of those partitions (run key = patient key +
  keyed input fingerprint, so a repeated event or a re-sent identical study never reruns). Other
  patients' partitions are not touched; within the patient, only the branches of the input sources that
  changed since the patient's latest refresh rerun (``jobs.refresh_selection``): a follow-up study reruns
  imaging, radiomics, the feature row and the recommendations, not the notes or the variants.
  A refresh ends with the patient's FHIR bundle and HTML report (``patient_report``), so what a clinician reads
  is current when the refresh run ends.
- ``patient_export_sensor`` rewrites the cohort's recommendations table once patients' recommendations were
  rematerialized, without the cohort run.
- ``cohort_batch_sensor`` rebuilds the cohort table, strata, response model and recommendations table once
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

from jobs import cohort_refresh_job, export_job, ingest_job, patient_refresh_job, refresh_selection
from radplan_assets.ingest import CHANGED_PATIENTS, CHANGED_SOURCES
from radplan.settings import Settings
from sensors.landing import SENSOR_INTERVAL_S
from sensors.cursors import InventoryChange, SensorCursor, cohort_batch_due, patient_refreshes

INVENTORY_KEY = AssetKey("landing_inventory")
# The last asset of a patient refresh: its materialization means the patient is up to date.
REFRESH_DONE_KEY = AssetKey("patient_report")
PAGE = 500
# Intakes read back (beyond this tick's) to collect which sources a patient's pending changes touched; beyond, all rerun.
SOURCE_LOOKBACK = 200
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
    "that patient's partition (run key = patient key + input fingerprint), limited to the assets of the input sources "
    "that changed (imaging, genomics, EHR) and what joins them. Unchanged patients are never rerun.",
)
def patient_refresh_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    cursor = SensorCursor.parse(context.cursor)
    after = int(cursor.get("inventory_storage_id", -1))
    records = _materializations_after(instance, INVENTORY_KEY, after)
    if not records:
        return SensorResult(skip_reason=SkipReason("no new intake"))
    changes = [_inventory_change(record) for record in records]
    candidates = {key for change in changes for key in change.changed}
    latest = {key: _latest_storage_id(instance, REFRESH_DONE_KEY, key) or -1 for key in candidates}
    refreshed_earlier = [storage_id for storage_id in latest.values() if 0 <= storage_id < after]
    if refreshed_earlier:
        # Intakes between a patient's latest refresh and this tick's may have changed other sources (their refresh
        # still queued, or failed): read them back too, so the next refresh covers their branches as well.
        changes += _earlier_changes(instance, min(refreshed_earlier), after, latest)
    refreshes = patient_refreshes(changes, latest, patients=candidates)
    next_cursor = cursor.with_value("inventory_storage_id", records[-1].storage_id).dump()
    if not refreshes:
        return SensorResult(skip_reason=SkipReason(f"{len(records)} intakes, no patient with changed inputs"), cursor=next_cursor)
    partial = sum(1 for refresh in refreshes if not refresh.every_source)
    context.log.info(f"{len(records)} intakes: {len(refreshes)} patients changed ({partial} in some input sources only), "
                     "requesting their partitions")
    selections: dict[tuple[str, ...], list[AssetKey]] = {}
    requests = []
    for refresh in refreshes:
        selection = None
        if not refresh.every_source:
            if refresh.sources not in selections:
                selections[refresh.sources] = sorted(refresh_selection(refresh.sources).resolve(context.repository_def.asset_graph))
            selection = selections[refresh.sources]
        requests.append(RunRequest(
            run_key=refresh.run_key,
            partition_key=refresh.patient_key,
            asset_selection=selection,
            tags={"radplan/trigger": "inventory-change", "radplan/sources": ",".join(refresh.sources)},
        ))
    return SensorResult(run_requests=requests, cursor=next_cursor)


def _inventory_change(record) -> InventoryChange:
    metadata = record.asset_materialization.metadata
    changed, sources = metadata.get(CHANGED_PATIENTS), metadata.get(CHANGED_SOURCES)
    return InventoryChange(record.storage_id, dict(changed.value) if changed else {}, dict(sources.value) if sources else {})


def _earlier_changes(instance, since: int, until: int, latest: dict[str, int]) -> list[InventoryChange]:
    """The intakes in (since, until], newest SOURCE_LOOKBACK of them. A patient whose latest refresh is older than what
    was read gets a change that names no source (every source): beyond the lookback nothing says which changed."""
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=INVENTORY_KEY, after_storage_id=since, before_storage_id=until + 1),
        limit=SOURCE_LOOKBACK, ascending=False,
    )
    changes = [_inventory_change(record) for record in result.records]
    if result.has_more and changes:
        complete_after = min(change.storage_id for change in changes)
        unknown = {key: "" for key, storage_id in latest.items() if 0 <= storage_id < complete_after}
        # Its fingerprint is replaced by the newer change that made the patient a candidate (changes apply in order).
        changes.append(InventoryChange(complete_after, unknown))
    return changes


@sensor(
    job=export_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="Rewrites the cohort's recommendations table (Parquet, CSV) once patients' recommendations were "
    "rematerialized since the last tick, without waiting for the cohort batch (each refresh already wrote its patient's "
    "FHIR bundle and report).",
)
def patient_export_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    cursor = SensorCursor.parse(context.cursor)
    if cursor.get("reports_storage_id") is None:
        # First tick: whatever was materialized before the latest full export is already exported.
        start = _latest_storage_id(instance, AssetKey("recommendation_export")) or -1
    else:
        start = int(cursor.get("reports_storage_id"))
    records = _materializations_after(instance, REFRESH_DONE_KEY, start)
    if not records:
        return SensorResult(skip_reason=SkipReason("no new patient reports"), cursor=cursor.with_value("reports_storage_id", start).dump())
    keys = sorted({record.partition_key for record in records if record.partition_key})
    last = records[-1].storage_id
    context.log.info(f"{len(keys)} patients with new recommendations: rewriting the recommendations table")
    request = RunRequest(
        run_key=f"patient-export-{last}",
        tags={"radplan/trigger": "patient-recommendations", "radplan/patients": str(len(keys))},
    )
    return SensorResult(run_requests=[request], cursor=cursor.with_value("reports_storage_id", last).dump())


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
