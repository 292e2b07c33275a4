"""Partition scale on a real PostgreSQL instance, at a CI-sized count: a sensor tick and a run launch do the same
database work at 200 and at 2,000 patients (statements and rows counted on the storages' engines, not timed).

A sensor that listed every partition, or read every patient's materializations, would return 1,800 more rows at
2,000 patients. The wall-time figures at 1,000 and 100,000 patients come from benchmarks/bench_scale.py.
"""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, RunStatusSensorDefinition

from production.local_services import postgres_server
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources.instance import PG_URL_ENV, ensure_dagster_home
from sensors import ALL_SENSORS
from support.inprocess import InProcessDaemon, definitions_with
from support.partition_scale import DaemonRunLauncher, count_queries, report_intake, seed_patients, synthetic_patient_key

SIZES = (200, 2000)
TICKING = [s.name for s in ALL_SENSORS if not isinstance(s, RunStatusSensorDefinition)]


def statement_difference(small, large) -> str:
    """The statements one count has more of than the other (the failure message)."""
    from collections import Counter

    before, after = Counter(text for _, text in small.timed), Counter(text for _, text in large.timed)
    return f"only at {SIZES[0]}: {dict(before - after)}; only at {SIZES[1]}: {dict(after - before)}"


def launch_work(counted) -> tuple[int, int]:
    snapshot_inserts = sum(1 for _, text in counted.timed if text.startswith("INSERT INTO snapshots"))
    return counted.statements - snapshot_inserts, counted.rows


@pytest.mark.slow
def test_sensor_tick_and_run_launch_do_the_same_database_work_at_200_and_2000_patients(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    monkeypatch.setenv("RADPLAN_HOME", str(home))
    monkeypatch.setenv("RADPLAN_DEMO", "1")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with postgres_server() as server:
        monkeypatch.setenv(PG_URL_ENV, server.url)
        ensure_dagster_home(home)
        instance = DagsterInstance.get()
        launcher = None
        try:
            daemon = InProcessDaemon(definitions_with(), instance)
            launcher = DaemonRunLauncher(instance)
            ticks, launches, have = {}, {}, 0
            for size in SIZES:
                seed_patients(instance, have, size)
                have = size
                for name in TICKING:  # the steady state: each cursor past the history already seen
                    daemon.evaluate(name)
                patient = synthetic_patient_key(size - 1)
                report_intake(instance, {patient: f"fingerprint-{size}"})
                with count_queries(instance) as ticks[size]:
                    requests = {name: daemon.evaluate(name) for name in TICKING}
                (request,) = requests["patient_refresh_sensor"]
                assert request.partition_key == patient
                assert not any(requests[name] for name in TICKING if name != "patient_refresh_sensor")
                with count_queries(instance) as launches[size]:
                    run_id = launcher.launch("patient_refresh_sensor", request)
                run = instance.get_run_by_id(run_id)
                assert run.status.value == "QUEUED" and run.tags["dagster/partition"] == patient
                # No queue daemon runs it here: gone, it does not count as in flight in the next size's tick.
                instance.delete_run(run_id)

            small, large = (ticks[size] for size in SIZES)
            assert small.statements > 0 and small.rows > 0
            assert (large.statements, large.rows) == (small.statements, small.rows), statement_difference(small, large)
            # Job and execution-plan snapshots are content-addressed and stored by the first launch only.
            assert launch_work(launches[SIZES[1]]) == launch_work(launches[SIZES[0]]), statement_difference(launches[SIZES[0]], launches[SIZES[1]])

            # The counter sees a listing of every partition: the equalities above can fail.
            with count_queries(instance) as listing:
                assert len(instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)) == SIZES[1]
            assert listing.rows >= SIZES[1] and listing.by_table.get("dynamic_partitions", 0) >= SIZES[1]
        finally:
            if launcher is not None:
                launcher.close()
            instance.dispose()
