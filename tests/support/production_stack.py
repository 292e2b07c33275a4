"""The production path started for real, for tests and benchmarks: a Postgres-backed Dagster instance,
``dagster-daemon`` and ``dagster-webserver`` as processes, Orthanc as the PACS, ``storescu`` as the modality.

    with production_stack(home) as stack:          # Postgres, Orthanc, dagster.yaml, daemon, webserver
        stack.rebaseline_on_orthanc()              # once, on a home materialized with the landing-folder PACS
        stack.start_sensors(CHAIN_SENSORS)         # the operator turns the sensors on (GraphQL, as the UI does)
        stack.orthanc.store(files)                 # a modality sends a study

Everything binds to 127.0.0.1 with telemetry off; processes are stopped by the process groups this module
started. The code location runs as its own gRPC server (``dagster code-server start``), as in a production
deployment; the daemon and webserver load it from there, and run workers are its children. Logs are kept under ``home/logs``; when the block fails, their tails are printed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
LOCATION = "radplan"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object
# The sensors on a new study's path: PACS -> intake -> patient refresh -> patient export.
CHAIN_SENSORS = ("pacs_study_sensor", "patient_refresh_sensor", "patient_export_sensor", "missed_retry_sensor")


def _dagster_command(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class ProductionStack:
    home: Path
    postgres: object  # production.local_services.PostgresServer
    orthanc: object  # support.orthanc.OrthancServer
    env: dict[str, str]
    webserver_port: int
    code_server_port: int
    code_server: subprocess.Popen | None = None
    daemon: subprocess.Popen | None = None
    webserver: subprocess.Popen | None = None
    process_groups: list[int] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.webserver_port}"

    # ---- processes ----------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as sink:
            # Its own session: the process group holds its code server and run workers, for the final cleanup.
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        self.process_groups.append(process.pid)
        return process

    @property
    def workspace(self) -> Path:
        return self.home / "workspace.yaml"

    def start_code_server(self, timeout_s: float = 900) -> None:
        """The code location as its own gRPC server, as in production: the daemon and the webserver load it from there
        (no code server of their own that a missed heartbeat on a loaded host shuts down), and runs are its children."""
        from production.local_services import wait_until

        self.code_server = self._spawn("code_server", [_dagster_command("dagster"), "code-server", "start", "-m", "definitions",
                                                       "-h", "127.0.0.1", "-p", str(self.code_server_port)])  # fmt: skip
        self.workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {self.code_server_port}\n      location_name: {LOCATION}\n"
        )
        wait_until(lambda: self._code_server_answers(), timeout_s, "the radplan code server", self.logs / "code_server.log")

    def _code_server_answers(self) -> bool:
        from dagster._grpc.client import DagsterGrpcClient

        if self.code_server.poll() is not None:
            raise RuntimeError("the code server exited:\n" + self.log_tail("code_server"))
        try:
            DagsterGrpcClient(port=self.code_server_port, host="127.0.0.1").ping("")
            return True
        except Exception:  # noqa: BLE001 - not listening yet (DagsterUserCodeUnreachableError and kin)
            return False

    def start_daemon(self) -> None:
        self.daemon = self._spawn("daemon", [_dagster_command("dagster-daemon"), "run", "-w", str(self.workspace)])

    def kill_daemon(self) -> None:
        """kill -9 of the daemon process (the code server and its run workers are other processes: they go on)."""
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait()

    def start_webserver(self, timeout_s: float = 240) -> None:
        from production.local_services import wait_until

        self.webserver = self._spawn("webserver", [_dagster_command("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.webserver_port),
                                                   "-w", str(self.workspace)])  # fmt: skip
        wait_until(lambda: self._location_loaded(), timeout_s, "dagster-webserver with the radplan code location", self.logs / "webserver.log")

    def _location_loaded(self) -> bool:
        if self.webserver.poll() is not None:
            raise RuntimeError("dagster-webserver exited:\n" + self.log_tail("webserver"))
        try:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                "locationOrLoadError { __typename } } } } }")  # fmt: skip
        except OSError:
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                   for e in entries)  # fmt: skip

    def stop(self) -> None:
        for process in (self.webserver, self.daemon, self.code_server):
            if process is not None and process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in (self.webserver, self.daemon, self.code_server):
            if process is not None:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for group in self.process_groups:  # whatever is left: code servers and run workers of killed daemons
            _signal_group(group, signal.SIGKILL)
        for process in (self.webserver, self.daemon, self.code_server):
            if process is not None and process.poll() is None:
                process.wait()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # ---- the operator's side: GraphQL, as the UI uses it -----------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.webserver_url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            # No retry: after a Postgres restart the webserver's pooled connections are replaced, not failed
            # (radplan_resources/instance_storage.py), so an HTTP 500 here is a defect the fault test must show.
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"GraphQL HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from error
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    @staticmethod
    def _sensor_selector(name: str) -> dict:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}

    def start_sensors(self, names) -> None:
        for name in names:
            data = self.graphql(
                "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename "
                "... on Sensor { sensorState { status } } ... on PythonError { message } } }", {"s": self._sensor_selector(name)},
            )  # fmt: skip
            answer = data["startSensor"]
            if answer["__typename"] != "Sensor" or answer["sensorState"]["status"] != "RUNNING":
                raise RuntimeError(f"could not start {name}: {answer}")

    def set_sensor_cursor(self, name: str, cursor: str) -> None:
        data = self.graphql(
            "mutation($s: SensorSelector!, $c: String) { setSensorCursor(sensorSelector: $s, cursor: $c) { __typename "
            "... on PythonError { message } } }", {"s": self._sensor_selector(name), "c": cursor},
        )  # fmt: skip
        if data["setSensorCursor"]["__typename"] != "Sensor":
            raise RuntimeError(f"could not set the cursor of {name}: {data}")

    def sensor_ticks(self, name: str, limit: int = 100) -> list[dict]:
        """The sensor's latest ticks, newest first: status, skip reason, error message (what the UI's tick list shows)."""
        data = self.graphql(
            "query($s: SensorSelector!, $n: Int) { sensorOrError(sensorSelector: $s) { __typename ... on Sensor { sensorState { "
            "ticks(limit: $n) { status timestamp skipReason error { message } } } } } }", {"s": self._sensor_selector(name), "n": limit},
        )  # fmt: skip
        return data["sensorOrError"]["sensorState"]["ticks"]

    def launch_job(self, job_name: str) -> str:
        """Launch a job as the UI's Launchpad does (through the run queue); returns the run id."""
        data = self.graphql(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename "
            "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
            {"p": {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job_name}, "runConfigData": {}}},
        )  # fmt: skip
        answer = data["launchRun"]
        if answer["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"could not launch {job_name}: {answer}")
        return answer["run"]["runId"]

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of a run's event log, as the run page of the UI lists them."""
        data = self.graphql(
            "query($r: ID!) { logsForRun(runId: $r) { __typename ... on EventConnection { events { __typename "
            "... on MessageEvent { message } } } } }", {"r": run_id},
        )  # fmt: skip
        return [event.get("message") or "" for event in data["logsForRun"]["events"]]

    # ---- the instance, read by this process (same dagster.yaml, same Postgres) --------------------------------

    @contextmanager
    def instance(self):
        from dagster import DagsterInstance

        with DagsterInstance.from_config(self.env["DAGSTER_HOME"]) as instance:
            yield instance

    def lake_table(self, zone: str, table: str):
        from radplan_resources import LakeResource

        return LakeResource(root=str(self.home / "lake")).read_table(zone, table)

    def wait_for_runs(self, timeout_s: float, done) -> None:
        """Wait until ``done(runs)`` holds for the instance's runs (checked every 2 s); the daemon log tail on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.instance() as instance:
                if done(instance.get_runs()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs not done within {timeout_s:.0f} s\n" + self.log_tail("daemon"))
            time.sleep(2)

    def rebaseline_on_orthanc(self, timeout_s: float = 300) -> int:
        """Once, when a home materialized with the landing-folder PACS moves to Orthanc: one intake run lists the
        studies by their Orthanc addresses, and the patient refresh sensor starts after it (the move changed
        where studies are read from, not what any patient holds). Returns that intake's storage id."""
        from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus

        run_id = self.launch_job("ingest_job")
        self.wait_for_runs(timeout_s, lambda runs: any(r.run_id == run_id and r.is_finished for r in runs))
        with self.instance() as instance:
            run = instance.get_run_by_id(run_id)
            if run.status != DagsterRunStatus.SUCCESS:
                raise RuntimeError(f"re-baseline intake {run.status}:\n" + "\n".join(self.run_messages(run_id)[-20:]))
            (record,) = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("landing_inventory")), limit=1).records
            storage_id = record.storage_id
        self.set_sensor_cursor("patient_refresh_sensor", json.dumps({"inventory_storage_id": storage_id}))
        return storage_id


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def copy_materialized_home(source: Path, home: Path) -> None:
    """A materialized home (``radplan demo``'s) without its Dagster instance: the stack brings a Postgres one."""
    shutil.copytree(source, home, symlinks=True, ignore=shutil.ignore_patterns("dagster_home", "logs", "orthanc"))


@contextmanager
def production_stack(home: Path, *, orthanc_stable_age_s: int = 1, extra_env: dict[str, str] | None = None,
                     webserver: bool = True) -> Iterator[ProductionStack]:  # fmt: skip
    """Postgres, Orthanc, the dagster.yaml for them, dagster-daemon and dagster-webserver, all on loopback."""
    from production.local_services import free_port, postgres_server, require
    from radplan.settings import TELEMETRY_OFF
    from radplan_resources.instance import PG_URL_ENV, dagster_yaml
    from support.orthanc import OrthancServer

    require(shutil.which("storescu") is not None, "dcmtk's storescu is not installed (Debian dcmtk)")
    require(shutil.which("Orthanc") is not None or Path("/usr/sbin/Orthanc").exists(), "Orthanc is not installed (Debian orthanc)")
    home = home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with postgres_server() as postgres:
        orthanc = OrthancServer(home / "orthanc", stable_age_s=orthanc_stable_age_s).start()
        dagster_home = home / "dagster_home"
        dagster_home.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "RADPLAN_HOME": str(home),
            "RADPLAN_DEMO": "1",
            "RADPLAN_ORTHANC_URL": orthanc.url,
            PG_URL_ENV: postgres.url,
            "DAGSTER_HOME": str(dagster_home),
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            **TELEMETRY_OFF,
            **(extra_env or {}),
        }
        (dagster_home / "dagster.yaml").write_text(dagster_yaml(env))
        # This process reads the same instance (its dagster.yaml names the Postgres URL's variable).
        saved = {name: os.environ.get(name) for name in (PG_URL_ENV, "DAGSTER_HOME")}
        os.environ.update({PG_URL_ENV: postgres.url, "DAGSTER_HOME": str(dagster_home)})
        stack = ProductionStack(home=home, postgres=postgres, orthanc=orthanc, env=env, webserver_port=free_port(), code_server_port=free_port())
        try:
            stack.start_code_server()
            stack.start_daemon()
            if webserver:
                stack.start_webserver()
            yield stack
        except BaseException:
            for name in ("code_server", "daemon", "webserver"):
                print(f"---- {name}.log (tail) ----\n{stack.log_tail(name)}", file=sys.stderr)
            raise
        finally:
            stack.stop()
            orthanc.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# ---- what the runs say: which intake covered which study, which refresh and export followed -------------------

RUN_KEY_TAG = "dagster/run_key"
PARTITION_TAG = "dagster/partition"
PARENT_RUN_TAG = "dagster/parent_run_id"  # set on a run retry


def stable_study_changes(orthanc) -> dict[str, int]:
    """Orthanc study id -> sequence number of its StableStudy change (the newest, if it became stable twice)."""
    import requests

    changes = requests.get(f"{orthanc.url}/changes", params={"since": 0, "limit": 100000}, timeout=30).json()["Changes"]
    return {change["ID"]: change["Seq"] for change in changes if change["ChangeType"] == "StableStudy"}


def study_patient_ids(orthanc) -> dict[str, str]:
    """Orthanc study id -> PatientID (PHI: for the test's own bookkeeping, never logged)."""
    import requests

    studies = requests.get(f"{orthanc.url}/studies", params={"expand": ""}, timeout=30).json()
    return {study["ID"]: study["PatientMainDicomTags"].get("PatientID", "") for study in studies}


def intake_range(record) -> tuple[int, int] | None:
    """The change-feed range (first, last) an intake run of the PACS sensor covered, from its run key."""
    key = record.dagster_run.tags.get(RUN_KEY_TAG, "")
    parts = key.rsplit("-", 2)
    if not key.startswith("pacs-changes-") or key.startswith("pacs-changes-restart-"):
        return None
    return int(parts[-2]), int(parts[-1])


def successful(records, job_name: str) -> list:
    from dagster import DagsterRunStatus

    return sorted((r for r in records if r.dagster_run.job_name == job_name and r.dagster_run.status == DagsterRunStatus.SUCCESS),
                  key=lambda r: r.create_timestamp.timestamp())  # fmt: skip


def request_key(record) -> str | None:
    """The run key of the sensor request a run carries out: its own, or for a rerun by missed_retry_sensor the key of
    the run it redoes (sensors/retries.py)."""
    tags = record.dagster_run.tags
    return tags.get("radplan/retried_run_key") or tags.get(RUN_KEY_TAG)


def study_chain(records, seq: int, patient_key: str, fingerprint: str | None, report_at) -> dict | None:
    """For one stable study: the intake that covered its change, the refresh of the patient's final inputs (which ends
    with the patient's report; ``report_at``: when it was written), the first export of the recommendations table after
    that report (run records), or None while the chain is incomplete.

    The refresh is the first successful one that started after the intake, or, if there is none, the one whose run key
    names the patient's current input fingerprint. An intake rescans the whole PACS, so an intake triggered by another
    study can pull a study that was complete but not yet stable; the intake of its StableStudy change then changes
    nothing, and the refresh of those inputs started before it (seen in CI: the test waited for a refresh that had
    no reason to run)."""
    intake = next((r for r in successful(records, "ingest_job") if (span := intake_range(r)) and span[0] <= seq <= span[1]), None)
    if intake is None:
        return None
    refreshes = [r for r in successful(records, "patient_refresh_job") if r.dagster_run.tags.get(PARTITION_TAG) == patient_key]
    refresh = next((r for r in refreshes if r.start_time and r.start_time >= intake.end_time), None)
    if refresh is None and fingerprint is not None:
        refresh = next((r for r in refreshes if request_key(r) == f"patient-refresh-{patient_key}-{fingerprint}"), None)
    if refresh is None:
        return None
    # The refresh wrote the patient's report (``report_at``: run id -> when); the recommendations table is rewritten by
    # the first export run that starts after it, which may start before the refresh run ends (its last checks run after
    # the report).
    report = report_at(refresh.dagster_run.run_id)
    if report is None:
        return None
    export = next((r for r in successful(records, "export_job") if r.start_time and r.start_time >= report), None)
    if export is None:
        return None
    return {"intake": intake, "refresh": refresh, "report_at": report, "export": export}


def report_written_at(instance, run_id: str) -> float | None:
    """When a patient refresh run materialized the patient's report (FHIR bundle and HTML, asset patient_report)."""
    from dagster import AssetKey, DagsterEventType

    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return next((event.timestamp for event in events if event.dagster_event.asset_key == AssetKey("patient_report")), None)


def patient_fingerprints(stack: ProductionStack) -> dict[str, str]:
    """Patient key -> the fingerprint of its inputs in the lake now (what its refresh run key ends with)."""
    try:
        table = stack.lake_table("raw", "inventory_patient_fingerprints")
    except FileNotFoundError:
        return {}
    return dict(zip(table["patient_key"], table["fingerprint"]))


def chains_complete(stack: ProductionStack, studies: dict[str, str], timeout_s: float) -> dict[str, dict]:
    """Wait until every study (Orthanc id -> patient key) is stable, covered by an intake, its patient's final inputs
    refreshed (its report written) and the recommendations table exported after that, and no run is queued or running;
    returns study id -> its chain (run records)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if stack.daemon is not None and stack.daemon.poll() is not None:
            # Nothing would ever be launched again: say so now rather than at the timeout.
            raise RuntimeError(f"dagster-daemon exited (code {stack.daemon.returncode}) while studies were in flight\n" + stack.log_tail("daemon"))
        stable = stable_study_changes(stack.orthanc)
        with stack.instance() as instance:
            records = instance.get_run_records()
            report_at = functools.cache(functools.partial(report_written_at, instance))
            chains = {study: study_chain(records, stable[study], key, None, report_at) for study, key in studies.items() if study in stable}
            if not all(chains.values()) and all(r.dagster_run.is_finished for r in records):
                # Nothing is running: is an incomplete chain's patient already refreshed on its final inputs? (read after
                # the runs, so every finished intake has written its fingerprints; read rarely, each read is audited)
                fingerprints = patient_fingerprints(stack)
                chains = {study: study_chain(records, stable[study], key, fingerprints.get(key), report_at)
                          for study, key in studies.items() if study in stable}  # fmt: skip
        if len(chains) == len(studies) and all(chains.values()) and all(r.dagster_run.is_finished for r in records):
            return chains
        if time.monotonic() > deadline:
            missing = sum(1 for study in studies if not chains.get(study))
            in_flight = [(r.dagster_run.job_name, str(r.dagster_run.status)) for r in records if not r.dagster_run.is_finished]
            raise TimeoutError(f"{missing} of {len(studies)} studies not through the chain in {timeout_s:.0f} s; in flight: {in_flight}\n"
                               + stack.log_tail("daemon"))  # fmt: skip
        time.sleep(2)


def send_concurrently(orthanc, studies: list[list[Path]]) -> None:
    """Every study by its own storescu process at the same time, as several modalities would."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(studies)) as pool:
        list(pool.map(orthanc.store, studies))
