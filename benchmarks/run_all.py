"""`make bench`: run every benchmark in turn; each writes its JSON under benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("bench_deid.py", "bench_vcf.py")


def main() -> int:
    failed = []
    for script in BENCHMARKS:
        started = time.perf_counter()
        print(f"== {script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent).returncode != 0:
            failed.append(script)
        print(f"== {script}: {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
