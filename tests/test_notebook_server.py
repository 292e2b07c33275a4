"""`make notebook` (`radplan notebook`): a real JupyterLab on loopback, with the news feed and update check off."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_serves_notebooks_on_loopback_without_phoning_home(tmp_path):
    port, token = _free_port(), "radplan-test-token"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    command = [sys.executable, "-m", "radplan_cli.main", "notebook", "--no-browser", "--port", str(port), "--",
               f"--IdentityProvider.token={token}"]
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        page = None
        deadline = time.monotonic() + 120
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10).read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None, server.stdout.read().decode()[-3000:] if server.poll() is not None else "no answer in 120 s"
        config = json.loads(re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S).group(1))
        assert config["news"] == {"disabled": True}
        assert config["extensionManager"]["name"] == "read-only"  # no PyPI queries for extensions
        assert Path(config["serverRoot"]) == REPO_ROOT / "notebooks"
        contents = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10).read())
        assert "cohort_overview.ipynb" in {item["name"] for item in contents["content"]}
        update = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/lab/api/update?token={token}", timeout=10).read())
        assert update["notification"] is None
        # Every socket the server listens on is on loopback.
        listening = [c.laddr for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
                     for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(address.ip in ("127.0.0.1", "::1") for address in listening), listening
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
