"""Two runs for one patient at once (a backfill and a sensor run) never interleave their lake writes.

`dagster-daemon` runs for real on the dagster.yaml radplan writes (`ensure_dagster_home`): its run queue limits
runs to one per `dagster/partition` value. The backfill comes from `dagster job backfill`; the sensor asks for a
second run of the same patient while the backfill's run is between its two lake writes (that run holds there
until the second run executes, or 30 s: without the limit the daemon starts it within that time, and the test
fails; checked by hand with the limit removed). The second run must wait in the queue and start only after
the first ended, and the lake must equal what one clean run writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from production.local_services import stop, wait_until
from radplan.lake_integrity import iter_manifests, verify_local_lake
from radplan_resources.instance import ensure_dagster_home

LOCATION = Path(__file__).with_name("patient_run_queue_location.py")
PATIENT = "p00000000000000c3"
DAGSTER_BIN = Path(sys.executable).parent


def manifests(lake: Path) -> dict:
    return {dataset: manifest["files"] for dataset, manifest in iter_manifests(lake)}


def test_instance_config_queues_one_run_per_patient(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    config = yaml.safe_load((ensure_dagster_home(tmp_path) / "dagster.yaml").read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    # Intake and export runs, one at a time each: the jobs carry the limited tags.
    from jobs import export_job, ingest_job

    for job in (ingest_job, export_job):
        limited = [limit for limit in limits if limit["key"] in job.tags]
        assert limited and all(limit["limit"] == 1 for limit in limited), job.name
    # The instance Dagster builds from the file accepts it (a schema error would raise here).
    instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    instance.dispose()


@pytest.mark.slow  # a real daemon, three run processes and a 30 s hold: about a minute on a quiet machine
def test_a_backfill_and_a_sensor_run_of_one_patient_do_not_overlap(tmp_path, shared_data, monkeypatch):
    source = shared_data / "radiomics" / "ibsi1_ct_radiomics_phantom" / "ibsi_1_reference_values_config_A.csv"
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    dagster_home = ensure_dagster_home(tmp_path / "home")  # radplan's dagster.yaml, as every deployment gets it
    lake = tmp_path / "lake"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "RADPLAN_QUEUE_TEST_INPUT": str(source),
           "RADPLAN_QUEUE_TEST_LAKE": str(lake), "RADPLAN_QUEUE_TEST_WAIT_S": "60", "RADPLAN_QUEUE_TEST_HOLD_S": "30", "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    instance = DagsterInstance.from_config(str(dagster_home))
    instance.add_dynamic_partitions("patients", [PATIENT])

    log = tmp_path / "daemon.log"
    with open(log, "wb") as sink:
        daemon = subprocess.Popen([str(DAGSTER_BIN / "dagster-daemon"), "run", "-f", str(LOCATION)], env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    try:
        backfill = subprocess.run(
            [str(DAGSTER_BIN / "dagster"), "job", "backfill", "-f", str(LOCATION), "-j", "patient_job", "--partitions", PATIENT, "--noprompt"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
        seen_queued_while_first_ran = []

        def both_done() -> bool:
            runs = {run.tags.get("dagster/sensor_name", "backfill"): run for run in instance.get_runs(RunsFilter(job_name="patient_job"))}
            if {r.status for r in runs.values()} == {DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED}:
                seen_queued_while_first_ran.append(True)
            failed = [r for r in runs.values() if r.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)]
            assert not failed, log.read_text(errors="replace")[-3000:]
            return len(runs) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in runs.values())

        wait_until(both_done, 300, "the backfill run and the sensor run", log)
    finally:
        stop(daemon)

    records = {r.dagster_run.tags.get("dagster/sensor_name", "backfill"): r for r in instance.get_run_records(RunsFilter(job_name="patient_job"))}
    assert set(records) == {"backfill", "same_patient_sensor"}
    first, second = records["backfill"], records["same_patient_sensor"]
    assert first.dagster_run.tags["dagster/partition"] == second.dagster_run.tags["dagster/partition"] == PATIENT
    # The sensor's run was requested while the backfill's run was in progress, and only started once it had ended.
    assert first.start_time < second.create_timestamp.timestamp() < first.end_time
    assert second.start_time >= first.end_time
    assert seen_queued_while_first_ran
    instance.dispose()

    # The lake equals one clean run's: same tables, byte for byte, and it verifies.
    clean = tmp_path / "clean-lake"
    clean_env = {**env, "RADPLAN_QUEUE_TEST_LAKE": str(clean), "RADPLAN_QUEUE_TEST_WAIT_S": "0", "RADPLAN_QUEUE_TEST_HOLD_S": "0", "DAGSTER_HOME": str(tmp_path / "clean-home")}
    (tmp_path / "clean-home").mkdir()
    once = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from patient_run_queue_location import patient_job, defs; "
         "from dagster import DagsterInstance; i = DagsterInstance.get(); i.add_dynamic_partitions('patients', [sys.argv[2]]); "
         "assert defs.resolve_job_def('patient_job').execute_in_process(instance=i, partition_key=sys.argv[2]).success",
         str(LOCATION.parent), PATIENT],
        env=clean_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr[-2000:]
    assert manifests(lake) == manifests(clean) and len(manifests(lake)) == 2
    assert verify_local_lake(lake).ok
