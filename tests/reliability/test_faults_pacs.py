"""The PACS fails for real: nothing listening, a slow or 5xx-answering server, Orthanc killed mid-fetch.

OrthancPacs retries transient failures (refused, timeout, cut-off body, 5xx/429) with exponential
backoff, then raises PacsUnavailableError naming the URL without credentials and the attempts; a 4xx
fails at once. The pacs_studies asset adds Dagster step retries, and a failed fetch leaves the previous
study folder in the lake and no staging folder.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import pytest
import requests

from radplan.errors import PacsUnavailableError
from radplan_resources import OrthancPacs
from reliability_helpers import HELPERS, REPO_ROOT, stage_env, staging_leftovers
from support.orthanc import free_port

SECRET = "s3cret-pw-7f2a"
STS_CT = Path("imaging") / "ibsi_sts_002" / "dicom" / "CT" / "image"


class FaultProxy:
    """A real HTTP server in a thread in front of a real Orthanc, misbehaving as told per request path.

    ``plan[path]`` is a queue of faults for the next requests of that path: "503", "slow" (answers after
    ``slow_s``), "drop" (closes the connection without answering), "cut" (sends half the body and closes).
    When a path's queue is empty, requests are forwarded unchanged.
    """

    def __init__(self, upstream: str, slow_s: float = 2.0):
        self.upstream = upstream
        self.slow_s = slow_s
        self.plan: dict[str, deque[str]] = defaultdict(deque)
        self.hits: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with proxy.lock:
                    proxy.hits[path] += 1
                    fault = proxy.plan[path].popleft() if proxy.plan[path] else None
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                upstream = requests.get(proxy.upstream + self.path, timeout=30)
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(upstream.content[: len(upstream.content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(upstream.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a "slow" answer: that is the point

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pacs_not_running_fails_clearly_after_the_retry_limit():
    port = free_port()  # bound and released: nothing listens there
    pacs = OrthancPacs(url=f"http://radplan:{SECRET}@127.0.0.1:{port}", max_retries=3, backoff_s=0.05)
    started = time.perf_counter()
    with pytest.raises(PacsUnavailableError) as failure:
        pacs.list_studies()
    elapsed = time.perf_counter() - started
    assert failure.value.attempts == 4
    message = str(failure.value)
    assert f"http://127.0.0.1:{port}" in message and "4 attempts" in message and "ConnectionError" in message
    assert SECRET not in message and "radplan:" not in message
    # Three backoff waits of at least half of 0.05, 0.1 and 0.2 s: it did wait, and not for long.
    assert 0.17 <= elapsed < 5, elapsed


@pytest.mark.orthanc
def test_slow_and_failing_pacs_is_retried_until_it_answers(orthanc, shared_data, tmp_path):
    ct_files = sorted((shared_data / STS_CT).glob("*.dcm"))
    orthanc.store(ct_files)
    direct = OrthancPacs(url=orthanc.url)
    (study,), _ = direct.list_studies()
    expected = [p.read_bytes() for p in direct.fetch_study(study, tmp_path / "direct")]

    with FaultProxy(orthanc.url, slow_s=1.5) as proxy:
        instances = requests.get(f"{orthanc.url}/studies/{study.study_ref}/instances", timeout=10).json()
        first_file = f"/instances/{sorted(i['ID'] for i in instances)[0]}/file"
        proxy.plan["/studies"].extend(["503", "slow", "drop"])
        proxy.plan[first_file].extend(["cut", "503"])
        pacs = OrthancPacs(url=proxy.url, timeout_s=0.5, max_retries=3, backoff_s=0.05)
        started = time.perf_counter()
        (through_proxy,), _ = pacs.list_studies()
        listed_s = time.perf_counter() - started
        fetched = pacs.fetch_study(through_proxy, tmp_path / "proxied")
        total_s = time.perf_counter() - started

    assert proxy.hits["/studies"] == 4  # 503, timeout, dropped connection, then the answer
    assert proxy.hits[first_file] == 3  # body cut off, 503, then the file
    assert through_proxy == study
    assert [p.read_bytes() for p in fetched] == expected
    assert not [p for p in (tmp_path / "proxied").iterdir() if p.name.startswith(".")]
    print(f"\nrecovered: listing after {listed_s:.2f} s, {len(fetched)} instances after {total_s:.2f} s")


@pytest.mark.orthanc
def test_pacs_answering_5xx_past_the_limit_fails_after_exactly_the_configured_attempts(orthanc):
    with FaultProxy(orthanc.url) as proxy:
        proxy.plan["/studies"].extend(["503"] * 10)
        pacs = OrthancPacs(url=proxy.url, max_retries=2, backoff_s=0.05)
        with pytest.raises(PacsUnavailableError, match=r"after 3 attempts \(last error: HTTP 503\)"):
            pacs.list_studies()
        assert proxy.hits["/studies"] == 3


@pytest.mark.orthanc
def test_a_client_error_is_not_retried(orthanc):
    with FaultProxy(orthanc.url) as proxy:
        pacs = OrthancPacs(url=proxy.url, max_retries=3, backoff_s=0.05)
        with pytest.raises(requests.HTTPError, match="answered HTTP 404") as failure:
            pacs.study_location("no-such-study")
        assert proxy.hits["/studies/no-such-study"] == 1
        assert "no-such-study" not in str(failure.value)


def _pacs_studies_run(home: Path, url: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPERS), "--orthanc", url], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _outcome(process: subprocess.Popen, timeout: float = 300) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.orthanc
@pytest.mark.slow
def test_orthanc_killed_mid_fetch_fails_cleanly_and_keeps_the_previous_study(orthanc, shared_data, tmp_path):
    ct_files = sorted((shared_data / STS_CT).glob("*.dcm"))
    orthanc.store(ct_files)
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    env = stage_env(home, RADPLAN_PACS_RETRY_DELAY_S="0.2")
    url = f"http://radplan:{SECRET}@127.0.0.1:{orthanc.http_port}"

    first = _outcome(_pacs_studies_run(home, url, env))
    assert first["success"], first
    study_dir = home / "lake" / "raw" / "dicom" / first["partition"]
    before = {p.relative_to(study_dir): p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    assert len(before) == len(ct_files)

    # Second materialization: kill Orthanc (SIGKILL) once the fetch has written part of the study.
    started = time.perf_counter()
    process = _pacs_studies_run(home, url, env)
    seen = 0
    while process.poll() is None and seen < 8:
        seen = len(list(study_dir.parent.glob(f".{first['partition']}.*/*/*.dcm")))
        time.sleep(0.002)
    orthanc.process.kill()
    orthanc.process.wait()
    killed_s = time.perf_counter() - started
    second = _outcome(process)
    failed_s = time.perf_counter() - started

    assert 8 <= seen < len(ct_files), f"the kill came at {seen} of {len(ct_files)} instances, not mid-fetch"
    assert not second["success"]
    assert second["step_retries"] == 3  # the asset's RetryPolicy ran the step three more times
    assert "PacsUnavailableError" in second["error_classes"], second
    assert f"http://127.0.0.1:{orthanc.http_port}" in second["error_message"] and "3 attempts" in second["error_message"]
    after = {p.relative_to(study_dir): p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    assert after == before  # the previous version, whole
    assert staging_leftovers(home) == []
    # The credentials in the URL never reached Dagster's storage (event log, run storage).
    storage = b"".join(p.read_bytes() for p in (home / "dagster_home").rglob("*") if p.is_file())
    assert SECRET.encode() not in storage
    print(f"\nOrthanc killed {killed_s:.2f} s after the run started, at {seen}/{len(ct_files)} instances; "
          f"clean failure after {failed_s:.2f} s (4 step attempts x 3 requests)")
