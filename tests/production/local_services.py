"""Production services started for real on loopback, one per test: moto's S3 server, PostgreSQL, Spark standalone.

Each helper starts its service on free ports in a temporary folder, waits until it answers, and stops it (by
the process it started) afterwards. A missing binary skips the test locally and fails it under CI (``CI`` set):
the Makefile installs the Debian packages, so CI must never silently skip.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(available: bool, reason: str) -> None:
    """Skip with the reason locally; fail under CI, where the Makefile has installed everything."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the Makefile's system-deps must install it)")
    pytest.skip(reason)


def wait_until(check, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s\n{tail}")


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# ---- S3 (moto server mode: a real HTTP endpoint speaking the S3 REST API) -----------------------------------

@contextmanager
def moto_s3_server(workdir: Path) -> Iterator[str]:
    if importlib.util.find_spec("moto") is None:
        pytest.fail("moto[s3] is not installed: pip install -r requirements/lock.txt (a Python pin, never skipped)")
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/moto-api/", timeout=2).status == 200, 60, "moto S3 server", log)
        yield url
    finally:
        stop(process)


# ---- PostgreSQL (Debian's server binaries, a throwaway cluster) --------------------------------------------

@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    # The cluster's folder (data/, postgres.log): what kill_postgres and start_postgres act on.
    folder: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self, database: str | None = None):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=database or self.database)


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    binaries = postgres_bin()
    require(binaries is not None, "Debian package postgresql is not installed (/usr/lib/postgresql/*/bin/initdb)")
    # initdb refuses to run as root: as root (CI containers) the cluster belongs to the unprivileged 'nobody'.
    as_user = _postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="radplan-pg-"))
    if as_user:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    server = PostgresServer(host="127.0.0.1", port=free_port(), user="radplan", password=os.urandom(12).hex(), database="dagster", folder=folder)
    password_file = folder / "pwfile"
    password_file.write_text(server.password + "\n")
    if as_user:
        os.chown(password_file, nobody.pw_uid, nobody.pw_gid)
    data = folder / "data"

    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", server.user, f"--pwfile={password_file}",
                        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-locale"],
                       check=True, capture_output=True, cwd=folder)  # fmt: skip
        start_postgres(server)
        connection = server.connect("postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            connection.cursor().execute(f"CREATE DATABASE {server.database}")
        finally:
            connection.close()
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def _postgres_user() -> list[str]:
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


def start_postgres(server: PostgresServer) -> None:
    """Start (or, after kill_postgres, restart: crash recovery) the cluster in ``server.folder`` on its port."""
    folder = server.folder
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder}"
    command = [*_postgres_user(), str(postgres_bin() / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "postgres.log"),
               "-o", options, "-w", "-t", "60", "start"]  # fmt: skip
    # After a SIGKILLed postmaster, its backends hold the shared memory until they notice (a second or so): retry.
    for attempt in range(20):
        result = subprocess.run(command, capture_output=True, cwd=folder)
        if result.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"pg_ctl start failed: {result.stderr.decode(errors='replace')[-1000:]}")


def kill_postgres(server: PostgresServer) -> None:
    """SIGKILL the postmaster, the way a lost database host looks to clients; its backends exit on their own."""
    pid = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, 9)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the killed postmaster to go")


# ---- Spark standalone (the master and worker classes shipped inside the pyspark wheel) ---------------------

@dataclass(frozen=True)
class SparkStandalone:
    master_url: str
    webui_url: str

    def state(self) -> dict:
        return http_json(f"{self.webui_url}/json/")


@contextmanager
def spark_standalone(workdir: Path) -> Iterator[SparkStandalone]:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    spark_class = spark_home / "bin" / "spark-class"
    require(shutil.which("java") is not None, "Java is not installed (Debian default-jre-headless)")
    require(spark_class.exists(), "pyspark ships no bin/spark-class")
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(workdir),
           "SPARK_NO_DAEMONIZE": "1", "PYSPARK_PYTHON": sys.executable}
    master_port, master_ui, worker_ui = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    processes: list[subprocess.Popen] = []
    logs = {name: workdir / f"spark-{name}.log" for name in ("master", "worker")}
    try:
        with open(logs["master"], "wb") as sink:
            processes.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port),
                 "--webui-port", str(master_ui)], env=env, stdout=sink, stderr=subprocess.STDOUT))
        cluster = SparkStandalone(master_url=master_url, webui_url=f"http://127.0.0.1:{master_ui}")
        wait_until(lambda: cluster.state()["status"] == "ALIVE", 120, "Spark master", logs["master"])
        (workdir / "spark-work").mkdir(exist_ok=True)
        with open(logs["worker"], "wb") as sink:
            processes.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--webui-port", str(worker_ui),
                 "-c", "1", "-m", "1g", "--work-dir", str(workdir / "spark-work"), master_url], env=env, stdout=sink, stderr=subprocess.STDOUT))
        wait_until(lambda: cluster.state()["aliveworkers"] >= 1, 120, "Spark worker", logs["worker"])
        yield cluster
    finally:
        for process in reversed(processes):
            stop(process)
