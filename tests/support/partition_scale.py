"""Partition scale on a real Dagster instance: seeded patients, the SQL a step issues, a run launched as the daemon does.

Shared by tests/production/test_partition_scale.py (query counts at a CI-sized count) and
benchmarks/bench_scale.py (wall times at 1,000 and 100,000 patients on Postgres).

What is seeded, and why only that: every patient gets a dynamic partition (added in batches of ``BATCH``, the
intake's way) and one materialization of each asset in ``SEEDED_ASSETS``: the per-patient assets the measured
operations read (the patient sensors read ``patient_features`` and the asset that ends a patient refresh,
``sensors.patients.REFRESH_DONE_KEY``; the asset page
shows ``patient_features``' status over every partition). The events are written in batches through the event
log storage's ``store_event_batch``, the same tables and indexes a run's events land in. Runs are not seeded per
patient: the measured operations look runs up by indexed tags and status, not by partition.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sensors.patients import REFRESH_DONE_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH = 1000
# Every seeded patient has been refreshed, as in a running hospital: the patient sensors look up the last asset of a
# patient's refresh per patient.
SEEDED_ASSETS = ("patient_features", REFRESH_DONE_KEY.path[-1])
INVENTORY_KEY = "landing_inventory"


def synthetic_patient_key(index: int) -> str:
    """A key in the pseudonym's shape (``p`` + 16 hex digits) that no HMAC of a real MRN is likely to give."""
    return f"p{index:016x}"


def seed_patients(instance, start: int, stop: int, *, assets=SEEDED_ASSETS) -> None:
    """Partitions ``start``..``stop-1`` and one materialization per asset in ``assets`` for each, in batches."""
    from dagster import AssetKey, AssetMaterialization, DagsterEvent, DagsterEventType
    from dagster._core.events import StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    for first in range(start, stop, BATCH):
        keys = [synthetic_patient_key(i) for i in range(first, min(first + BATCH, stop))]
        instance.add_dynamic_partitions(PATIENTS_PARTITION_NAME, keys)
        for asset in assets:
            events = [
                EventLogEntry(
                    user_message="", level=logging.INFO, job_name=RUNLESS_JOB_NAME, run_id=RUNLESS_RUN_ID, error_info=None,
                    timestamp=time.time(), step_key=None,
                    dagster_event=DagsterEvent(
                        DagsterEventType.ASSET_MATERIALIZATION.value, job_name=RUNLESS_JOB_NAME,
                        event_specific_data=StepMaterializationData(AssetMaterialization(AssetKey(asset), partition=key)),
                    ),
                )
                for key in keys
            ]
            instance.event_log_storage.store_event_batch(events)


def report_intake(instance, changed: dict[str, str]) -> None:
    """A landing_inventory materialization naming ``changed`` ({patient key: fingerprint}), as an intake run records it."""
    from dagster import AssetKey, AssetMaterialization, MetadataValue

    from radplan_assets.ingest import CHANGED_PATIENTS

    instance.report_runless_asset_event(AssetMaterialization(
        AssetKey(INVENTORY_KEY), metadata={CHANGED_PATIENTS: MetadataValue.json(changed), "changed_patient_count": len(changed)}))


@dataclass
class QueryCount:
    """Statements sent to the instance's storage databases and the rows they returned or touched, by table
    (the database's own catalog lookups counted apart)."""

    statements: int = 0
    rows: int = 0
    catalog_lookups: int = 0
    by_table: dict[str, int] = field(default_factory=dict)
    # (seconds, statement) of every statement: benchmarks name the slow ones (never asserted on: wall time).
    timed: list[tuple[float, str]] = field(default_factory=list)

    def slowest(self, count: int = 5) -> list[tuple[float, str]]:
        return sorted(self.timed, reverse=True)[:count]

    def tables_read(self) -> set[str]:
        return set(self.by_table)


def _tables(statement: str) -> list[str]:
    import re

    return re.findall(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+([a-z_]+)", statement, flags=re.IGNORECASE)


@contextmanager
def count_queries(instance) -> Iterator[QueryCount]:
    """Count every statement the instance's run, event-log and schedule storages execute inside the block."""
    from sqlalchemy import event

    engines = {id(engine): engine for engine in (
        getattr(storage, "_engine", None)
        for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
    ) if engine is not None}
    if not engines:
        raise RuntimeError(f"{type(instance.event_log_storage).__name__} exposes no SQLAlchemy engine to count queries on")
    counted = QueryCount()
    started: list[float] = []

    def before_execute(conn, cursor, statement, parameters, context, executemany):
        started.append(time.perf_counter())

    def after_execute(conn, cursor, statement, parameters, context, executemany):
        if "pg_catalog." in statement or "sqlite_master" in statement:
            if started:
                started.pop()
            counted.catalog_lookups += 1  # SQLAlchemy's schema checks: cached per connection, not data work
            return
        counted.timed.append((round(time.perf_counter() - started.pop(), 4) if started else 0.0, " ".join(statement.split())[:300]))
        counted.statements += 1
        rows = max(cursor.rowcount, 0) if cursor is not None else 0
        counted.rows += rows
        for table in _tables(statement):
            counted.by_table[table.lower()] = counted.by_table.get(table.lower(), 0) + rows

    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", before_execute)
        event.listen(engine, "after_cursor_execute", after_execute)
    try:
        yield counted
    finally:
        for engine in engines.values():
            event.remove(engine, "before_cursor_execute", before_execute)
            event.remove(engine, "after_cursor_execute", after_execute)


class DaemonRunLauncher:
    """Creates and submits a sensor's run the way dagster-daemon's sensor loop does, from an in-process code location.

    The daemon asks the code location for the job and its execution plan, creates the run with the job snapshot,
    the request's tags, the sensor and run-key tags, then submits it to the instance's run coordinator (radplan's
    QueuedRunCoordinator: the run is enqueued for the queue daemon).
    """

    def __init__(self, instance, location_name: str = "radplan"):
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        origin = InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(module_name="definitions", working_directory=str(REPO_ROOT)),
            location_name=location_name,
        )
        self.instance = instance
        self.code_location = origin.create_location(instance)
        (self.repository,) = self.code_location.get_repositories().values()

    def close(self) -> None:
        self.code_location.cleanup()

    def launch(self, sensor_name: str, request) -> str:
        from dagster import DagsterRunStatus
        from dagster._core.storage.dagster_run import DagsterRun
        from dagster._core.storage.tags import PARTITION_NAME_TAG, RUN_KEY_TAG

        remote_sensor = self.repository.get_sensor(sensor_name)
        job_name = request.job_name or remote_sensor.job_name
        remote_job = self.repository.get_full_job(job_name)
        plan = self.code_location.get_execution_plan(remote_job, request.run_config, step_keys_to_execute=None, known_state=None, instance=self.instance)
        tags = {**(remote_job.run_tags or {}), **request.tags, **DagsterRun.tags_for_sensor(remote_sensor)}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        if request.partition_key:
            tags[PARTITION_NAME_TAG] = request.partition_key
        run = self.instance.create_run(
            job_name=job_name, run_id=None, run_config=request.run_config, resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=None, status=DagsterRunStatus.NOT_STARTED, op_selection=None, root_run_id=None,
            parent_run_id=None, tags=tags, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=self.repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, workspace=None)
        return run.run_id
