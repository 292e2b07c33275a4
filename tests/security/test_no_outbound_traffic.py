"""Nothing phones home: the Dagster webserver and daemon, the MLflow UI (`make mlflow-ui`), the note
de-identification CLI and an MLflow tracking client, started the way users start them, make no DNS lookup
and no connection attempt to a non-loopback address.

Every child process loads tests/support/netaudit/sitecustomize.py (first on PYTHONPATH), whose audit hook
records such attempts in a log and refuses them. The children get the environment of the user's shell,
not the test's: the telemetry switches pytest's conftest exports and the variables by which libraries
detect a test or CI run (MLflow stays silent under PYTEST_CURRENT_TEST) are removed, so each component
must turn telemetry off through radplan's own configuration (dagster.yaml, the Makefile target, the CLI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from radplan.settings import TELEMETRY_OFF
from support.orthanc import free_port

pytestmark = [pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
NETAUDIT = REPO_ROOT / "tests" / "support" / "netaudit"
BIN = Path(sys.executable).parent
# Variables by which a library can tell it runs under a test or CI (and then keeps quiet on its own).
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD", "CIRCLECI", "TRAVIS")


def _user_environment(home: Path, log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF and k not in CI_MARKERS}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(NETAUDIT), str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RADPLAN_NET_AUDIT_LOG": str(log),
        "RADPLAN_HOME": str(home),
        "RADPLAN_DEMO": "1",
        "DAGSTER_HOME": str(home / "dagster_home"),
    })
    return env


def _recorded(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for(url: str, process: subprocess.Popen, log_file: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log_file.read_text()[-3000:]
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:  # not listening yet, or busy starting
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer; log: {log_file.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """Dagster webserver + daemon and the MLflow UI, started as a user does, with the audit hook loaded."""
    root = tmp_path_factory.mktemp("no-outbound")
    home, log = root / "home", root / "net.jsonl"
    env = _user_environment(home, log)
    subprocess.run([sys.executable, "-c", "from radplan_resources.instance import ensure_dagster_home; ensure_dagster_home()"], env=env, check=True, cwd=REPO_ROOT)
    (home / "lake" / "models").mkdir(parents=True, exist_ok=True)
    dagster_port, mlflow_port = free_port(), free_port()
    logs = {name: root / f"{name}.log" for name in ("webserver", "daemon", "mlflow")}
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(dagster_port)],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        # The Makefile target itself ("-o install": the venv is already installed).
        "mlflow": ["make", "--no-print-directory", "-o", "install", "mlflow-ui", f"MLFLOW_UI_PORT={mlflow_port}", f"VENV={BIN.parent}"],
    }
    processes = {
        name: subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=logs[name].open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        for name, command in commands.items()
    }
    try:
        dagster_url, mlflow_url = f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}"
        _wait_for(f"{dagster_url}/server_info", processes["webserver"], logs["webserver"])
        _wait_for(f"{mlflow_url}/health", processes["mlflow"], logs["mlflow"])
        yield {"dagster": dagster_url, "mlflow": mlflow_url, "env": env, "log": log, "root": root, "home": home, "processes": processes}
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def test_the_audit_hook_records_and_refuses_a_lookup(services, tmp_path):
    log = tmp_path / "control.jsonl"
    env = {**services["env"], "RADPLAN_NET_AUDIT_LOG": str(log)}
    probe = "import socket\ntry:\n    socket.getaddrinfo('example.org', 443)\nexcept OSError as e:\n    print('refused', e)\n"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "refused" in result.stdout, result.stderr
    assert [r["host"] for r in _recorded(log)] == ["example.org"]


def test_dagster_ui_shows_no_onboarding_prompt(services, tmp_path):
    dagster_yaml = (services["home"] / "dagster_home" / "dagster.yaml").read_text()
    assert "nux:\n  enabled: false" in dagster_yaml and "telemetry:\n  enabled: false" in dagster_yaml
    # The UI asks the webserver whether to show the prompt.
    answer = requests.post(f"{services['dagster']}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30).json()
    assert answer["data"]["shouldShowNux"] is False, answer
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([binary, *flags, "--virtual-time-budget=20000", "--window-size=1400,900", "--dump-dom", f"{services['dagster']}/overview"],
                         capture_output=True, text=True, timeout=180).stdout
    assert "<html" in dom.lower() and "dagster" in dom.lower()
    assert "Join the Dagster community" not in dom


def test_no_process_phones_home(services, tmp_path):
    env, root = services["env"], services["root"]
    # Load the code location in the webserver (its code server is a child process with the hook too).
    query = {"query": "{ assetNodes { groupName } }"}
    deadline = time.monotonic() + 400
    nodes, answer = [], None
    while time.monotonic() < deadline and not nodes:
        try:
            answer = requests.post(f"{services['dagster']}/graphql", json=query, timeout=60).json()
            nodes = (answer.get("data") or {}).get("assetNodes") or []
        except requests.RequestException as error:  # the webserver is busy loading the location
            answer = repr(error)
        time.sleep(2)
    locations = requests.post(f"{services['dagster']}/graphql", timeout=60, json={"query": (
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError "
        "{ __typename ... on PythonError { message } } } } } }")}).json()
    webserver_log = (root / "webserver.log").read_text(errors="replace")[-3000:]
    assert nodes, f"the code location did not load: {answer}; {locations}; recorded {_recorded(services['log'])}; {webserver_log}"
    # The MLflow UI: its pages and the endpoint its front end asks about telemetry.
    assert requests.get(f"{services['mlflow']}/", timeout=30).ok
    requests.get(f"{services['mlflow']}/ajax-api/3.0/mlflow/ui-telemetry", timeout=30)
    # A small piece of the pipeline: note de-identification through the CLI, and an MLflow run logged the
    # way the training assets log theirs.
    notes = root / "notes.jsonl"
    notes.write_text(json.dumps({"id": "n1", "text": "Dr. Ruth Okafor saw Pt J.S. on 03/04/2021; e-mail js@example.org, www.example.org."}) + "\n")
    cli = subprocess.run([sys.executable, "-m", "radplan_cli.main", "deid-text", str(notes), str(root / "out.jsonl")],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    tracking = (
        "import definitions\n"  # applies radplan's process settings, as every code location load does
        "from radplan.models.registry import mlflow_client\n"
        f"client = mlflow_client('sqlite:///{services['home']}/lake/models/mlflow.db', r'{root / 'artifacts'}', ('radplan-no-outbound',))\n"
        "run = client.create_run(client.get_experiment_by_name('radplan-no-outbound').experiment_id)\n"
        "client.log_metric(run.info.run_id, 'dice', 0.5)\nclient.set_terminated(run.info.run_id)\n"
    )
    run = subprocess.run([sys.executable, "-c", tracking], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    time.sleep(12)  # MLflow's telemetry client sends in batches every 10 s: give a sender the time to try
    for name, process in services["processes"].items():
        assert process.poll() is None, f"{name} exited"
    recorded = _recorded(services["log"])
    assert recorded == [], recorded
