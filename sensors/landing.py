"""Landing-zone sensor: a changed set of landing files requests an intake run (idempotent by run key)."""

import hashlib
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from jobs import ingest_job
from radplan.settings import landing_dir


def landing_fingerprint(folder: Path) -> tuple[str, int]:
    """Hash of (relative path, size, mtime) of every landing file: changes when anything arrives or changes."""
    digest = hashlib.sha256()
    count = 0
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
            count += 1
    return digest.hexdigest()[:32], count


@sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Requests an intake run when files in the landing zone are added or changed.",
)
def landing_sensor(context: SensorEvaluationContext):
    fingerprint, count = landing_fingerprint(landing_dir())
    if fingerprint == context.cursor:
        return SkipReason(f"no change in {count} landing files")
    context.update_cursor(fingerprint)
    # The run key is the fingerprint: a restarted sensor never requests the same intake twice.
    return RunRequest(run_key=f"landing-{fingerprint}")
