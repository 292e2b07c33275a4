"""The Dagster UI, served by the real webserver, renders radplan's asset groups in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support.orthanc import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("ingest", "imaging", "genomics", "ehr", "cohort", "models", "decision")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium(*args: str, profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def webserver(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "RADPLAN_HOME": str(tmp_path / "home"),
        "RADPLAN_DEMO": "1",
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster_home"),
    }
    subprocess.run([sys.executable, "-c", "from radplan_resources.instance import ensure_dagster_home; ensure_dagster_home()"], env=env, check=True)
    log = (tmp_path / "webserver.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_asset_graph_shows_every_asset_group(webserver, tmp_path):
    # Wait until the code location has loaded (the UI asks the same GraphQL endpoint).
    query = {"query": "{ assetNodes { groupName } }"}
    deadline = time.monotonic() + 180
    groups = set()
    while time.monotonic() < deadline and not set(GROUPS) <= groups:
        response = requests.post(f"{webserver}/graphql", json=query, timeout=30)
        groups = {node["groupName"] for node in response.json().get("data", {}).get("assetNodes", []) or []}
        time.sleep(1)
    assert set(GROUPS) <= groups

    result = chromium("--virtual-time-budget=30000", "--window-size=1600,1000", "--dump-dom", f"{webserver}/asset-groups", profile=tmp_path / "profile")
    dom = result.stdout
    assert "<html" in dom.lower(), result.stderr[-2000:]
    missing = [group for group in GROUPS if f">{group}<" not in dom and f'"{group}"' not in dom]
    assert not missing, f"groups not rendered: {missing}"

    screenshot = tmp_path / "graph.png"
    chromium("--virtual-time-budget=30000", "--window-size=1600,1000", f"--screenshot={screenshot}", f"{webserver}/asset-groups", profile=tmp_path / "profile2")
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
