"""End to end: the `make demo` stages at several cohort sizes: wall time, per-patient cost, peak memory.

For each size N a fresh home gets a synthetic cohort (``generate_cohort``, seed 7, timed on its
own), then ``radplan demo --patients N --home H --segmentation-epochs E --workers 2`` runs every
stage in a child process. What is measured:

* each stage's wall time as the demo prints it; per-patient cost = the per-patient stages'
  seconds (``patient_preparation_job``, ``patient_features_job``, ``recommendation_job``: one run
  per patient partition, 2 worker processes) divided by N; the cohort-level stages are reported
  apart (their cost is fixed or grows with N by design);
* the demo's whole wall time (generation excluded) and the peak summed RSS of the demo process tree
  (workers, Spark's JVM and the radiomics workers included), sampled every 100 ms.

The segmentation model trains for ``--segmentation-epochs`` epochs (default 1, not the demo's
default): training is a fixed cost that says nothing about scaling and would not fit the budget.
Sizes: ``--sizes`` or ``RADPLAN_BENCH_E2E_SIZES`` (default 20,50: the 100-patient run alone takes
~11 min on 2 cores, past make bench's budget). ``--merge`` keeps the sizes of the existing e2e.json that
this run does not measure (each size carries its own date and load), so the 100-patient point can be
measured on its own: ``python benchmarks/bench_e2e.py --sizes 100 --merge``. ``--keep-home DIR`` keeps the
home of the 50-patient run at DIR (for bench_incremental.py).

Writes benchmarks/results/e2e.json (``e2e_per_patient_scaling``: per-patient cost at the largest
size / at the smallest; target <= 1.2 from 20 to 100).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, RESULTS_DIR, load_average, machine, now, result_row, write_results

PATIENT_STAGES = ("patient_preparation_job", "patient_features_job", "recommendation_job")
STAGE_LINE = re.compile(r"^(\w+_job): (.*) in ([0-9.]+) s$")
TRIALS = REPO.parent / "shared" / "data" / "trials"


def run_sampled(cmd: list[str], env: dict, interval: float = 0.1) -> tuple[int, str, float, float]:
    """Run ``cmd``; returns (exit code, stdout, wall seconds, peak summed RSS of its process tree in GiB)."""
    import psutil

    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
        watched = psutil.Process(process.pid)
        peak = 0
        try:
            while process.poll() is None:
                try:
                    tree = [watched, *watched.children(recursive=True)]
                    total = 0
                    for member in tree:
                        try:
                            total += member.memory_info().rss
                        except psutil.Error:  # ended between listing and reading
                            pass
                    peak = max(peak, total)
                except psutil.Error:
                    pass
                time.sleep(interval)
        finally:
            if process.poll() is None:  # interrupted: leave no demo, worker or JVM behind
                for member in [*watched.children(recursive=True), watched]:
                    try:
                        member.kill()
                    except psutil.Error:
                        pass
                process.wait()
        wall = time.perf_counter() - started
        log.seek(0)
        return process.returncode, log.read(), wall, peak / 2**30


def run_size(patients: int, home: Path, epochs: int) -> dict:
    env = {**os.environ, "RADPLAN_DEMO": "1", "RADPLAN_HOME": str(home), "PYTHONPATH": str(REPO)}
    load_at_start = load_average()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from radplan.synth import generate_cohort; "
                    "generate_cohort(Path(sys.argv[1]), int(sys.argv[2]), 7)", str(home), str(patients)],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    generate_seconds = time.perf_counter() - started
    cmd = [sys.executable, "-m", "radplan_cli.main", "demo", "--patients", str(patients), "--home", str(home),
           "--segmentation-epochs", str(epochs), "--workers", "2"]
    if TRIALS.is_dir():
        cmd += ["--trials", str(TRIALS)]
    code, output, wall, peak_gib = run_sampled(cmd, env)
    stages = {}
    for line in output.splitlines():
        match = STAGE_LINE.match(line.split("\r")[-1].strip())  # Spark progress bars share the line
        if match:
            stages[match.group(1)] = {"seconds": float(match.group(3)), "status": match.group(2)}
    if code != 0 or not stages:
        tail = "\n".join(output.splitlines()[-15:])
        print(f"demo with {patients} patients exited {code}:\n{tail}", file=sys.stderr)
    patient_seconds = sum(stages[s]["seconds"] for s in PATIENT_STAGES if s in stages)
    cohort_seconds = sum(v["seconds"] for k, v in stages.items() if k not in PATIENT_STAGES)
    return {"patients": patients, "date": now(), "load_average_at_start": load_at_start, "exit_code": code, "generate_seconds": round(generate_seconds, 1),
            "demo_wall_seconds": round(wall, 1), "per_patient_stage_seconds": round(patient_seconds, 1),
            "cohort_stage_seconds": round(cohort_seconds, 1), "per_patient_cost_s": round(patient_seconds / patients, 3),
            "wall_per_patient_s": round(wall / patients, 3), "peak_tree_rss_gib": round(peak_gib, 3), "stages": stages}


def _previous_sizes() -> list[dict]:
    path = RESULTS_DIR / "e2e.json"
    if not path.exists():
        return []
    rows = json.loads(path.read_text())
    row = next((row for row in rows if row["name"] == "e2e_per_patient_scaling"), None)
    if row is None or row.get("machine") != machine() or row.get("quick") != QUICK:
        return []  # another machine's (or a quick run's) figures do not belong with this run's
    return [{**m, "kept_from_earlier_run": True} for m in row["sizes"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 20 and 50 fit make bench's 20-minute budget on 2 cores; the 100-patient run alone takes ~11 min.
    parser.add_argument("--sizes", default=os.environ.get("RADPLAN_BENCH_E2E_SIZES", "3,6" if QUICK else "20,50"))
    parser.add_argument("--segmentation-epochs", type=int, default=1)
    parser.add_argument("--merge", action="store_true", help="keep the sizes of the existing e2e.json not measured now")
    parser.add_argument("--keep-home", type=Path, help="keep the 50-patient (else the largest) home here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up in run_sampled on `timeout`/kill
    sizes = [int(s) for s in args.sizes.split(",")]
    keep_size = 50 if 50 in sizes else max(sizes)

    measurements = []
    with tempfile.TemporaryDirectory(prefix="radplan-bench-e2e-") as tmp:
        for patients in sizes:
            home = Path(tmp) / f"home{patients}"
            measurement = run_size(patients, home, args.segmentation_epochs)
            measurements.append(measurement)
            print({k: v for k, v in measurement.items() if k != "stages"}, flush=True)
            if args.keep_home and patients == keep_size:
                if args.keep_home.exists():
                    shutil.rmtree(args.keep_home)
                shutil.move(str(home), str(args.keep_home))
            else:
                shutil.rmtree(home, ignore_errors=True)
    if args.merge:
        measurements += [m for m in _previous_sizes() if m["patients"] not in sizes]
    measurements.sort(key=lambda m: m["patients"])
    # The scaling target compares 100 with 20 patients: 20 is the base whenever it was measured.
    first = next((m for m in measurements if m["patients"] == 20), measurements[0])
    last = measurements[-1]
    ok = all(m["exit_code"] == 0 for m in measurements)
    separate = any(m.get("kept_from_earlier_run") for m in measurements)
    common = {"runs": 1, "sizes_measured_in_separate_runs": separate, "segmentation_epochs": args.segmentation_epochs, "workers": 2, "all_stages_ok": ok,
              "sizes": measurements}
    results = [
        result_row("e2e_per_patient_scaling", radplan=last["per_patient_cost_s"], peer=first["per_patient_cost_s"],
                   unit="s/patient", ratio=round(last["per_patient_cost_s"] / first["per_patient_cost_s"], 3),
                   lower_is_better=True, target="<= 1.2 (100 vs 20 patients)",
                   peer_tool=f"per-patient cost at {first['patients']} patients (radplan column: {last['patients']})",
                   note="per-patient stages' wall seconds / patients; demo with --segmentation-epochs "
                        f"{args.segmentation_epochs}, 2 workers", **common),
        result_row("e2e_peak_memory_scaling", radplan=last["peak_tree_rss_gib"], peer=first["peak_tree_rss_gib"], unit="GiB",
                   ratio=round(last["peak_tree_rss_gib"] / first["peak_tree_rss_gib"], 3), lower_is_better=True,
                   peer_tool=f"peak at {first['patients']} patients (radplan column: {last['patients']})",
                   note="peak summed RSS of the whole demo process tree (2 patient workers with torch, Spark's JVM, "
                        "radiomics workers); flat in cohort size is the goal. The 2.5 GiB target is for one CT series: "
                        "ct_series_peak_memory", **common),
    ]
    write_results("e2e.json", results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
