"""The Dagster instance on a real PostgreSQL (Debian's server, a throwaway cluster on loopback): the dagster.yaml
radplan writes holds no credential, and partitions, runs, a partitioned run and a sensor tick land in Postgres."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from production.local_services import postgres_server
from radplan_resources.instance import PG_PART_ENVS, PG_URL_ENV, dagster_yaml, ensure_dagster_home
from radplan.synth.generator import generate_cohort
from radplan_assets import ehr, ingest
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources import DeidKeyResource, LakeResource, LandingFolderPacs, LandingZoneResource
from sensors.landing import genomics_landing_sensor
from sensors.patients import patient_refresh_sensor
from support import with_lake_io, with_upstream_sources


def test_dagster_yaml_names_variables_never_values():
    url_config = dagster_yaml({PG_URL_ENV: "postgresql+psycopg2://dagster:s3cret-pw@db:5432/dagster"})
    assert f"env: {PG_URL_ENV}" in url_config and "s3cret-pw" not in url_config
    parts = {name: f"value-of-{key}" for key, name in PG_PART_ENVS.items()}
    parts_config = dagster_yaml(parts)
    assert "value-of-" not in parts_config and all(f"env: {name}" in parts_config for name in PG_PART_ENVS.values())
    with pytest.raises(ValueError, match="RADPLAN_DAGSTER_PG_PASSWORD"):
        dagster_yaml({k: v for k, v in parts.items() if k != PG_PART_ENVS["password"]})
    assert "scheme: postgresql+psycopg2" in parts_config
    with pytest.raises(ValueError, match=r"must start with postgresql\+psycopg2://"):
        dagster_yaml({PG_URL_ENV: "postgresql://dagster:s3cret-pw@db:5432/dagster"})
    for config in (url_config, parts_config, dagster_yaml({})):
        assert "telemetry:\n  enabled: false" in config


def test_dagster_yaml_retries_crashed_runs_and_caps_the_queue():
    import yaml
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema

    for environ in ({}, {PG_URL_ENV: "postgresql+psycopg2://dagster:pw@db:5432/dagster"}, {"RADPLAN_MAX_CONCURRENT_RUNS": "2"}):
        config = yaml.safe_load(dagster_yaml(environ))
        assert validate_config(dagster_instance_config_schema(), config).success  # Dagster's own schema accepts it
        assert config["run_retries"] == {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
        assert config["run_monitoring"]["enabled"] is True
        queue = config["run_coordinator"]["config"]
        assert queue["max_concurrent_runs"] == int(environ.get("RADPLAN_MAX_CONCURRENT_RUNS", 4))
        assert queue["dequeue_interval_seconds"] == 1


def test_connections_wait_out_a_database_outage_but_not_a_wrong_password():
    import sqlalchemy.exc

    from radplan_resources.instance_storage import when_reachable

    now, tries = [0.0], []
    clock, sleep = (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))

    def database(failures: int, reason: str = "Connection refused"):
        def connect():
            tries.append(now[0])
            if len(tries) <= failures:
                raise sqlalchemy.exc.OperationalError("connect", {}, Exception(reason))
            return "connection"
        return connect

    assert when_reachable(database(3), 10, clock=clock, sleep=sleep) == "connection" and len(tries) == 4  # restarted: waited 3 s
    tries.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        when_reachable(database(100), 10, clock=clock, sleep=sleep)  # still down when the wait is over
    assert 9 <= tries[-1] - tries[0] <= 10
    tries.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        when_reachable(database(1, 'password authentication failed for user "dagster"'), 10, clock=clock, sleep=sleep)
    assert len(tries) == 1  # a wrong password is not an outage: no waiting

    # dagster-postgres' own short retry gave up (a storage constructor): waited out too, by what it saw.
    from dagster_postgres.utils import DagsterPostgresException

    def constructor(failures: int, reason: str = "Connection refused"):
        inner = database(failures, reason)

        def build():
            try:
                return inner()
            except sqlalchemy.exc.OperationalError as error:
                raise DagsterPostgresException("too many retries for DB connection") from error
        return build

    tries.clear()
    assert when_reachable(constructor(2), 10, clock=clock, sleep=sleep) == "connection" and len(tries) == 3
    tries.clear()
    with pytest.raises(DagsterPostgresException):
        when_reachable(constructor(1, 'database "dagster" does not exist'), 10, clock=clock, sleep=sleep)
    assert len(tries) == 1


@pytest.mark.slow
def test_partitions_runs_and_sensor_on_postgres(tmp_path, monkeypatch):
    home = tmp_path / "home"
    generate_cohort(home, 2, 7, bad_inputs=False)
    monkeypatch.setenv("RADPLAN_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with postgres_server() as server:
        monkeypatch.setenv(PG_URL_ENV, server.url)
        folder = ensure_dagster_home(home)
        config = (folder / "dagster.yaml").read_text()
        assert server.password not in config and f"env: {PG_URL_ENV}" in config

        instance = DagsterInstance.get()
        try:
            # dagster-postgres's storages, whose connections wait out a database outage (radplan_resources/instance_storage.py).
            assert type(instance.run_storage).__name__ == "OutageTolerantRunStorage"
            assert type(instance.event_log_storage).__name__ == "OutageTolerantEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "OutageTolerantScheduleStorage"
            landing = home / "landing"
            resources = {
                "lake": LakeResource(root=str(home / "lake")),
                "landing": LandingZoneResource(folder=str(landing)),
                "pacs": LandingFolderPacs(folder=str(landing / "dicom")),
                "deid_key": DeidKeyResource(demo=True),
            }

            # The arrival sensor sees the delivery and requests one intake run; its run key tags the run it starts.
            arrival = build_sensor_context(instance=instance, cursor=None, resources={"landing": resources["landing"], "deid_key": resources["deid_key"]})
            tick = genomics_landing_sensor(arrival)
            (request,) = tick.run_requests
            assert request.run_key.startswith("landing-genomics-") and tick.cursor
            intake = materialize(with_upstream_sources([ingest.landing_inventory]), resources=with_lake_io(resources), instance=instance, tags={"dagster/run_key": request.run_key})
            assert intake.success
            keys = sorted(instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))
            assert len(keys) == 2

            # The refresh sensor reads the intake's materialization from the Postgres event log: one request per patient.
            refresh_context = build_sensor_context(instance=instance, cursor=None)
            refresh = patient_refresh_sensor(refresh_context)
            assert sorted(r.partition_key for r in refresh.run_requests) == keys and refresh.cursor
            first = next(r for r in refresh.run_requests if r.partition_key == keys[0])
            chain = [ehr.ehr_extracts, ehr.deid_ehr]
            partition_run = materialize(with_upstream_sources(chain), resources=with_lake_io(resources), instance=instance, partition_key=keys[0], tags={"dagster/run_key": first.run_key})
            assert partition_run.success
            again = patient_refresh_sensor(build_sensor_context(instance=instance, cursor=refresh.cursor))
            assert not again.run_requests  # no new intake since the cursor
            # A partition added by hand (as the sensor's intake would) is stored and listed too.
            instance.add_dynamic_partitions(PATIENTS_PARTITION_NAME, ["p00000000000000ff"])
            assert instance.has_dynamic_partition(PATIENTS_PARTITION_NAME, "p00000000000000ff")
        finally:
            instance.dispose()

        # The same database through the five RADPLAN_DAGSTER_PG_* parts: radplan rewrites its own dagster.yaml.
        monkeypatch.delenv(PG_URL_ENV)
        for key, value in {"hostname": server.host, "port": str(server.port), "db_name": server.database, "username": server.user, "password": server.password}.items():
            monkeypatch.setenv(PG_PART_ENVS[key], value)
        ensure_dagster_home(home)
        assert "postgres_db:" in (folder / "dagster.yaml").read_text()
        by_parts = DagsterInstance.get()
        try:
            assert by_parts.get_runs_count() == 2 and by_parts.has_dynamic_partition(PATIENTS_PARTITION_NAME, keys[1])
        finally:
            by_parts.dispose()

        with server.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s ORDER BY partition", (PATIENTS_PARTITION_NAME,))
            assert [row[0] for row in cursor.fetchall()] == sorted([*keys, "p00000000000000ff"])
            cursor.execute("SELECT run_id, status FROM runs")
            runs = dict(cursor.fetchall())
            assert runs == {intake.run_id: "SUCCESS", partition_run.run_id: "SUCCESS"}
            cursor.execute("SELECT value, run_id FROM run_tags WHERE key = 'dagster/run_key'")
            assert sorted(cursor.fetchall()) == sorted([(request.run_key, intake.run_id), (first.run_key, partition_run.run_id)])
            cursor.execute(
                "SELECT partition FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (partition_run.run_id,),
            )
            assert {row[0] for row in cursor.fetchall()} == {keys[0]}
        connection.close()


@pytest.mark.slow
def test_a_storage_whose_database_dies_while_it_is_built_waits_for_it():
    # What happened to a daemon restarted just before Postgres was killed (test_daemon_operations): the database
    # answered, then died while the storage was being built; dagster-postgres gives up after 5 retries (~12 s with
    # its exponential back-off) and the daemon exited. Here Postgres dies inside the first build and is back 25 s later.
    import threading

    from production.local_services import kill_postgres, start_postgres
    from radplan_resources.instance_storage import OutageTolerantRunStorage, _build

    RESTART_AFTER_S = 25
    with postgres_server() as server:
        restarts = []

        class DatabaseDiesDuringTheFirstBuild(OutageTolerantRunStorage):
            def __init__(self, *args, **kwargs):
                if not restarts:
                    kill_postgres(server)
                    restarts.append(threading.Timer(RESTART_AFTER_S, start_postgres, args=(server,)))
                    restarts[0].start()
                super().__init__(*args, **kwargs)

        started = time.monotonic()
        try:
            storage = _build(DatabaseDiesDuringTheFirstBuild, server.url, True, None, 120)
        finally:
            for timer in restarts:
                timer.join()
        assert restarts and time.monotonic() - started >= RESTART_AFTER_S - 1
        assert storage.get_runs() == [] and storage._outage_wait_s == 120


@pytest.mark.slow
def test_the_webservers_pooled_connections_survive_a_database_restart():
    # dagster-webserver keeps a pool per storage (optimize_for_webserver); after a Postgres restart each pooled
    # connection is dead, and the UI's next query failed with HTTP 500 (seen in test_daemon_operations' fault test).
    from production.local_services import kill_postgres, start_postgres
    from radplan_resources.instance_storage import OutageTolerantPostgresStorage

    with postgres_server() as server:
        storage = OutageTolerantPostgresStorage(server.url, outage_wait_s=60)
        storages = (storage.run_storage, storage.event_log_storage, storage.schedule_storage)
        for part in storages:
            part.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=20)

        def queries():
            return (storage.run_storage.get_runs_count(), storage.event_log_storage.get_asset_keys(),
                    storage.schedule_storage.all_instigator_state())

        assert queries() == (0, [], [])  # every pool now holds an open connection
        assert all(part._engine.pool.checkedin() == 1 for part in storages)
        kill_postgres(server)
        start_postgres(server)
        assert queries() == (0, [], [])
        for part in storages:
            part.dispose()
