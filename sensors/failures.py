"""Run failures, per partition, for the operator: lake/ops/run_failures.jsonl.

One line per failed step (or one per run when no step failed, e.g. a launch error): time, run id,
job, partition key (a pseudonymous patient key or none), step and the error's class name. Error
messages are left out on purpose: they can quote input values (PHI). The Dagster UI links the run
id to the full, access-controlled log.
"""

import datetime as dt
import json
from pathlib import Path

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from radplan.lake import atomic_write_text
from radplan_resources import LakeResource

FAILURES_FILE = "run_failures.jsonl"


def failure_rows(run_id: str, job_name: str, partition_key: str | None, steps: list[tuple[str | None, str | None]], at: str) -> list[dict]:
    """The records of one failed run; ``steps`` are (step key, error class name) pairs."""
    return [
        {"at": at, "run_id": run_id, "job": job_name, "partition_key": partition_key, "step": step, "error_class": error_class}
        for step, error_class in (steps or [(None, None)])
    ]


def record_failures(path: Path, rows: list[dict]) -> int:
    """Add rows not yet recorded (same run id and step); a re-evaluated tick writes nothing twice. Returns rows added."""
    existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    seen = {(row["run_id"], row["step"]) for row in map(json.loads, existing)}
    new = [row for row in rows if (row["run_id"], row["step"]) not in seen]
    if new:
        atomic_write_text(path, "".join(line + "\n" for line in existing) + "".join(json.dumps(row, sort_keys=True) + "\n" for row in new))
    return len(new)


@run_failure_sensor(
    name="run_failure_recorder",
    default_status=DefaultSensorStatus.STOPPED,
    description="Records every failed run per partition (run id, job, partition key, step, error class; no messages) "
    "in lake/ops/run_failures.jsonl for the operator.",
)
def run_failure_recorder(context: RunFailureSensorContext, lake: LakeResource) -> None:
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        steps.append((event.step_key, getattr(error, "cls_name", None)))
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows = failure_rows(run.run_id, run.job_name, run.tags.get("dagster/partition"), steps, at)
    path = lake.ops_path(FAILURES_FILE)
    added = record_failures(path, rows)
    if added:
        lake.ops_written(path)
    context.log.info(f"run {run.run_id} of {run.job_name}: {added} failures recorded")
