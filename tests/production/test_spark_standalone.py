"""The cohort_features asset, unchanged, on a Spark standalone cluster (master + one worker from pyspark's own
launcher, on loopback): same table as on local[*], and the application really ran on the cluster."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from production.local_services import spark_standalone
from radplan_assets.cohort import cohort_features
from radplan_resources import LakeResource, SparkResource
from test_cohort_spark import write_three_patient_lake
from support import with_lake_io, with_upstream_sources


def stop_active_spark() -> None:
    """Another test (or run) may have left a session: getOrCreate would hand it back whatever master we ask for."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


def run_cohort_features(lake_root, master: str, app_name: str) -> pd.DataFrame:
    lake = LakeResource(root=str(lake_root))
    stop_active_spark()
    try:
        result = materialize(with_upstream_sources([cohort_features]), resources=with_lake_io({"lake": lake, "spark": SparkResource(master=master, app_name=app_name)}), instance=DagsterInstance.ephemeral())
        assert result.success
        assert result.asset_materializations_for_node("cohort_features")[0].metadata["spark_master"].value == master
    finally:
        stop_active_spark()  # the standalone master marks the application finished when its context stops
    return lake.read_table("features", "cohort_features")


@pytest.mark.slow
def test_cohort_features_on_standalone_master_equals_local(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    lake_root = tmp_path / "lake"
    lake = LakeResource(root=str(lake_root))
    write_three_patient_lake(lake)
    shutil.copytree(lake_root, tmp_path / "lake-local")

    on_local = run_cohort_features(tmp_path / "lake-local", "local[*]", "radplan-local")
    with spark_standalone(tmp_path) as cluster:
        on_cluster = run_cohort_features(lake_root, cluster.master_url, "radplan-standalone-test")
        state = cluster.state()

    pd.testing.assert_frame_equal(on_cluster, on_local)
    assert on_cluster["patient_key"].tolist() == ["p0000000000000001", "p0000000000000002", "p00000000000000ff"]
    completed = [app for app in state["completedapps"] if app["name"] == "radplan-standalone-test"]
    assert len(completed) == 1 and completed[0]["state"] == "FINISHED", state
    assert completed[0]["cores"] >= 1  # executors were granted on the worker
