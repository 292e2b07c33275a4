"""DICOM de-identification throughput: radplan vs dicognito vs bare pydicom read+write.

Each engine reads the same instances (pre-loaded bytes, so disk I/O is not measured), does its
work and writes the result to memory. ``bare`` is pydicom read + write with no change: the floor.
Engines run interleaved in every repeat, pinned to one CPU core; the rate is instances per
second of process CPU time (robust on a shared machine); the figure is the median over repeats.

    python benchmarks/bench_deid.py [--passes 4] [--repeats 3]

Writes benchmarks/results/deid.json (``deid_vs_dicognito``, ``deid_vs_bare_pydicom``).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import pydicom

from _common import QUICK, REPO, RESULTS_DIR, result_row

from radplan.lake import atomic_write_json  # noqa: E402
from radplan.imaging.deid import DeidOptions, deidentify_dataset, read_dicom  # noqa: E402
from radplan.pseudonym import DEMO_KEY, Pseudonymizer  # noqa: E402

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "imaging" / "ibsi_sts_002" / "dicom"
RESULT = RESULTS_DIR / "deid.json"


def _bare(blob: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(blob))
    ds.save_as(io.BytesIO())


def _make_radplan():
    pseudonymizer = Pseudonymizer(DEMO_KEY)
    options = DeidOptions(burned_in_policy="flag")

    def run(blob: bytes) -> None:
        out, _ = deidentify_dataset(read_dicom(io.BytesIO(blob)), pseudonymizer, options)
        out.save_as(io.BytesIO(), enforce_file_format=True)

    return run


def _make_dicognito():
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="radplan-benchmark")

    def run(blob: bytes) -> None:
        ds = pydicom.dcmread(io.BytesIO(blob))
        anonymizer.anonymize(ds)
        ds.save_as(io.BytesIO())

    return run


def _rate(engine, blobs: list[bytes]) -> float:
    # CPU time of this (single-threaded, pinned) process: the machine is shared with other jobs,
    # and wall time would measure their load rather than the engine.
    start = time.process_time()
    for blob in blobs:
        engine(blob)
    return len(blobs) / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--pattern", default="*/image/*.dcm", help="instances under --input (default: the 131 images)")
    parser.add_argument("--passes", type=int, default=1 if QUICK else 4, help="times each instance is processed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    warnings.simplefilter("ignore")  # pydicom's VR warnings on the sample data cost every engine alike

    files = sorted(args.input.glob(args.pattern))
    blobs = [p.read_bytes() for p in files] * args.passes
    engines = {"radplan": _make_radplan(), "dicognito": _make_dicognito(), "bare": _bare}
    for engine in engines.values():  # warm-up: imports, caches, dictionaries
        for blob in blobs[:10]:
            engine(blob)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            rates[name].append(_rate(engine, blobs))
    median = {name: statistics.median(values) for name, values in rates.items()}

    common = {"unit": "instances/s", "runs": args.repeats, "instances_per_run": len(blobs),
              "input": f"{len(files)} CT instances of the shared IBSI STS sample x {args.passes} passes",
              "timing": "process CPU time, one pinned core",
              "versions": f"pydicom {pydicom.__version__}; dicognito {version('dicognito')}"}
    results = [
        result_row("deid_vs_dicognito", radplan=round(median["radplan"], 1), peer=round(median["dicognito"], 1),
                   ratio=round(median["radplan"] / median["dicognito"], 2), peer_tool="dicognito Anonymizer",
                   target=">= 1.5", **common),
        result_row("deid_vs_bare_pydicom", radplan=round(median["radplan"], 1), peer=round(median["bare"], 1),
                   ratio=round(median["radplan"] / median["bare"], 2), peer_tool="pydicom dcmread + save_as, no change",
                   target=">= 0.5", **common),
    ]
    atomic_write_json(args.output, results)
    print(f"{len(files)} files x {args.passes} passes = {len(blobs)} instance-reads per run, {args.repeats} runs")
    for name, values in rates.items():
        print(f"{name:10s} median {median[name]:8.1f} inst/s  runs {[round(v, 1) for v in values]}")
    for row in results:
        print(f"{row['name']}: ratio {row['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
