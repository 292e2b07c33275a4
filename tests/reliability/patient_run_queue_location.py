"""The code location `test_patient_run_queue.py` starts `dagster-daemon` on.

One per-patient asset on the project's partitioning (the dynamic partitions named "patients") that writes two
lake tables through the real `LakeResource` and, in the daemon test, holds between them until a second run for
the same patient exists; a sensor that asks for that second run while the backfill's run is in progress.
"""

import os
import time
from pathlib import Path

import pandas as pd
from dagster import (
    AssetExecutionContext,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    RunRequest,
    RunsFilter,
    asset,
    define_asset_job,
    sensor,
)

from radplan_resources.lake import LakeResource

patients = DynamicPartitionsDefinition(name="patients")
# Set only for the daemon's runs: after the first write, wait (at most this long) until a second run for the patient
# exists, then hold until it executes or HOLD_S passed. Without a per-patient limit the daemon starts the second
# run within the hold, so the two runs overlap; with it the second stays queued until this one ends.
WAIT_FOR_SECOND_RUN_S = float(os.environ.get("RADPLAN_QUEUE_TEST_WAIT_S", "0"))
HOLD_S = float(os.environ.get("RADPLAN_QUEUE_TEST_HOLD_S", "0"))


def runs_of(instance, partition_key: str) -> list:
    return instance.get_runs(RunsFilter(job_name="patient_job", tags={"dagster/partition": partition_key}))


@asset(partitions_def=patients)
def patient_tables(context: AssetExecutionContext, lake: LakeResource) -> None:
    key = context.partition_key
    frame = pd.read_csv(Path(os.environ["RADPLAN_QUEUE_TEST_INPUT"]))
    lake.write_table(frame, "features", "queue_first", key)
    deadline = time.monotonic() + WAIT_FOR_SECOND_RUN_S
    while time.monotonic() < deadline and len(runs_of(context.instance, key)) < 2:
        time.sleep(0.2)
    hold_until = time.monotonic() + HOLD_S
    while time.monotonic() < hold_until:
        others = [run for run in runs_of(context.instance, key) if run.run_id != context.run_id]
        if any(run.status in (DagsterRunStatus.STARTED, DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE) for run in others):
            break
        time.sleep(0.2)
    lake.write_table(frame.assign(second=True), "features", "queue_second", key)


patient_job = define_asset_job("patient_job", selection=[patient_tables], partitions_def=patients)


@sensor(job=patient_job, minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def same_patient_sensor(context):
    """One request per backfill run in progress, for that run's patient (the collision the run queue must stop)."""
    running = context.instance.get_runs(RunsFilter(job_name="patient_job", statuses=[DagsterRunStatus.STARTED]))
    for run in running:
        if run.tags.get("dagster/backfill"):
            yield RunRequest(run_key=f"after-{run.run_id}", partition_key=run.tags["dagster/partition"])


defs = Definitions(
    assets=[patient_tables],
    jobs=[patient_job],
    sensors=[same_patient_sensor],
    resources={"lake": LakeResource(root=os.environ.get("RADPLAN_QUEUE_TEST_LAKE", "lake"))},
)
