"""Shared fixture: one synthetic 2-patient cohort taken through ingest and patient preparation, with and without raw-zone encryption."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from radplan.crypto import KEY_ENV_VAR, generate_key_text

PATIENTS = 2
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class PreparedHome:
    home: Path
    instance: object  # DagsterInstance
    run_ids: list[str]
    partition_keys: list[str]
    raw_key: str | None

    @property
    def lake(self) -> Path:
        return self.home / "lake"


def prepare_home(home: Path, cohort: Path, raw_key: str | None) -> PreparedHome:
    """Copy the cohort's landing zone into ``home`` and run ingest_job and patient_preparation_job in-process."""
    from dagster import DagsterInstance, Definitions, load_asset_checks_from_modules, load_assets_from_modules

    from jobs import ALL_JOBS
    from definitions import build_resources
    from radplan_resources.instance import ensure_dagster_home
    from radplan_assets import ASSET_MODULES
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    shutil.copytree(cohort / "landing", home / "landing")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RADPLAN_HOME", str(home))
        env.setenv("RADPLAN_DEMO", "1")
        env.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        if raw_key:
            env.setenv(KEY_ENV_VAR, raw_key)
        else:
            env.delenv(KEY_ENV_VAR, raising=False)
        ensure_dagster_home()
        instance = DagsterInstance.get()
        defs = Definitions(
            assets=load_assets_from_modules(ASSET_MODULES),
            asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
            jobs=ALL_JOBS,
            resources=build_resources(),
        )
        ingest = defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, run_config=QUIET)
        assert ingest.success
        run_ids = [ingest.run_id]
        keys = sorted(instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))
        assert len(keys) == PATIENTS
        for key in keys:
            result = defs.resolve_job_def("patient_preparation_job").execute_in_process(instance=instance, partition_key=key, run_config=QUIET)
            assert result.success, key
            run_ids.append(result.run_id)
    return PreparedHome(home, instance, run_ids, keys, raw_key)


@pytest.fixture(scope="session")
def security_cohort(tmp_path_factory) -> Path:
    from radplan.synth import generate_cohort

    folder = tmp_path_factory.mktemp("security-cohort")
    generate_cohort(folder, PATIENTS, seed=23)
    return folder


@pytest.fixture(scope="session")
def plain_home(tmp_path_factory, security_cohort) -> PreparedHome:
    return prepare_home(tmp_path_factory.mktemp("plain-home"), security_cohort, raw_key=None)


@pytest.fixture(scope="session")
def encrypted_home(tmp_path_factory, security_cohort) -> PreparedHome:
    return prepare_home(tmp_path_factory.mktemp("encrypted-home"), security_cohort, raw_key=generate_key_text())
