"""`make bench`: run every benchmark in turn (the pipeline's, then the long ones), then render docs/benchmarks.md from their JSON.

Each benchmark writes its rows to benchmarks/results/<name>.json. The end-to-end benchmark keeps its
50-patient home so that bench_incremental.py (when present) can rematerialize incrementally on it
without running the 50-patient demo again; it gets the home and the measured full-run seconds.
Per-script wall times go to benchmarks/results/run_all.json. ``RADPLAN_BENCH_QUICK=1`` shrinks
every benchmark (development only; the docs then say the figures are from a quick run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, RESULTS_DIR, load_average, machine, now

HERE = Path(__file__).resolve().parent
# Cheapest first: a failure late in the run still leaves the early figures.
BENCHMARKS = ("bench_cli.py", "bench_deid.py", "bench_notes.py", "bench_vcf.py", "bench_radiomics.py", "bench_memory.py",
              "bench_partitions.py", "bench_lake_integrity.py", "bench_ehr_scope.py",
              "bench_pacs_listing.py")
# The long benchmarks of the imaging model, the federated engine and the production stack: each trains, starts
# services or seeds 100,000 partitions, so they run after the pipeline's figures (scripts not present are skipped).
LONG_BENCHMARKS = ("bench_inference.py", "bench_segmentation.py", "bench_federated.py", "bench_operations.py", "bench_scale.py",
                   "bench_cohort_read.py")
# The pipeline benchmarks fit 20 minutes on 2 cores; the long ones add about two hours (segmentation alone trains for 15).
BUDGET_SECONDS = 150 * 60


def _run(script: str, *args: str) -> dict:
    started = time.perf_counter()
    print(f"== {script} {' '.join(args)}".rstrip(), flush=True)
    code = subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent).returncode
    seconds = round(time.perf_counter() - started, 1)
    print(f"== {script}: exit {code} in {seconds:.0f} s", flush=True)
    return {"script": script, "exit_code": code, "seconds": seconds}


def _full_demo_seconds() -> float | None:
    """The kept home's demo wall time, from e2e.json (the 50-patient run, else the largest)."""
    rows = json.loads((RESULTS_DIR / "e2e.json").read_text())
    sizes = rows[0]["sizes"]
    kept = next((m for m in sizes if m["patients"] == 50), sizes[-1])
    return kept["demo_wall_seconds"]


def main() -> int:
    started = time.perf_counter()
    load_at_start = load_average()
    runs = [_run(script) for script in BENCHMARKS]
    work = Path(tempfile.mkdtemp(prefix="radplan-bench-"))
    try:
        home = work / "home50"
        runs.append(_run("bench_e2e.py", "--merge", "--keep-home", str(home)))
        if (HERE / "bench_incremental.py").exists():
            if home.exists() and runs[-1]["exit_code"] == 0:
                runs.append(_run("bench_incremental.py", "--home", str(home), "--full-seconds", str(_full_demo_seconds())))
            else:
                runs.append({"script": "bench_incremental.py", "exit_code": None, "seconds": 0.0,
                             "skipped": "no complete 50-patient home from bench_e2e.py"})
        if (HERE / "bench_sensor_latency.py").exists():
            runs.append(_run("bench_sensor_latency.py"))
        runs += [_run(script) for script in LONG_BENCHMARKS if (HERE / script).exists()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = round(time.perf_counter() - started, 1)
    summary = {"total_seconds": total, "budget_seconds": BUDGET_SECONDS, "within_budget": total <= BUDGET_SECONDS,
               "quick": QUICK, "machine": machine(), "date": now(), "load_average_at_start": load_at_start,
               "scripts": runs}
    from radplan.lake import atomic_write_json

    atomic_write_json(RESULTS_DIR / "run_all.json", summary)
    subprocess.run([sys.executable, str(HERE / "render_docs.py")], cwd=HERE.parent, check=False)
    failed = [r["script"] for r in runs if r.get("exit_code") not in (0, None)]
    print(f"make bench: {total:.0f} s (budget {BUDGET_SECONDS} s){'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
