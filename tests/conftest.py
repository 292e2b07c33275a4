"""Shared test fixtures: the real sample data in ../shared/data, demo-mode keys, no telemetry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from radplan.settings import disable_telemetry
from support.demo import DEMO_PATIENTS, DEMO_SEED

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADPLAN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

disable_telemetry()
os.environ.setdefault("RADPLAN_DEMO", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED_DATA} (set RADPLAN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def pseudonymizer():
    from radplan.pseudonym import Pseudonymizer, DEMO_KEY

    return Pseudonymizer(DEMO_KEY)


@pytest.fixture()
def orthanc(tmp_path):
    """A real Orthanc on free loopback ports with a temporary storage folder."""
    from support.orthanc import OrthancServer

    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory, worker_id, shared_data) -> Path:
    """One `radplan demo` of the whole graph, in its own process, shared by the slow tests (read it, copy it to change it).

    A 12-patient demo takes ~3 min on a quiet machine; the end-to-end checks read it and the incremental test
    copies it, so the suite pays for it once: the first pytest-xdist worker to need it builds it under a file lock
    in the run's common temporary folder, and the other worker reads the same home (building one each, at the same
    time on two cores, cost each worker ~3 min).
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # the folder every worker's basetemp is in
    home = root / "radplan-demo-home"
    built = home / "demo-built"
    with FileLock(str(root / "radplan-demo-home.lock")):
        if not built.exists():
            if home.exists():
                shutil.rmtree(home)  # a build that failed in the other worker: build it again here
            home.mkdir()
            env = {**os.environ, "RADPLAN_DEMO": "1", "DAGSTER_HOME": str(home / "dagster_home")}
            env.pop("RADPLAN_HOME", None)
            command = [sys.executable, "-m", "radplan_cli.main", "demo", "--patients", str(DEMO_PATIENTS), "--seed", str(DEMO_SEED), "--home",
                       str(home), "--segmentation-epochs", "1", "--trials", str(shared_data / "trials")]  # fmt: skip
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1700)
            (home / "demo.log").write_text(result.stdout + result.stderr)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            built.touch()
    return home
