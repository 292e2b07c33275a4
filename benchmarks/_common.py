"""Shared pieces of the benchmarks: machine description, result rows, quick mode.

Every benchmark writes a JSON list of result rows (:func:`result_row`) to
``benchmarks/results/<name>.json``; ``render_docs.py`` turns them into docs/benchmarks.md.
Set ``RADPLAN_BENCH_QUICK=1`` to shrink every benchmark (for development, not for figures).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
QUICK = os.environ.get("RADPLAN_BENCH_QUICK", "") not in ("", "0")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The test harness the sensor benchmarks share with the tests (in-process daemon, synthetic arrivals).
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def machine() -> str:
    """CPU model, cores, RAM, OS and Python: the string stored in every result row."""
    return (f"{cpu_model()}; {os.cpu_count()} cores; {memory_gib():.0f} GiB RAM; "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_average() -> float | None:
    """1-minute load average when the benchmark started: tells a quiet run from a loaded one."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def median_seconds(fn, repeats: int, *args):
    """(median wall seconds of ``repeats`` calls of ``fn(*args)``, the last call's result)."""
    import statistics
    import time

    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def result_row(name: str, *, radplan: float, peer: float, unit: str, ratio: float, runs: int, **extra) -> dict:
    """One comparison in the schema docs/benchmarks.md is rendered from (extra keys are kept)."""
    return {"name": name, "radplan": radplan, "peer": peer, "unit": unit, "ratio": ratio, "runs": runs,
            "machine": machine(), "date": now(), "load_average": load_average(), "quick": QUICK, **extra}


def write_results(filename: str, rows: list[dict]) -> Path:
    from radplan.lake import atomic_write_json

    path = RESULTS_DIR / filename
    atomic_write_json(path, rows)
    return path


def merge_operations(prefix: str, values: dict, owned=None, path: Path | None = None) -> Path:
    """Read-modify-write benchmarks/results/operations.json, one flat object of named figures shared by several
    benchmarks (``scale.*``, ``daemon.*``, ...): the keys under ``prefix`` that ``owned`` accepts (all under
    ``prefix`` when None) are replaced by ``values``; every other key is kept."""
    import json

    from radplan.lake import atomic_write_json

    path = path or RESULTS_DIR / "operations.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    mine = owned or (lambda key: True)
    kept = {key: value for key, value in current.items() if not (key.startswith(prefix) and mine(key))}
    atomic_write_json(path, dict(sorted({**kept, **values}.items())))
    return path
