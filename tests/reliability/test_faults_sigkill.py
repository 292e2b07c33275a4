"""A materialization killed with SIGKILL mid-write, then rerun, gives the lake an uninterrupted run gives.

Two homes hold the same synthetic cohort. Home A runs ingest + per-patient preparation straight
through; home B runs the same, is SIGKILLed (its whole process group, like a lost container) while a
patient's de-identified DICOM is half-written, and is rerun. Every lake file of B must then decode to
the same content as A's (reliability_helpers lists the few fields that legitimately differ), and no
temp/staging/retired entry may remain.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from radplan.lake_integrity import verify_local_lake
from radplan.synth import generate_cohort
from reliability_helpers import lake_snapshot, run_stages, snapshot_differences, staging_leftovers, start_stages

pytestmark = pytest.mark.slow

JOBS = ["ingest_job", "patient_preparation_job"]
PATIENTS, SEED = 2, 5


def _half_written_deid_study(lake) -> bool:
    """True once one patient is prepared and the next one's de-identified DICOM is being written."""
    prepared = lake / "features" / "lesion_masks"
    deid = lake / "deid" / "dicom"
    if not prepared.is_dir() or not any(prepared.iterdir()) or not deid.is_dir():
        return False
    return any(entry.name.startswith(".") and len(list(entry.rglob("*.dcm"))) >= 5 for entry in deid.iterdir())


def test_sigkilled_materialization_reruns_to_the_uninterrupted_result(tmp_path):
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    for home in (home_a, home_b):
        generate_cohort(home, PATIENTS, SEED)

    started = time.perf_counter()
    uninterrupted = start_stages(home_a, JOBS, log=tmp_path / "a.log")
    doomed = start_stages(home_b, JOBS, log=tmp_path / "b.log")
    deadline = time.monotonic() + 600
    while not _half_written_deid_study(home_b / "lake"):
        assert doomed.poll() is None, "run finished before it could be killed mid-write:\n" + (tmp_path / "b.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no half-written study within 10 min"
        time.sleep(0.01)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    killed_at = time.perf_counter() - started
    left_by_kill = staging_leftovers(home_b)
    assert any(name.startswith("deid/dicom/.") for name in left_by_kill), left_by_kill  # really killed mid-write

    run_stages(home_b, JOBS)
    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "a.log").read_text()[-4000:]
    total = time.perf_counter() - started

    assert staging_leftovers(home_b) == []
    assert staging_leftovers(home_a) == []
    reference, rerun = lake_snapshot(home_a), lake_snapshot(home_b)
    assert len(reference) > 100
    assert snapshot_differences(reference, rerun) == []
    assert verify_local_lake(home_b / "lake").ok  # the rerun's manifests describe its files (a killed write left none stale)
    print(f"\nkilled after {killed_at:.1f} s with {len(left_by_kill)} staging entries; rerun and compare done after {total:.1f} s; "
          f"{len(reference)} lake files identical")
