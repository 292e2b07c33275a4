"""Landing-folder sensors (one intake per change, keyed run keys) and the run-failure recorder."""

from __future__ import annotations

import json

from dagster import DagsterInstance

from radplan_resources import LandingFolderPacs
from sensors.failures import FAILURES_FILE, failure_rows, record_failures
from support.inprocess import InProcessDaemon, definitions_with


def test_landing_sensors_request_once_per_change_without_file_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    landing = tmp_path / "landing"
    (landing / "genomics").mkdir(parents=True)
    (landing / "ehr" / "csv").mkdir(parents=True)
    (landing / "dicom").mkdir(parents=True)
    (landing / "genomics" / "MRN0000001.vcf.gz").write_bytes(b"not really a vcf")
    defs = definitions_with(pacs=LandingFolderPacs(folder=str(landing / "dicom")))
    instance = DagsterInstance.ephemeral()
    daemon = InProcessDaemon(defs, instance)

    first = daemon.evaluate("genomics_landing_sensor")
    assert len(first) == 1 and first[0].run_key.startswith("landing-genomics-")
    assert "MRN" not in first[0].run_key and "MRN" not in daemon.cursors["genomics_landing_sensor"]
    daemon.record_without_executing("genomics_landing_sensor", first[0])
    assert daemon.evaluate("genomics_landing_sensor") == []

    # Only the genomics sensor sees a genomics arrival; the EHR one sees only EHR files.
    ehr_before = daemon.evaluate("ehr_landing_sensor")
    (landing / "genomics" / "MRN0000002.vcf.gz").write_bytes(b"second")
    changed = daemon.evaluate("genomics_landing_sensor")
    assert len(changed) == 1 and changed[0].run_key != first[0].run_key
    assert daemon.evaluate("ehr_landing_sensor") == []
    (landing / "ehr" / "csv" / "patients.csv").write_text("Id\nMRN0000002\n")
    assert len(daemon.evaluate("ehr_landing_sensor")) == 1 and len(ehr_before) == 1
    daemon.record_without_executing("genomics_landing_sensor", changed[0])

    # A restarted sensor that lost its cursor asks again with the same run key: the daemon drops it.
    restarted = InProcessDaemon(defs, instance)
    assert restarted.evaluate("genomics_landing_sensor") == [] and restarted.dropped_duplicates == 1

    # The embedded PACS is watched through the pacs resource's folder.
    (landing / "dicom" / "IM_0001.dcm").write_bytes(b"DICM")
    assert daemon.evaluate("pacs_study_sensor")[0].run_key.startswith("landing-dicom-")


def test_failure_records_are_deduplicated_and_phi_free(tmp_path):
    path = tmp_path / "ops" / "run_failures.jsonl"
    rows = failure_rows("run1", "patient_refresh_job", "p0123456789abcdef", [("deid_studies", "InvalidDicomError")], "t")
    assert record_failures(path, rows) == 1 and record_failures(path, rows) == 0
    assert record_failures(path, failure_rows("run2", "ingest_job", None, [], "t")) == 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["run_id"], r["step"], r["error_class"]) for r in lines] == [("run1", "deid_studies", "InvalidDicomError"), ("run2", None, None)]


def test_run_failure_recorder_writes_the_failed_partition(tmp_path, monkeypatch):
    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    defs = definitions_with()
    instance = DagsterInstance.ephemeral()
    daemon = InProcessDaemon(defs, instance)
    daemon.evaluate("run_failure_recorder")  # the first tick starts watching from now
    partition = "p00000000000000aa"
    instance.add_dynamic_partitions("patients", [partition])
    # No intake has run: the patient's assets cannot find the inventory and fail.
    result = defs.resolve_job_def("patient_features_job").execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )
    assert not result.success
    daemon.evaluate("run_failure_recorder")
    lines = [json.loads(line) for line in (tmp_path / "lake" / "ops" / FAILURES_FILE).read_text().splitlines()]
    assert lines and {line["run_id"] for line in lines} == {result.run_id}
    assert all(line["partition_key"] == partition and line["job"] == "patient_features_job" for line in lines)
    assert any(line["step"] and line["error_class"] for line in lines)


def test_a_patient_arriving_in_every_modality_costs_one_intake(tmp_path, monkeypatch):
    from support.arrivals import add_new_patient
    from radplan_resources.instance import ensure_dagster_home
    from radplan.synth import generate_cohort

    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    generate_cohort(tmp_path, 1, 31, bad_inputs=False)
    ensure_dagster_home()
    defs = definitions_with()
    instance = DagsterInstance.get()
    daemon = InProcessDaemon(defs, instance)
    arrival = ("pacs_study_sensor", "genomics_landing_sensor", "ehr_landing_sensor")

    # The first sensor's intake scans the whole landing zone; the other two see that state already scanned.
    for name in arrival:
        daemon.tick_and_run(name)
    assert [(run.sensor, run.job) for run in daemon.launched] == [("pacs_study_sensor", "ingest_job")]
    assert all(daemon.cursors[name] for name in arrival)  # they advanced their cursors all the same

    # A new patient in DICOM, VCF and EHR at once: one intake again, which registers the patient.
    add_new_patient(tmp_path / "landing", 1, seed=31)
    daemon.launched.clear()
    for name in reversed(arrival):
        daemon.tick_and_run(name)
    assert [run.sensor for run in daemon.launched] == ["ehr_landing_sensor"] and daemon.launched[0].success
    assert len(instance.get_dynamic_partitions("patients")) == 2

    # A file arriving after that intake is not covered by it: its sensor asks.
    (tmp_path / "landing" / "genomics" / "late.vcf").write_text("##fileformat=VCFv4.2\n")
    assert len(daemon.evaluate("genomics_landing_sensor")) == 1
    assert daemon.evaluate("pacs_study_sensor") == [] and daemon.evaluate("ehr_landing_sensor") == []


def test_missed_retry_reason_follows_the_retry_policy():
    from sensors.retries import RETRY_OVERDUE_S, RetryPolicy, missed_retry_reason

    policy = RetryPolicy(max_retries=2, retry_on_step_failure=False)
    now = 10_000.0
    # The daemon's retry raised: it tagged the run will_retry=false although the policy allows a retry.
    assert missed_retry_reason({"dagster/will_retry": "false"}, now - 5, now, policy) == "the daemon's retry failed"
    assert missed_retry_reason({"dagster/will_retry": "true"}, now - 5, now, policy) is None  # the daemon is on it
    assert missed_retry_reason({"dagster/will_retry": "true"}, now - RETRY_OVERDUE_S - 1, now, policy).startswith("no retry")
    assert missed_retry_reason({"dagster/will_retry": "false", "dagster/auto_retry_run_id": "r2"}, now, now, policy) is None
    # Policy limits: a step that raised is not retried here; spent retries (the daemon's or ours) are spent.
    assert missed_retry_reason({"dagster/will_retry": "false", "dagster/failure_reason": "STEP_FAILURE"}, now, now, policy) is None
    assert missed_retry_reason({"dagster/will_retry": "false", "dagster/failure_reason": "STEP_FAILURE"}, now, now,
                               RetryPolicy(2, True)) == "the daemon's retry failed"  # fmt: skip
    assert missed_retry_reason({"dagster/will_retry": "false", "dagster/retry_number": "2"}, now, now, policy) is None
    assert missed_retry_reason({"dagster/will_retry": "false", "radplan/safety_retries": "2"}, now, now, policy) is None
    assert missed_retry_reason({"dagster/will_retry": "false", "dagster/max_retries": "0"}, now, now, policy) is None


def test_a_step_that_lost_its_database_is_retried_where_step_failures_are_not():
    from dagster._utils.error import SerializableErrorInfo

    from sensors.retries import RetryPolicy, database_error, missed_retry_reason

    # As Dagster recorded it when Postgres was killed under a refresh writing its events (psycopg2 under sqlalchemy).
    driver = SerializableErrorInfo("psycopg2.OperationalError: server closed the connection unexpectedly", [], "OperationalError")
    wrapped = SerializableErrorInfo("sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) ...", [], "OperationalError", cause=driver)
    step = SerializableErrorInfo("dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing", [],
                                 "DagsterExecutionStepExecutionError", cause=wrapped)
    data = SerializableErrorInfo("ValueError: lesion mask is empty", [], "ValueError",
                                 context=SerializableErrorInfo("KeyError: 'x'", [], "KeyError"))
    assert database_error([step]) == "OperationalError"
    assert database_error([data]) is None and database_error([]) is None

    now, policy = 1_000_000.0, RetryPolicy(max_retries=2, retry_on_step_failure=False)
    failed = {"dagster/will_retry": "false", "dagster/failure_reason": "STEP_FAILURE"}
    assert "database error (OperationalError)" in missed_retry_reason(failed, now, now, policy, lambda: database_error([step]))
    assert missed_retry_reason(failed, now, now, policy, lambda: database_error([data])) is None
    assert missed_retry_reason({**failed, "radplan/safety_retries": "2"}, now, now, policy, lambda: "OperationalError") is None


def test_missed_retry_sensor_runs_the_same_work_again_once(tmp_path, monkeypatch):
    from dagster import AssetKey, DagsterRunStatus, instance_for_test

    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    defs = definitions_with()
    refresh_job = defs.resolve_job_def("patient_refresh_job")
    imaging = frozenset({AssetKey("pacs_studies"), AssetKey("deid_studies"), AssetKey("patient_features"), AssetKey("patient_recommendations")})
    partition = "p00000000000000ab"
    with instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}}) as instance:
        daemon = InProcessDaemon(defs, instance)
        assert daemon.evaluate("missed_retry_sensor") == []
        instance.add_dynamic_partitions("patients", [partition])
        tags = {"dagster/partition": partition, "radplan/trigger": "inventory-change", "radplan/sources": "imaging"}
        lost = instance.create_run_for_job(refresh_job, status=DagsterRunStatus.FAILURE, asset_selection=imaging,
                                           tags={**tags, "dagster/will_retry": "false", "dagster/run_key": "patient-refresh-k-f"})  # fmt: skip
        # Not the safety net's: a step that raised (policy), and a run the daemon did retry.
        instance.create_run_for_job(refresh_job, status=DagsterRunStatus.FAILURE, asset_selection=imaging,
                                    tags={**tags, "dagster/will_retry": "false", "dagster/failure_reason": "STEP_FAILURE"})  # fmt: skip
        instance.create_run_for_job(refresh_job, status=DagsterRunStatus.FAILURE,
                                    tags={**tags, "dagster/will_retry": "true", "dagster/auto_retry_run_id": "elsewhere"})  # fmt: skip

        # The daemon's retry of the lost run, created but never submitted (the database went away in between).
        orphan = instance.create_run_for_job(refresh_job, status=DagsterRunStatus.NOT_STARTED, asset_selection=imaging,
                                             tags={**tags, "dagster/parent_run_id": lost.run_id})
        monkeypatch.setattr("sensors.retries.ORPHAN_AFTER_S", 3600)
        [request] = daemon.evaluate("missed_retry_sensor")
        assert instance.get_run_by_id(orphan.run_id).status == DagsterRunStatus.NOT_STARTED  # young: may still be submitted
        monkeypatch.setattr("sensors.retries.ORPHAN_AFTER_S", 0)
        [request] = daemon.evaluate("missed_retry_sensor")
        assert instance.get_run_by_id(orphan.run_id).status == DagsterRunStatus.CANCELED
        assert any("Never started" in (entry.message or "") for entry in instance.all_logs(orphan.run_id))
        assert request.job_name == "patient_refresh_job" and request.partition_key == partition
        assert set(request.asset_selection) == imaging
        assert request.tags["radplan/retry_of"] == lost.run_id and request.tags["radplan/sources"] == "imaging"
        # Dagster's verdicts on the failed run are not carried over (the new run gets its own).
        assert request.tags["radplan/safety_retries"] == "1" and request.tags["radplan/retried_run_key"] == "patient-refresh-k-f"
        assert not {"dagster/will_retry", "dagster/failure_reason", "dagster/run_key", "dagster/retry_number"} & set(request.tags)
        daemon.record_without_executing("missed_retry_sensor", request)
        assert daemon.evaluate("missed_retry_sensor") == []  # requested once: its run key is taken

        # A failed intake whose same work later succeeded needs nothing.
        ingest = defs.resolve_job_def("ingest_job")
        instance.create_run_for_job(ingest, status=DagsterRunStatus.FAILURE, tags={"dagster/will_retry": "false"})
        instance.create_run_for_job(ingest, status=DagsterRunStatus.SUCCESS)
        assert daemon.evaluate("missed_retry_sensor") == []
