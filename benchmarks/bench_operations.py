"""The production path under a burst, timed: dagster-daemon's own ticks, runs launched as processes, Postgres storage.

Setup (not timed): a materialized demo home (``radplan demo``, 12 patients, or ``--demo-home``) is moved onto
the production stack of tests/support/production_stack.py (Postgres-backed instance, dagster-daemon and
dagster-webserver processes, Orthanc as the PACS), and the sensor chain is turned on through GraphQL. Then:

1. burst: the studies of ``--patients`` new patients (plus follow-ups up to ``--studies`` studies) are sent
   at once, one storescu process per study;
2. single study: ``--single`` follow-up studies, one at a time, each after the previous one is exported.

Latency of a study = from "stable in Orthanc" (the StableStudy change, seen by a 0.25 s poller of the change
feed) to its patient's FHIR bundle and report written by the patient's refresh run (the patient_report
materialization); ``*_table_*`` figures run on to the end of the export run that rewrote the cohort's
recommendations table after it. Figures are
merged into benchmarks/results/operations.json (keys ``daemon.*``; other keys, e.g. ``scale.*``, are kept).

    python benchmarks/bench_operations.py [--patients 20 --studies 50 --single 3] [--demo-home DIR] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "tests")]

from _common import QUICK, RESULTS_DIR, load_average, machine, merge_operations, now  # noqa: E402

RESULTS = RESULTS_DIR / "operations.json"
DEMO_PATIENTS, DEMO_SEED = 12, 11  # tests/support/demo.py: enough outcomes of each class for the response model


class StableStudyClock(threading.Thread):
    """Polls Orthanc's change feed and notes when each study's StableStudy change first appears (wall clock)."""

    def __init__(self, url: str, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.period_s, self.seen, self.since = url, period_s, {}, 0
        self.halt = threading.Event()
        self.since = self._page(0, 100000)["Last"]  # what is already there is not part of the measurement

    def _page(self, since: int, limit: int) -> dict:
        import requests

        return requests.get(f"{self.url}/changes", params={"since": since, "limit": limit}, timeout=10).json()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                page = self._page(self.since, 1000)
            except OSError:
                time.sleep(self.period_s)
                continue
            stamp = time.time()
            for change in page["Changes"]:
                if change["ChangeType"] == "StableStudy":
                    self.seen.setdefault(change["ID"], stamp)
            self.since = page["Last"]
            if page["Done"]:
                time.sleep(self.period_s)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))], 1)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def _study_files(home: Path, patients: range, studies_wanted: int) -> list[list[Path]]:
    from support.arrivals import add_follow_up_study, add_new_patient

    studies: list[list[Path]] = []
    for index in patients:
        by_folder: dict[Path, list[Path]] = {}
        for path in add_new_patient(home / "landing", index, seed=DEMO_SEED):
            by_folder.setdefault(path.parent, []).append(path)
        studies += by_folder.values()
    follow_up = 1
    while len(studies) < studies_wanted:  # follow-ups, round robin over the new patients
        for index in patients:
            if len(studies) >= studies_wanted:
                break
            studies.append(add_follow_up_study(home / "landing", index, seed=DEMO_SEED, follow_up=follow_up))
        follow_up += 1
    return studies


def _latencies(stack, clock: StableStudyClock, sent: dict[str, str], timeout_s: float) -> tuple[list[float], list[float], dict]:
    """Per study: seconds from stable to its patient's report written (in the refresh run), and to the recommendations
    table rewritten (the export run after it); the median of each hop."""
    from support.production_stack import chains_complete

    chains = chains_complete(stack, sent, timeout_s)
    to_report, to_table = [], []
    hops = {"stable_to_intake_end": [], "intake_end_to_report": [], "report_to_table_export_end": []}
    for study, chain in chains.items():
        stable, report = clock.seen[study], chain["report_at"]
        to_report.append(report - stable)
        to_table.append(chain["export"].end_time - stable)
        hops["stable_to_intake_end"].append(chain["intake"].end_time - stable)
        # 0 where the refresh of the study's inputs had already run: an earlier intake (a whole-PACS rescan) pulled it
        hops["intake_end_to_report"].append(max(0.0, report - chain["intake"].end_time))
        hops["report_to_table_export_end"].append(chain["export"].end_time - report)
    return to_report, to_table, {name: _median(values) for name, values in hops.items()}


def _run_costs(stack, after: float) -> dict:
    """Per job, median seconds from run creation (queued) to RUN_START (launched, code location imported) and
    from RUN_START to the end: where a hop's time goes."""
    with stack.instance() as instance:
        records = [r for r in instance.get_run_records() if r.create_timestamp.timestamp() >= after and r.end_time]
        costs = {}
        for job in sorted({r.dagster_run.job_name for r in records}):
            mine = [r for r in records if r.dagster_run.job_name == job and r.start_time]
            steps: dict[str, list[float]] = {}
            for record in mine:
                for stat in instance.get_run_step_stats(record.dagster_run.run_id):
                    if stat.start_time and stat.end_time:
                        steps.setdefault(stat.step_key, []).append(stat.end_time - stat.start_time)
            step_medians = {key: _median(values) for key, values in steps.items()}
            costs[job] = {
                "runs": len(mine),
                "queued_to_started_median_s": _median([r.start_time - r.create_timestamp.timestamp() for r in mine]),
                "started_to_end_median_s": _median([r.end_time - r.start_time for r in mine]),
                # The slowest steps (median over the job's runs): what a run's time is spent on once started.
                "slowest_steps_median_s": dict(sorted(step_medians.items(), key=lambda item: -item[1])[:8]),
            }
    return costs


def _definitions_import_s(env: dict[str, str], repeats: int = 3) -> float:
    """Median wall seconds of a fresh interpreter's ``import definitions``: what every run process (and the code server)
    pays before its first step."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import definitions"], cwd=REPO, env=env, check=True, capture_output=True)
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings), 2)


def _tick_gaps(stack, names, after: float) -> dict:
    """Per sensor: median and largest gap between the daemon's consecutive ticks since ``after`` (seconds)."""
    gaps = {}
    for name in names:
        stamps = sorted(t["timestamp"] for t in stack.sensor_ticks(name, limit=2000) if t["timestamp"] >= after)
        deltas = [b - a for a, b in zip(stamps, stamps[1:])]
        gaps[name] = {"ticks": len(stamps), "median_gap_s": _median(deltas), "max_gap_s": round(max(deltas), 1) if deltas else None}
    return gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-home", type=Path, help="a materialized `radplan demo` home (default: build one, ~5 min)")
    parser.add_argument("--home", type=Path, help="working folder (default: $TMPDIR/radplan-bench-operations)")
    parser.add_argument("--patients", type=int, default=3 if QUICK else 20)
    parser.add_argument("--studies", type=int, default=5 if QUICK else 50)
    parser.add_argument("--single", type=int, default=1 if QUICK else 3, help="single-study arrivals, one after the other")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    os.environ.setdefault("RADPLAN_DEMO", "1")
    from radplan.pseudonym import Pseudonymizer
    from radplan.settings import Settings, disable_telemetry
    from support.production_stack import CHAIN_SENSORS, copy_materialized_home, production_stack, send_concurrently, study_patient_ids

    disable_telemetry()
    work = (args.home or Path(os.environ.get("TMPDIR", "/tmp")) / "radplan-bench-operations").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    demo_home = args.demo_home
    if demo_home is None:
        demo_home = work / "demo"
        env = {**os.environ, "DAGSTER_HOME": str(demo_home / "dagster_home"), "PYTHONPATH": str(REPO)}
        env.pop("RADPLAN_HOME", None)
        subprocess.run([sys.executable, "-m", "radplan_cli.main", "demo", "--patients", str(DEMO_PATIENTS), "--seed", str(DEMO_SEED),
                        "--home", str(demo_home), "--segmentation-epochs", "1", "--trials", str(REPO.parent / "shared" / "data" / "trials")],
                       cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
    home = work / "home"
    copy_materialized_home(demo_home, home)
    pseudonymizer = Pseudonymizer.from_environment(demo=True)
    patients = range(DEMO_PATIENTS, DEMO_PATIENTS + args.patients)
    burst = _study_files(home, patients, args.studies)  # rendered before the clock starts

    import_env = {**os.environ, "RADPLAN_HOME": str(home), "DAGSTER_HOME": str(work / "import-probe"), "PYTHONPATH": str(REPO)}
    definitions_import_s = _definitions_import_s(import_env)
    load_at_import_probe = load_average()

    with production_stack(home) as stack:
        stack.rebaseline_on_orthanc()
        stack.start_sensors(CHAIN_SENSORS)
        clock = StableStudyClock(stack.orthanc.url)
        clock.start()
        load_before = load_average()
        sensors_on = time.time()

        burst_started = time.time()
        known = set(study_patient_ids(stack.orthanc))
        send_concurrently(stack.orthanc, burst)
        send_s = time.time() - burst_started
        sent = {study: pseudonymizer.patient_key(pid) for study, pid in study_patient_ids(stack.orthanc).items() if study not in known}
        burst_latencies, burst_table, burst_hops = _latencies(stack, clock, sent, args.timeout_s)
        burst_wall_s = time.time() - burst_started
        burst_costs = _run_costs(stack, burst_started)
        load_after_burst = load_average()

        from support.arrivals import add_follow_up_study

        single_latencies, single_table, single_hops = [], [], []
        single_started = time.time()
        for repeat in range(args.single):
            files = add_follow_up_study(home / "landing", patients[repeat % len(patients)], seed=DEMO_SEED, follow_up=100 + repeat)
            known = set(study_patient_ids(stack.orthanc))
            stack.orthanc.store(files)
            sent = {study: pseudonymizer.patient_key(pid) for study, pid in study_patient_ids(stack.orthanc).items() if study not in known}
            latencies, table, hops = _latencies(stack, clock, sent, args.timeout_s)
            single_latencies += latencies
            single_table += table
            single_hops.append(hops)
        single_costs = _run_costs(stack, single_started)
        clock.halt.set()
        tick_gaps = _tick_gaps(stack, CHAIN_SENSORS, sensors_on)

    figures = {
        "daemon.burst_studies": len(burst),
        "daemon.burst_patients": args.patients,
        "daemon.burst_p50_s": _quantile(burst_latencies, 0.5),
        "daemon.burst_p95_s": _quantile(burst_latencies, 0.95),
        "daemon.burst_max_s": _quantile(burst_latencies, 1.0),
        "daemon.burst_target_p95_s": 60,
        "daemon.burst_table_p95_s": _quantile(burst_table, 0.95),
        "daemon.burst_wall_s": round(burst_wall_s, 1),
        "daemon.burst_storescu_send_s": round(send_s, 1),
        "daemon.burst_hops_median_s": burst_hops,
        "daemon.burst_runs": burst_costs,
        "daemon.single_study_s": _median(single_latencies),
        "daemon.single_study_runs_s": [round(v, 1) for v in single_latencies],
        "daemon.single_study_target_s": 15,
        "daemon.single_study_table_s": _median(single_table),
        "daemon.single_study_hops_median_s": {name: _median(h[name] for h in single_hops) for name in single_hops[0]} if single_hops else {},
        "daemon.single_study_runs": single_costs,
        "daemon.sensor_interval_s": Settings.from_env().sensor_interval_s,
        "daemon.sensor_tick_gaps": tick_gaps,
        "daemon.definitions_import_s": definitions_import_s,
        "daemon.load_average_1m_at_import_probe": load_at_import_probe,
        "daemon.orthanc_stable_age_s": stack.orthanc.stable_age_s,
        "daemon.load_average_1m_before": load_before,
        "daemon.load_average_1m_after_burst": load_after_burst,
        "daemon.load_average_1m_end": load_average(),
        "daemon.machine": machine(),
        "daemon.date": now(),
        "daemon.quick": QUICK,
        "daemon.note": "dagster-daemon's own sensor ticks and run queue, one process per run (DefaultRunLauncher), Postgres "
        "storage, Orthanc + storescu; the machine is shared with other jobs (see the load averages), so figures are upper bounds",
    }
    merge_operations("daemon.", figures, path=args.out)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
