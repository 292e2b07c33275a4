"""The Dagster instance: sqlite under RADPLAN_HOME/dagster_home by default, PostgreSQL when configured; telemetry off;
a run queue that runs one run per patient partition at a time; crashed runs retried twice.

PostgreSQL is switched on by ``RADPLAN_DAGSTER_PG_URL`` (``postgresql+psycopg2://user:password@host:port/db``) or by
``RADPLAN_DAGSTER_PG_HOST`` with ``..._PORT``, ``..._DB``, ``..._USER`` and ``..._PASSWORD``. The dagster.yaml
written here names those variables (Dagster's ``env:`` indirection) and never holds a credential: the file can
be shared, the secret stays in the process environment (a secret store injects it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from radplan.lake import atomic_write_text
from radplan.settings import configured_dagster_home, dagster_home, process_environment, use_dagster_home

MARKER = "# Written by radplan"
PG_URL_ENV = "RADPLAN_DAGSTER_PG_URL"
# dagster-postgres's postgres_db keys → the environment variables that hold them.
PG_PART_ENVS = {
    "hostname": "RADPLAN_DAGSTER_PG_HOST",
    "port": "RADPLAN_DAGSTER_PG_PORT",
    "db_name": "RADPLAN_DAGSTER_PG_DB",
    "username": "RADPLAN_DAGSTER_PG_USER",
    "password": "RADPLAN_DAGSTER_PG_PASSWORD",
}
# The driver radplan installs (psycopg2-binary); SQLAlchemy 2.1's default for postgresql:// is psycopg 3.
PG_SCHEME = "postgresql+psycopg2"
# No usage telemetry, and no "Join the Dagster community" onboarding prompt (nux) in the UI.
TELEMETRY_OFF = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
# The run queue (dagster-daemon dequeues): at most one run per patient partition at a time, so a backfill and a
# sensor run of the same patient never interleave their writes (the second waits in the queue). Dagster tags every
# partitioned run, backfills included, with dagster/partition; every partitioned job here is per patient. Intake
# runs (tag radplan/intake, jobs.INTAKE_TAGS) and export runs (radplan/export, jobs.EXPORT_TAGS) run one at a time.
# Each run is a process that imports the code location (2-3 s: no torch or spaCy, tests/test_definitions.py), and a
# patient refresh then imports torch, MONAI, Presidio/spaCy and MLflow for its steps (~8 s of CPU, ~1 GB): Dagster's
# default of 10 runs at once only thrashes a small host. RADPLAN_MAX_CONCURRENT_RUNS overrides it.
MAX_CONCURRENT_RUNS_ENV = "RADPLAN_MAX_CONCURRENT_RUNS"
DEFAULT_MAX_CONCURRENT_RUNS = 4
RUN_QUEUE = (
    "run_coordinator:\n"
    "  module: dagster._core.run_coordinator\n"
    "  class: QueuedRunCoordinator\n"
    "  config:\n"
    "    max_concurrent_runs: {max_concurrent_runs}\n"
    "    tag_concurrency_limits:\n"
    "      - key: dagster/partition\n"
    "        value: {{applyLimitPerUniqueValue: true}}\n"
    "        limit: 1\n"
    "      - key: radplan/intake\n"
    "        limit: 1\n"
    "      - key: radplan/export\n"
    "        limit: 1\n"
    # The daemon looks at the queue every second, not every 5 s: a queued run is one hop of the sensor chain
    # (study -> intake -> patient refresh -> export), and each hop waited for the queue (benchmarks/bench_operations.py).
    "    dequeue_interval_seconds: 1\n"
)
# A run whose worker died (kill -9, lost container, the out-of-memory killer) or that never started is failed by
# Dagster (the code server sees the dead worker; run monitoring fails a run stuck in STARTING) and relaunched up to
# twice by the daemon. Runs that failed in an asset are not retried: bad input is reported, not retried.
# A loaded host takes minutes to import the code location: Dagster's 180 s for a run to start, or for a code server
# the daemon or webserver starts itself, failed healthy runs and locations (seen at load 30 on 2 cores).
RUN_RETRIES = (
    "run_monitoring:\n"
    "  enabled: true\n"
    "  start_timeout_seconds: 600\n"
    "  poll_interval_seconds: 10\n"
    "code_servers:\n"
    "  local_startup_timeout: 600\n"
    "run_retries:\n"
    "  enabled: true\n"
    "  max_retries: 2\n"
    "  retry_on_asset_or_op_failure: false\n"
)


# Dagster's Postgres storage with connections that wait out a database outage (restart, failover) for up to
# outage_wait_seconds instead of failing the runs in flight (radplan_resources/instance_storage.py).
PG_STORAGE = "storage:\n  custom:\n    module: radplan_resources.instance_storage\n    class: OutageTolerantPostgresStorage\n"
PG_OUTAGE = "      outage_wait_seconds: 300\n"


def dagster_yaml(environ: Mapping[str, str]) -> str:
    """The dagster.yaml for this environment: sqlite in the folder, or Postgres run/event/schedule storage; the run queue
    and run retries."""
    queue = RUN_QUEUE.format(max_concurrent_runs=int(environ.get(MAX_CONCURRENT_RUNS_ENV, DEFAULT_MAX_CONCURRENT_RUNS)))
    url = environ.get(PG_URL_ENV)
    if url:
        if url.split("://", 1)[0] != PG_SCHEME:
            raise ValueError(
                f"{PG_URL_ENV} must start with {PG_SCHEME}:// (SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, "
                "which is not installed; psycopg2 is)"
            )
        return (
            f"{MARKER} from {PG_URL_ENV}: Postgres run, event-log and schedule storage (credentials stay in the environment).\n"
            f"{PG_STORAGE}    config:\n      postgres_url:\n        env: {PG_URL_ENV}\n{PG_OUTAGE}{queue}{RUN_RETRIES}{TELEMETRY_OFF}"
        )
    if environ.get(PG_PART_ENVS["hostname"]):
        missing = [name for name in PG_PART_ENVS.values() if not environ.get(name)]
        if missing:
            raise ValueError(f"Postgres instance storage needs {', '.join(missing)} (or {PG_URL_ENV})")
        fields = "".join(f"        {key}:\n          env: {name}\n" for key, name in PG_PART_ENVS.items()) + f"        scheme: {PG_SCHEME}\n"
        return (
            f"{MARKER} from RADPLAN_DAGSTER_PG_*: Postgres run, event-log and schedule storage (credentials stay in the environment).\n"
            f"{PG_STORAGE}    config:\n      postgres_db:\n{fields}{PG_OUTAGE}{queue}{RUN_RETRIES}{TELEMETRY_OFF}"
        )
    return (
        f"{MARKER} for the embedded default (sqlite storage in this folder).\n"
        f"# Production: set {PG_URL_ENV} for Postgres storage; run launchers in docs/deploy.md.\n{queue}{RUN_RETRIES}{TELEMETRY_OFF}"
    )


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create DAGSTER_HOME with radplan's dagster.yaml for the current environment, and export it.

    A dagster.yaml radplan wrote earlier is rewritten when the environment changed (sqlite → Postgres); one
    without radplan's marker was written by an operator and is left alone.
    """
    configured = configured_dagster_home()
    folder = configured if configured is not None and home is None else dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dagster.yaml"
    wanted = dagster_yaml(process_environment())
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith(MARKER) and current != wanted):
        atomic_write_text(config, wanted)
    use_dagster_home(folder)
    if PG_STORAGE not in wanted:
        _create_sqlite_storage(folder)
    return folder


def _create_sqlite_storage(folder: Path) -> None:
    """Create the sqlite run/event/schedule databases once, here, before any Dagster process starts: a webserver
    and a daemon started together on a new home each create them, and both stamp the schedule database's
    alembic_version (then neither can load the code location: "more than one head present")."""
    from dagster import DagsterInstance

    DagsterInstance.from_config(str(folder)).dispose()
