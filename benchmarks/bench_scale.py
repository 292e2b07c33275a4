"""Partition scale on Postgres: sensor tick, run launch, the asset page and one patient's refresh at 1,000 and 100,000 patients.

One throwaway PostgreSQL (tests/production/local_services.py) holds the Dagster instance radplan configures from
RADPLAN_DAGSTER_PG_URL. The instance grows from the small count to the large one (partitions and seeded
materializations in batches: tests/support/partition_scale.py says what is seeded and why). At each size:

- sensor tick: one tick of every sensor in ``sensors.ALL_SENSORS`` that has a tick, in the steady state the daemon
  is in (each sensor's cursor from its previous tick), right after an intake that changed one patient; the run-key
  de-duplication the daemon does is included (tests/support/inprocess.py ``InProcessDaemon.evaluate``).
- run launch: the refresh sensor's request for that patient created and submitted as the daemon does (code
  location's execution plan, ``create_run``, ``submit_run`` to the QueuedRunCoordinator).
- asset page: ``/assets/patient_features?view=partitions`` in headless Chromium (Debian's, driven by Playwright)
  against dagster-webserver on 127.0.0.1 over the same Postgres instance, timed until the partition count
  is rendered (``N Partitions`` with N the size), not until the load event.
- refresh: one real patient's EHR and notes chain up to its feature row (``REFRESH_CHAIN``) materialized
  into the instance for its partition.

What it does not grow is the lake: the refresh reads the demo's inventory and EHR extracts at both sizes, so costs
that grow with the lake are not in its ratio. One is known: a patient's ``ehr_extracts`` scans every line of the shared
extracts (ad hoc, warm, 2026-12-08: 0.57 s at 1,650 patients and 138 MiB of extracts, 5.7 s at 16,500 patients and 1.4 GiB).

Each figure is the median of ``--repeats``; ratios are large / small (target <= 2). Writes the ``scale.*`` keys of
benchmarks/results/operations.json (read-modify-write: keys written by other benchmarks are kept) and the full
rows to benchmarks/results/scale.json. The machine is shared: the load average is recorded beside every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, RESULTS_DIR, load_average, machine, merge_operations, now, result_row, write_results

MEASURES = ("sensor_tick_s", "run_launch_s", "asset_page_s", "refresh_s")
PAGE_ASSET = "patient_features"
REFRESH_CHAIN = ("ehr_extracts", "deid_ehr", "clinical_notes", "deid_notes", "note_findings", "clinical_features", "patient_features")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _ticking_sensors() -> list[str]:
    from dagster import RunStatusSensorDefinition

    from sensors import ALL_SENSORS

    return [s.name for s in ALL_SENSORS if not isinstance(s, RunStatusSensorDefinition)]


class Webserver:
    """dagster-webserver on a free loopback port over the configured instance (DAGSTER_HOME), the code location loaded."""

    def __init__(self, workdir: Path):
        from production.local_services import free_port, stop, wait_until

        self._stop = stop
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "webserver.log"
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=sink, stderr=subprocess.STDOUT)
        wait_until(self._loaded, 300, "dagster-webserver with the radplan code location", self.log)

    def _loaded(self) -> bool:
        import requests

        if self.process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited: {self.log.read_text()[-2000:]}")
        response = requests.post(f"{self.url}/graphql", json={"query": "{ assetNodes { id } }"}, timeout=10)
        return response.ok and bool((response.json().get("data") or {}).get("assetNodes"))

    def close(self) -> None:
        self._stop(self.process)


def asset_page_seconds(browser, url: str, partitions: int, repeats: int) -> tuple[list[float], list]:
    """Navigation start until the partitions view shows the partition count of this size (the page's data rendered);
    and the slowest GraphQL requests of the last load (operation, seconds from request to response end, bytes)."""
    page_url = f"{url}/assets/{PAGE_ASSET}?view=partitions"
    expected = f"{partitions:,} Partitions"
    times, graphql = [], []
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()

    def finished(request) -> None:
        if "/graphql" in request.url and request.method == "POST":
            try:
                operation = json.loads(request.post_data or "{}").get("operationName")
                size = len(request.response().body()) if request.response() else None
            except Exception:  # noqa: BLE001 - a diagnostic, never a failure
                operation, size = None, None
            timing = request.timing
            graphql.append((round((timing["responseEnd"] - timing["requestStart"]) / 1000, 3), operation, size))

    page.goto(page_url)  # warm-up: the UI bundle in the browser cache, as for a user who has the UI open
    try:
        page.get_by_text(expected, exact=False).first.wait_for(timeout=300_000)
    except Exception:
        shot = Path(tempfile.gettempdir()) / f"radplan-bench-scale-page-{partitions}.png"
        page.screenshot(path=str(shot), full_page=True)
        raise RuntimeError(f"{page_url} did not show {expected!r} (screenshot: {shot})") from None
    for repeat in range(repeats):
        page.goto("about:blank")
        if repeat == repeats - 1:
            graphql.clear()
            page.on("requestfinished", finished)
        start = time.perf_counter()
        page.goto(page_url)
        page.get_by_text(expected, exact=False).first.wait_for(timeout=300_000)
        times.append(time.perf_counter() - start)
    page.wait_for_load_state("networkidle")
    context.close()
    return times, sorted(graphql, key=lambda item: item[0], reverse=True)[:4]


def refresh_seconds(instance, resources: dict, patient_key: str, repeats: int) -> list[float]:
    from dagster import materialize

    from radplan_assets import ASSET_MODULES  # noqa: F401 - the modules the chain comes from
    from support import with_lake_io, with_upstream_sources

    chain = [_asset(name) for name in REFRESH_CHAIN]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = materialize(with_upstream_sources(chain), resources=with_lake_io(resources), instance=instance, partition_key=patient_key,
                             run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        times.append(time.perf_counter() - start)
        if not result.success:
            raise RuntimeError(f"refresh of {patient_key} failed")
    return times


def _asset(name: str):
    from dagster import load_assets_from_modules

    from radplan_assets import ASSET_MODULES

    for item in load_assets_from_modules(ASSET_MODULES):
        if any(key.to_user_string() == name for key in getattr(item, "keys", [])):
            return item
    raise KeyError(name)


def measure_size(instance, daemon, launcher, browser, webserver, resources, real_key, size: int, repeats: int) -> dict:
    from support.partition_scale import count_queries, report_intake, synthetic_patient_key

    row: dict = {"partitions": size, "load_average_before": load_average()}
    names = _ticking_sensors()
    for name in names:  # the steady state: every cursor past the history the daemon has already seen
        daemon.evaluate(name)
    ticks, launches, queries, per_sensor_runs, slow_tick, slow_launch = [], [], [], [], [], []
    for repeat in range(repeats):
        patient = synthetic_patient_key(size - 2 - repeat)  # keys 0..size-2 are seeded, beside the real one
        report_intake(instance, {patient: f"fingerprint-{size}-{repeat}"})
        per_sensor, requests = {}, []
        with count_queries(instance) as counted:
            for name in names:
                start = time.perf_counter()
                found = daemon.evaluate(name)
                per_sensor[name] = time.perf_counter() - start
                if name == "patient_refresh_sensor":
                    requests = found
        if [r.partition_key for r in requests] != [patient]:
            raise RuntimeError(f"the refresh sensor requested {[r.partition_key for r in requests]}, expected [{patient}]")
        ticks.append(sum(per_sensor.values()))
        per_sensor_runs.append(per_sensor)
        queries.append({"statements": counted.statements, "rows": counted.rows})
        slow_tick = counted.slowest(3)
        with count_queries(instance) as launch_queries:
            start = time.perf_counter()
            launcher.launch("patient_refresh_sensor", requests[0])
            launches.append(time.perf_counter() - start)
        slow_launch = launch_queries.slowest(3)
    row["sensor_tick_s"] = _median(ticks)
    row["sensor_tick_runs_s"] = [round(t, 4) for t in ticks]
    row["sensor_tick_queries"] = queries[-1]
    row["sensor_tick_per_sensor_s"] = {name: _median([run[name] for run in per_sensor_runs]) for name in names}
    # Where the time goes (last repeat): the slowest SQL statements of the tick and of the launch.
    row["sensor_tick_slowest_sql"] = slow_tick
    row["run_launch_statements"] = launch_queries.statements
    row["run_launch_slowest_sql"] = slow_launch
    row["run_launch_s"] = _median(launches)
    row["run_launch_runs_s"] = [round(t, 4) for t in launches]
    if browser is not None:
        pages, row["asset_page_slowest_graphql"] = asset_page_seconds(browser, webserver.url, size, repeats)
        row["asset_page_s"] = _median(pages)
        row["asset_page_runs_s"] = [round(t, 3) for t in pages]
    refreshes = refresh_seconds(instance, resources, real_key, repeats)
    row["refresh_s"] = _median(refreshes)
    row["refresh_runs_s"] = [round(t, 3) for t in refreshes]
    row["load_average_after"] = load_average()
    print(json.dumps(row), flush=True)
    return row


def operation_figures(small: dict, large: dict, meta: dict) -> dict:
    """This benchmark's keys of operations.json: ``scale.<N>.<measure>``, per-measure ratios and their maximum."""
    figures: dict = {}
    size_small, size_large = small["partitions"], large["partitions"]
    for row in (small, large):
        for measure in MEASURES:
            if measure in row:
                figures[f"scale.{row['partitions']}.{measure}"] = row[measure]
        figures[f"scale.{row['partitions']}.load_average"] = row["load_average_before"]
    ratios = {}
    for measure in MEASURES:
        if measure in small and measure in large and small[measure]:
            ratios[measure] = round(large[measure] / small[measure], 2)
            figures[f"scale.{size_large}.{measure.removesuffix('_s')}_ratio_to_{size_small}"] = ratios[measure]
    if ratios:
        figures[f"scale.{size_large}.ratio_to_{size_small}"] = max(ratios.values())
    figures["scale.meta"] = meta
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200 if QUICK else 1000)
    parser.add_argument("--large", type=int, default=2000 if QUICK else 100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true", help="skip the asset page (no Chromium)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_at_start = load_average()
    logging.getLogger("dagster").setLevel(logging.WARNING)

    from production.local_services import postgres_server
    from radplan.synth.generator import generate_cohort

    with tempfile.TemporaryDirectory(prefix="radplan-bench-scale-") as work:
        work_dir = Path(work)
        home = work_dir / "home"
        generate_cohort(home, 1, 7, bad_inputs=False)
        os.environ.update({"RADPLAN_HOME": str(home), "RADPLAN_DEMO": "1"})
        os.environ.pop("DAGSTER_HOME", None)
        with postgres_server() as server:
            os.environ["RADPLAN_DAGSTER_PG_URL"] = server.url
            rows, seeding = run_sizes(work_dir, home, args, server)
    small, large = rows
    meta = {"date": now(), "machine": machine(), "quick": QUICK, "repeats": args.repeats, "load_average_at_start": load_at_start,
            "shared_machine": "yes: other jobs ran beside this benchmark; the load averages say how busy it was",
            "seed_seconds": seeding, "total_seconds": round(time.perf_counter() - started, 1), "storage": "PostgreSQL (throwaway, loopback)"}
    merge_operations("scale.", operation_figures(small, large, meta), owned=lambda key: ".cohort_read." not in key)
    results = []
    for measure in MEASURES:
        if measure not in small or measure not in large:
            continue
        results.append(result_row(
            f"partition_scale_postgres_{measure.removesuffix('_s')}", radplan=large[measure], peer=small[measure], unit="s",
            ratio=round(large[measure] / small[measure], 2), runs=args.repeats, target="<= 2", lower_is_better=True,
            peer_tool=f"the same at {small['partitions']:,} partitions (radplan column: {large['partitions']:,})",
            **({"note": "Postgres instance; seeded as tests/support/partition_scale.py says; per-size rows under Details",
                "steps": rows, "seed_seconds": seeding} if not results else {})))
    write_results("scale.json", results)
    print(json.dumps({k: v for k, v in json.loads((RESULTS_DIR / 'operations.json').read_text()).items() if k.startswith('scale.') and k != 'scale.meta'}, indent=1))
    return 0


def vacuum_analyze(server) -> None:
    """What autovacuum does for a database that grew over months: fresh planner statistics after the bulk seeding
    (measured right after 200,000 inserts, the planner would still see the tables as small)."""
    connection = server.connect()
    try:
        connection.autocommit = True  # VACUUM cannot run inside a transaction
        connection.cursor().execute("VACUUM ANALYZE")
    finally:
        connection.close()


def run_sizes(work_dir: Path, home: Path, args, server) -> tuple[list[dict], dict]:
    from dagster import DagsterInstance, materialize

    from radplan_assets import ingest
    from radplan_resources import DeidKeyResource, LakeResource, LandingFolderPacs, LandingZoneResource
    from radplan_resources.instance import ensure_dagster_home
    from support import with_lake_io, with_upstream_sources
    from support.inprocess import InProcessDaemon, definitions_with
    from support.partition_scale import DaemonRunLauncher, seed_patients

    ensure_dagster_home(home)
    instance = DagsterInstance.get()
    landing = home / "landing"
    resources = {"lake": LakeResource(root=str(home / "lake")), "landing": LandingZoneResource(folder=str(landing)),
                 "pacs": LandingFolderPacs(folder=str(landing / "dicom")), "deid_key": DeidKeyResource(demo=True)}
    # The one real patient: its intake registers its partition and the inventory its chain reads.
    intake = materialize(with_upstream_sources([ingest.landing_inventory]), resources=with_lake_io(resources), instance=instance)
    assert intake.success
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    (real_key,) = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
    daemon = InProcessDaemon(definitions_with(**resources), instance)
    launcher = DaemonRunLauncher(instance)
    seeding: dict[str, float] = {}
    webserver = browser = playwright = None
    rows = []
    try:
        if not args.no_browser:
            from playwright.sync_api import sync_playwright

            webserver = Webserver(work_dir)
            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
        have = 1  # the real patient
        for size in (args.small, args.large):
            start = time.perf_counter()
            seed_patients(instance, have - 1, size - 1)  # synthetic keys 0.. beside the real one: ``size`` in all
            vacuum_analyze(server)
            seeding[str(size)] = round(time.perf_counter() - start, 1)
            have = size
            rows.append(measure_size(instance, daemon, launcher, browser, webserver, resources, real_key, size, args.repeats))
    finally:
        if browser is not None:
            browser.close()
        if playwright is not None:
            playwright.stop()
        if webserver is not None:
            webserver.close()
        launcher.close()
        instance.dispose()
    return rows, seeding


if __name__ == "__main__":
    sys.exit(main())
