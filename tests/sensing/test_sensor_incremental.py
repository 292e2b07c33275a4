"""Incremental rematerialization on a small materialized cohort: a new study reruns only its patient's partitions."""

from __future__ import annotations

import shutil

import pytest
from dagster import DagsterInstance

from support.arrivals import add_follow_up_study
from radplan.synth.generator import _draw_unique
from support.inprocess import InProcessDaemon, definitions_with, partition_materialization_counts, patient_file_digests
from support.demo import DEMO_PATIENTS, DEMO_SEED

# The first test to use demo_home pays for building it (~3 min quiet, far more on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ARRIVAL_SENSORS = ("pacs_study_sensor", "genomics_landing_sensor", "ehr_landing_sensor")
CHAIN = (*ARRIVAL_SENSORS, "patient_refresh_sensor", "patient_export_sensor")


def test_new_study_reruns_only_its_patient(demo_home, tmp_path, monkeypatch, pseudonymizer):
    # A copy of the suite's materialized demo (built by `radplan demo` in its own process): the
    # moved home must also be a clean baseline, since nothing in it may depend on where it lies.
    home = tmp_path / "home"
    shutil.copytree(demo_home, home, symlinks=True)
    monkeypatch.setenv("RADPLAN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    defs = definitions_with()
    instance = DagsterInstance.get()
    daemon = InProcessDaemon(defs, instance)
    keys = set(instance.get_dynamic_partitions("patients"))
    assert len(keys) == DEMO_PATIENTS

    # The sensors' first ticks on a materialized home: the demo's intake already scanned this landing
    # state, so nothing runs at all (no intake, no patient run).
    for name in CHAIN:
        daemon.tick_and_run(name)
    assert daemon.launched == []
    monkeypatch.setenv("RADPLAN_COHORT_BATCH_QUIET_S", "0")
    assert daemon.evaluate("cohort_batch_sensor") == []  # the cohort table is newer than every patient row

    asset_keys = list(defs.resolve_asset_graph().get_all_asset_keys())
    counts_before = partition_materialization_counts(instance, asset_keys)
    files_before = patient_file_digests(home / "lake")
    studies_before = defs.resources["lake"].read_table("raw", "inventory_dicom_studies")
    changed_key = pseudonymizer.patient_key(_draw_unique(DEMO_SEED, 2)[1].mrn)
    add_follow_up_study(home / "landing", 1, seed=DEMO_SEED)

    daemon.launched.clear()
    for name in CHAIN:
        daemon.tick_and_run(name)
    assert all(run.success for run in daemon.launched)
    assert [run.partition_key for run in daemon.launched if run.job == "patient_refresh_job"] == [changed_key]
    assert [run.job for run in daemon.launched].count("export_job") == 1

    counts_after = partition_materialization_counts(instance, asset_keys)
    touched = {slot for slot, value in counts_after.items() if counts_before.get(slot) != value}
    assert {partition for _, partition in touched if partition} == {changed_key}
    assert {asset for asset, partition in touched if partition is None} == {"landing_inventory", "recommendation_export"}
    assert {("patient_recommendations", changed_key), ("patient_report", changed_key), ("deid_studies", changed_key)} <= touched
    # A follow-up study changes imaging only: its branch and what joins it rerun, the notes and variants do not.
    assert {("radiomic_features", changed_key), ("patient_features", changed_key)} <= touched
    assert not {("deid_notes", changed_key), ("ehr_extracts", changed_key), ("variants", changed_key), ("raw_genomics", changed_key)} & touched
    refresh_run = instance.get_run_by_id(next(run.run_id for run in daemon.launched if run.job == "patient_refresh_job"))
    assert refresh_run.tags["radplan/sources"] == "imaging"
    # The patient's report is the run's goal: the check nothing waits on (and its Great Expectations import) runs after it.
    steps = {stat.step_key: stat for stat in instance.get_run_step_stats(refresh_run.run_id)}
    assert steps["imaging_metadata_imaging_metadata_valid"].start_time >= steps["patient_report"].end_time
    files_after = patient_file_digests(home / "lake")
    for key in keys - {changed_key}:
        assert files_after[key] == files_before[key], f"files of untouched patient {key} changed"
    assert files_after[changed_key] != files_before[changed_key]
    studies_after = defs.resources["lake"].read_table("raw", "inventory_dicom_studies")
    assert (studies_after["patient_key"] == changed_key).sum() == (studies_before["patient_key"] == changed_key).sum() + 1

    # Nothing more to do: another round of ticks requests no run at all.
    for name in CHAIN:
        assert daemon.evaluate(name) == []
    # The cohort level follows once, for the whole batch.
    batch = daemon.evaluate("cohort_batch_sensor")
    assert len(batch) == 1 and batch[0].run_key.startswith("cohort-after-")
    daemon.record_without_executing("cohort_batch_sensor", batch[0])
    assert daemon.evaluate("cohort_batch_sensor") == []  # in flight, and its run key is taken
