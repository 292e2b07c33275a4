"""A safety net under Dagster's run retries: a failed run whose retry never came is run again.

The instance retries a failed run (``run_retries`` in dagster.yaml) from the daemon's event-log consumer. That retry
is tried once: if it raises (Postgres dying while the retry is written, seen in
tests/production/test_daemon_operations.py), the daemon tags the run ``dagster/will_retry=false`` and never looks at
it again, so the study or patient it was processing is silently left behind. ``missed_retry_sensor`` finds such
runs of the sensor chain's jobs and requests the same work again (job, partition, asset selection, run config) as a
new run tagged ``radplan/retry_of``; a run that still waits for the daemon's retry after ``RETRY_OVERDUE_S`` is
treated the same way. The policy's limits hold: a step failure is retried only where the instance retries step
failures or where the step raised a database error (an outage under the run: ``DATABASE_ERRORS``), and each failed
run's lineage gets at most ``max_retries`` of these runs.

A retry the daemon created but could not submit (the database went away between writing the run and queueing it)
stays NOT_STARTED; Dagster's run monitoring fails it only after its start timeout (10 min here), and the UI shows
it waiting all that time. Once such a run is ``ORPHAN_AFTER_S`` old and its parent says the daemon's retry failed,
this sensor cancels it with the reason, and the work is run again as above.
"""

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from dagster import DagsterEventType, DagsterRunStatus, DefaultSensorStatus, RunRequest, RunsFilter, SensorEvaluationContext, SensorResult, SkipReason, sensor

from jobs import cohort_refresh_job, export_job, ingest_job, patient_refresh_job

RETRIED_JOBS = (ingest_job, patient_refresh_job, export_job, cohort_refresh_job)
RETRY_OF_TAG = "radplan/retry_of"
# The run key of the sensor request whose work is redone (the rerun has its own run key): one input state, one key.
RETRIED_RUN_KEY_TAG = "radplan/retried_run_key"
SAFETY_RETRIES_TAG = "radplan/safety_retries"
# Dagster's own tags (dagster._core.storage.tags): what the daemon decided and did about a failed run.
WILL_RETRY_TAG = "dagster/will_retry"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"
FAILURE_REASON_TAG = "dagster/failure_reason"
MAX_RETRIES_TAG = "dagster/max_retries"
RETRY_NUMBER_TAG = "dagster/retry_number"
PARTITION_TAG = "dagster/partition"
# A step that raised one of these lost its database (the instance's Postgres going away under a run writing events,
# seen in tests/production/test_daemon_operations.py): an outage, not the data, so it is retried even where the policy
# leaves step failures to the operator (psycopg2/sqlalchemy/sqlite3 OperationalError and InterfaceError).
DATABASE_ERRORS = frozenset({"OperationalError", "InterfaceError", "DagsterPostgresException"})
# The daemon retries within seconds of the failure; one still pending after this is taken as lost.
RETRY_OVERDUE_S = 600
# A run submits within seconds of its creation: a daemon retry still NOT_STARTED after this was never submitted.
ORPHAN_AFTER_S = 60
PARENT_RUN_TAG = "dagster/parent_run_id"
# Failed runs looked at: those updated in the last day (older ones are the operator's, in the UI).
LOOKBACK_S = 24 * 3600


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    retry_on_step_failure: bool


def database_error(errors) -> str | None:
    """The class name of the first database error (``DATABASE_ERRORS``) in these errors or their causes and contexts;
    None when there is none. ``errors``: Dagster ``SerializableErrorInfo`` objects (or anything with ``cls_name``,
    ``cause`` and ``context``)."""
    pending = list(errors)
    while pending:
        error = pending.pop(0)
        if error is None:
            continue
        if error.cls_name in DATABASE_ERRORS:
            return error.cls_name
        pending.extend((error.cause, error.context))
    return None


def missed_retry_reason(tags: dict, ended_at: float | None, now: float, policy: RetryPolicy,
                        step_database_error: Callable[[], str | None] = lambda: None) -> str | None:
    """Why this failed run needs the safety net's retry, or None when it does not (plain values: unit-tested).

    ``step_database_error``: gives the database error class a failed step raised (:func:`database_error`), if any;
    called only for a step failure the policy would not retry, since it reads the run's events.
    """
    if tags.get(AUTO_RETRY_RUN_ID_TAG):
        return None  # the daemon retried it
    max_retries = int(tags.get(MAX_RETRIES_TAG, policy.max_retries))
    if int(tags.get(RETRY_NUMBER_TAG, 0)) >= max_retries or int(tags.get(SAFETY_RETRIES_TAG, 0)) >= max_retries:
        return None  # retries spent
    if tags.get(FAILURE_REASON_TAG) == "STEP_FAILURE" and not policy.retry_on_step_failure:
        error = step_database_error()
        if error is None:
            return None  # a step raised: the policy leaves it to the operator
        # Dagster files a step whose event write hit a dead database as an asset failure and never retries it.
        return f"a step failed on a database error ({error}), not on its data"
    will_retry = tags.get(WILL_RETRY_TAG)
    if will_retry == "false":
        # The policy allows a retry (checked above) yet the daemon said no: its retry attempt raised.
        return "the daemon's retry failed"
    if ended_at is not None and now - ended_at > RETRY_OVERDUE_S:
        return f"no retry {RETRY_OVERDUE_S} s after the failure"
    return None


def _step_database_error(instance, run_id: str) -> str | None:
    """:func:`database_error` of the errors the run's failed steps raised (read from its event log)."""
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    return database_error(entry.dagster_event.step_failure_data.error for entry in failures if entry.dagster_event)


def _cancel_orphaned_retries(context: SensorEvaluationContext, run, now: float) -> None:
    """Cancel the daemon's retries of ``run`` that were created and never submitted (module docstring)."""
    instance = context.instance
    orphans = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.NOT_STARTED], tags={PARENT_RUN_TAG: run.run_id}))
    for record in orphans:
        if now - record.create_timestamp.timestamp() < ORPHAN_AFTER_S:
            continue
        orphan = record.dagster_run
        instance.report_run_canceled(orphan, f"Never started: the daemon created this retry of run {run.run_id} but could not submit it "
                                             "(dagster/will_retry=false on that run); missed_retry_sensor runs the same work again instead.")
        context.log.warning(f"canceled run {orphan.run_id}: a retry of {run.run_id} created but never submitted")


def _same_work(run, other) -> bool:
    return (other.job_name == run.job_name and other.tags.get(PARTITION_TAG) == run.tags.get(PARTITION_TAG)
            and other.asset_selection == run.asset_selection and dict(other.run_config or {}) == dict(run.run_config or {}))  # fmt: skip


def _retry_request(run, reason: str) -> RunRequest:
    tags = {key: value for key, value in run.tags.items() if not key.startswith(("dagster/", ".dagster"))}
    return RunRequest(
        run_key=f"retry-of-{run.run_id}",
        job_name=run.job_name,
        partition_key=run.tags.get(PARTITION_TAG),
        asset_selection=sorted(run.asset_selection) if run.asset_selection else None,
        run_config=dict(run.run_config or {}),
        tags={**tags, RETRY_OF_TAG: run.run_id, SAFETY_RETRIES_TAG: str(int(run.tags.get(SAFETY_RETRIES_TAG, 0)) + 1),
              "radplan/retry_reason": reason,
              **({RETRIED_RUN_KEY_TAG: original_key} if (original_key := tags.get(RETRIED_RUN_KEY_TAG) or run.tags.get("dagster/run_key")) else {})},  # fmt: skip
    )


@sensor(
    jobs=list(RETRIED_JOBS),
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Safety net under the instance's run retries: a failed intake, patient refresh or export whose automatic "
    "retry failed or never came is run again (same job, partition, assets and config; tagged radplan/retry_of), within "
    "the retry policy's limits.",
)
def missed_retry_sensor(context: SensorEvaluationContext) -> SensorResult:
    instance = context.instance
    now = time.time()
    policy = RetryPolicy(instance.run_retries_max_retries, instance.run_retries_retry_on_asset_or_op_failure)
    if policy.max_retries <= 0:
        return SensorResult(skip_reason=SkipReason("run retries are off in this instance (run_retries.max_retries = 0)"))
    since = dt.datetime.fromtimestamp(now - LOOKBACK_S, tz=dt.timezone.utc)
    names = {job.name for job in RETRIED_JOBS}
    failed = [record for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=since))
              if record.dagster_run.job_name in names]  # fmt: skip
    requests = []
    for record in failed:
        run = record.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "false" and not run.tags.get(AUTO_RETRY_RUN_ID_TAG):
            _cancel_orphaned_retries(context, run, now)
        reason = missed_retry_reason(dict(run.tags), record.end_time, now, policy, partial(_step_database_error, instance, run.run_id))
        if reason is None:
            continue
        partition = run.tags.get(PARTITION_TAG)
        later = instance.get_run_records(RunsFilter(job_name=run.job_name, statuses=[DagsterRunStatus.SUCCESS], created_after=record.create_timestamp,
                                                    tags={PARTITION_TAG: partition} if partition else None))  # fmt: skip
        if any(_same_work(run, other.dagster_run) for other in later):
            continue  # the same work succeeded since
        context.log.info(f"run {run.run_id} of {run.job_name} ({run.tags.get(PARTITION_TAG) or 'no partition'}): {reason}; running it again")
        requests.append(_retry_request(run, reason))
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"{len(failed)} failed runs in the last day, none with a missed retry"))
    return SensorResult(run_requests=requests)
