"""Retraining sensor: input drift or a high clinician override rate requests a retraining run, once per trigger.

It reads the alert flags the monitoring assets attach to their materializations (``drift_detected`` on
``model_monitoring``, ``override_rate_exceeded`` on ``clinician_feedback``), each computed with the threshold that
asset was configured with. The cursor holds the last materialization looked at per asset; the run key names the
triggering materializations, so a sensor that lost its cursor asks again with the same key and Dagster drops it.
"""

import json

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from jobs import retraining_job

# asset name -> the boolean metadata entry that says retraining is due
RETRAINING_TRIGGERS = {"model_monitoring": "drift_detected", "clinician_feedback": "override_rate_exceeded"}


def _latest(context: SensorEvaluationContext, asset_name: str):
    records = context.instance.fetch_materializations(AssetKey(asset_name), limit=1).records
    return records[0] if records else None


def _flag(record, entry: str) -> bool:
    value = record.asset_materialization.metadata.get(entry) if record.asset_materialization else None
    return bool(value.value) if value is not None else False


@sensor(
    job=retraining_job,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description="Requests a retraining run when model_monitoring reports input drift or clinician_feedback an override "
    "rate above its threshold; one run per triggering materialization.",
)
def retraining_sensor(context: SensorEvaluationContext):
    seen = json.loads(context.cursor) if context.cursor else {}
    triggers = []
    for asset_name, entry in RETRAINING_TRIGGERS.items():
        record = _latest(context, asset_name)
        if record is None or record.storage_id <= seen.get(asset_name, 0):
            continue
        seen[asset_name] = record.storage_id
        if _flag(record, entry):
            triggers.append((asset_name, entry, record.storage_id))
    context.update_cursor(json.dumps(seen, sort_keys=True))
    if not triggers:
        return SkipReason("no new monitoring materialization reports drift or a high override rate")
    run_key = "retrain-" + "-".join(f"{asset_name}.{storage_id}" for asset_name, _, storage_id in triggers)
    return RunRequest(run_key=run_key, tags={"radplan/retraining_trigger": ",".join(entry for _, entry, _ in triggers)})
