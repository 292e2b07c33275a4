"""Incremental cost: after a full materialization, one new study for an existing patient and one new patient.

Runs the sensor-driven path in-process like dagster-daemon would (arrival sensors -> intake ->
patient refresh sensor -> patient runs -> patient export sensor -> export) and measures its wall
time against the full run. Checks that no other patient's partition got a new materialization and
that their lake files and exports are byte-identical. Writes benchmarks/results/incremental.json.

    python benchmarks/bench_incremental.py                      # builds its own 50-patient full run
    python benchmarks/bench_incremental.py --home DIR --full-seconds S   # reuse a materialized demo home

The cohort-level batch (cohort table, strata, response model, full exports) is not part of the
incremental path: it runs once per batch of arrivals (cohort_batch_sensor) or nightly; pass
--with-cohort-batch to time it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the sensors and jobs packages, when run as a script
sys.path.append(str(REPO / "tests"))  # the test harness: in-process daemon, synthetic arrivals
RESULTS = REPO / "benchmarks" / "results"
ARRIVAL_SENSORS = ("pacs_study_sensor", "genomics_landing_sensor", "ehr_landing_sensor")


def full_run(home: Path, patients: int, seed: int, segmentation_epochs: int | None) -> float:
    from radplan_cli.demo import run_stages
    from radplan.synth import generate_cohort

    if not (home / "landing").exists():
        generate_cohort(home, patients, seed)
    started = time.perf_counter()
    failures = run_stages(segmentation_epochs=segmentation_epochs)
    if failures:
        raise SystemExit(f"full run failed: {failures}")
    return time.perf_counter() - started


def settle(daemon) -> None:
    """Give every sensor its cursor on the materialized home; the intake this takes must find nothing changed."""
    for name in ARRIVAL_SENSORS:
        daemon.tick_and_run(name)
    for name in ("patient_refresh_sensor", "patient_export_sensor"):
        requests = daemon.evaluate(name)
        if requests:
            raise SystemExit(f"{name} wants {len(requests)} runs on a fully materialized home: not a clean baseline")


def incremental(daemon) -> dict:
    """Run the sensor chain until it requests nothing more; returns timings per stage."""
    timings = {"intake_s": 0.0, "patient_refresh_s": 0.0, "export_s": 0.0}
    stages = [(ARRIVAL_SENSORS, "intake_s"), (("patient_refresh_sensor",), "patient_refresh_s"), (("patient_export_sensor",), "export_s")]
    for names, slot in stages:
        started = time.perf_counter()
        for name in names:
            runs = daemon.tick_and_run(name)
            failed = [run for run in runs if not run.success]
            if failed:
                raise SystemExit(f"{name}: {len(failed)} runs failed")
        timings[slot] += time.perf_counter() - started
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a fully materialized demo home to reuse (else one is built)")
    parser.add_argument("--full-seconds", type=float, help="wall time of that home's full run (required with --home)")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7, help="the synthetic cohort's seed (also of a reused home)")
    parser.add_argument("--segmentation-epochs", type=int)
    parser.add_argument("--existing-patient", type=int, default=5, help="index of the patient who gets a follow-up study")
    parser.add_argument("--with-cohort-batch", action="store_true", help="also time the batched cohort refresh")
    parser.add_argument("--out", type=Path, default=RESULTS / "incremental.json")
    args = parser.parse_args()

    home = (args.home or Path(os.environ.get("TMPDIR", "/tmp")) / f"radplan-bench-incremental-{args.patients}-{args.seed}").resolve()
    os.environ["RADPLAN_HOME"] = str(home)
    os.environ["RADPLAN_DEMO"] = "1"
    os.environ.pop("RADPLAN_ORTHANC_URL", None)
    from radplan_resources.instance import ensure_dagster_home
    from radplan.settings import disable_telemetry

    disable_telemetry()
    ensure_dagster_home()
    if args.home:
        if args.full_seconds is None:
            parser.error("--home needs --full-seconds (the wall time of its full run)")
        full_s = args.full_seconds
    else:
        full_s = full_run(home, args.patients, args.seed, args.segmentation_epochs)

    from dagster import DagsterInstance

    from definitions import defs
    from support.arrivals import add_follow_up_study, add_new_patient
    from radplan.pseudonym import Pseudonymizer
    from radplan.synth.generator import _draw_unique
    from support.inprocess import InProcessDaemon, partition_materialization_counts, patient_file_digests

    instance = DagsterInstance.get()
    daemon = InProcessDaemon(defs, instance)
    asset_keys = list(defs.resolve_asset_graph().get_all_asset_keys())
    patients_before = set(instance.get_dynamic_partitions("patients"))
    settle(daemon)

    lake = home / "lake"
    counts_before = partition_materialization_counts(instance, asset_keys)
    files_before = patient_file_digests(lake)
    new_index = len(patients_before)
    plans = _draw_unique(args.seed, new_index + 1)
    pseudonymizer = Pseudonymizer.from_environment(demo=True)
    expected = {pseudonymizer.patient_key(plans[args.existing_patient].mrn), pseudonymizer.patient_key(plans[new_index].mrn)}

    started = time.perf_counter()
    add_follow_up_study(home / "landing", args.existing_patient, seed=args.seed)
    add_new_patient(home / "landing", new_index, seed=args.seed)
    arrival_s = time.perf_counter() - started  # writing the synthetic files: not pipeline work
    started = time.perf_counter()
    timings = incremental(daemon)
    incremental_s = time.perf_counter() - started

    counts_after = partition_materialization_counts(instance, asset_keys)
    touched = {slot for slot, value in counts_after.items() if counts_before.get(slot) != value}
    touched_patients = {partition for _, partition in touched if partition is not None}
    files_after = patient_file_digests(lake)
    others = patients_before - expected
    unchanged_files = all(files_after.get(key) == files_before.get(key) for key in others)
    partitions_run: dict[str, int] = {}
    for asset, partition in sorted(touched):
        partitions_run[asset] = partitions_run.get(asset, 0) + 1
    result = {
        "full_s": round(full_s, 1),
        "incremental_s": round(incremental_s, 1),
        "ratio": round(incremental_s / full_s, 4),
        "target_ratio": 0.10,
        "partitions_run": partitions_run,
        "patients_rematerialized": len(touched_patients),
        "expected_patients": len(expected),
        "untouched_partitions_verified": touched_patients == expected and unchanged_files,
        "other_patients_files_identical": unchanged_files,
        "other_patients_checked": len(others),
        "breakdown_s": {k: round(v, 1) for k, v in timings.items()},
        "runs": [{"job": run.job, "partitioned": run.partition_key is not None, "success": run.success} for run in daemon.launched],
        "arrival_files_written_s": round(arrival_s, 1),
        "cohort_patients": len(patients_before),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "note": "sensor chain evaluated in-process like dagster-daemon; runs executed one after another; "
        "load_average_1m is the machine's load when the incremental part ended",
    }
    if args.with_cohort_batch:
        started = time.perf_counter()
        run = daemon.launch("cohort_batch_sensor", _cohort_request())
        result["cohort_batch_s"] = round(time.perf_counter() - started, 1)
        result["cohort_batch_success"] = run.success
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["untouched_partitions_verified"] else 1


def _cohort_request():
    from dagster import RunRequest

    return RunRequest(run_key=f"bench-cohort-{time.time_ns()}", tags={"radplan/trigger": "benchmark"})


if __name__ == "__main__":
    sys.exit(main())
