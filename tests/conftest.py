"""Shared test fixtures: the real sample data in ../shared/data, demo-mode keys, no telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radplan.runtime import disable_telemetry

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
