"""Services radplan starts listen on loopback only: the Dagster UI as `make ui` starts it, Spark's driver,
and the test Orthanc (which has no bind-address setting, so it refuses every non-loopback client)."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from reliability_helpers import REPO_ROOT
from support.orthanc import free_port


def _listening(root: psutil.Process) -> dict[str, list[str]]:
    """'name pid' -> listening addresses, for ``root`` and every process under it."""
    found = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            sockets = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses = [f"{c.laddr.ip}:{c.laddr.port}" for c in sockets if c.status == psutil.CONN_LISTEN]
        if addresses:
            found[f"{process.name()} {process.pid}"] = addresses
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # a JVM reports 127.0.0.1 as ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def _not_loopback(listening: dict[str, list[str]]) -> list[str]:
    return [f"{who} {address}" for who, addresses in listening.items() for address in addresses
            if not _is_loopback(address.rsplit(":", 1)[0])]


def _make_ui_command() -> list[str]:
    """The dagster command line of the Makefile's `ui` target (as `make -n ui` would run it)."""
    recipe = (REPO_ROOT / "Makefile").read_text().split("\nui:", 1)[1].split("\n\n", 1)[0]
    (line,) = [line for line in recipe.splitlines() if "/dagster " in line]
    words = line.split()
    return words[words.index("$(VENV)/bin/dagster"):]


@pytest.mark.slow
def test_make_ui_serves_the_dagster_ui_on_loopback_only(tmp_path):
    command = _make_ui_command()
    assert command[command.index("-h") + 1] == "127.0.0.1"
    port = free_port()
    command = [str(Path(sys.executable).with_name("dagster")), *command[1:command.index("-p")], "-p", str(port)]
    home = tmp_path / "home"
    env = {**os.environ, "RADPLAN_HOME": str(home), "RADPLAN_DEMO": "1", "DAGSTER_HOME": str(home / "dagster_home")}
    subprocess.run([sys.executable, "-c", "from radplan_resources.instance import ensure_dagster_home; ensure_dagster_home()"], env=env, check=True)
    log = tmp_path / "dagster-dev.log"
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        loaded = False
        while time.monotonic() < deadline and not loaded:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": "{ assetNodes { id } }"}, timeout=30).json()
                loaded = bool((answer.get("data") or {}).get("assetNodes"))
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert loaded, log.read_text()[-3000:]
        listening = _listening(psutil.Process(process.pid))
        assert any(address.endswith(f":{port}") for addresses in listening.values() for address in addresses), listening
        assert _not_loopback(listening) == [], listening
        print(f"\nmake ui process tree listens on: {listening}")
    finally:
        # dagster dev shuts its webserver, daemon and code server down in turn, slowly on a loaded
        # machine; what this test checks is already done, so a late shutdown is cut short.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.mark.slow
def test_spark_driver_binds_loopback_and_serves_no_ui():
    from radplan_resources import SparkResource

    spark = SparkResource(master="local[1]").session()
    try:
        conf = spark.sparkContext.getConf()
        assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
        assert conf.get("spark.driver.host") == "127.0.0.1"
        assert conf.get("spark.ui.enabled") == "false"
        assert spark.sparkContext.uiWebUrl is None
        assert spark.range(3).count() == 3  # the driver is really up
        listening = _listening(psutil.Process())
        assert listening  # the JVM (driver RPC, block manager, Py4J gateway) listens somewhere...
        assert _not_loopback(listening) == [], listening  # ...on loopback only
    finally:
        spark.stop()


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return None


@pytest.mark.orthanc
def test_test_orthanc_answers_loopback_clients_only(orthanc):
    config = orthanc.config_path.read_text()
    assert re.search(r'"RemoteAccessAllowed": false', config)
    assert requests.get(f"{orthanc.url}/system", timeout=10).ok
    outside = _non_loopback_ipv4()
    if outside is None:
        pytest.skip("no non-loopback interface to call from")
    # Orthanc listens on every interface (it has no bind-address option), but answers only loopback callers.
    answer = requests.get(f"http://{outside}:{orthanc.http_port}/system", timeout=10)
    assert answer.status_code in (401, 403) and "ApiVersion" not in answer.text
