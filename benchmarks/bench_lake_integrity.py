"""Lake integrity: what the write-time manifest costs, and how fast `radplan lake verify` re-reads a lake.

A temporary lake gets PATIENTS patients, each with a patient folder of real DICOM (dcmqi's CT slices and SEG
from ../shared/data, written through ``rebuild_patient_dir``) and one partition of a 200-row table (through
``write_table``). Two comparisons:

- ``lake_manifest_write``: seconds per ``LakeResource.write_table`` partition (atomic rebuild, manifest, audit
  record) vs ``pyarrow.parquet.write_table`` of the same table to a plain path (peer: no atomicity, no manifest),
  and ``lake_manifest_share_of_write``: the part of that write the manifest itself takes (hash + record, timed alone);
- ``lake_verify``: seconds for ``verify_local_lake`` over the whole lake vs coreutils ``sha256sum -c`` over a
  checksum list of the same data files (peer: hashing alone, no listing or manifest reading). Both run with a
  warm page cache (one untimed pass first).

Writes benchmarks/results/lake_integrity.json.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, result_row, write_results

PATIENTS = 20 if QUICK else 200
REPEATS = 3


def _shared_data() -> Path:
    return Path(os.environ.get("RADPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def build(root: Path, patients: int) -> tuple[list[float], list[float]]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radplan_resources.lake import LakeResource

    source = _shared_data() / "imaging" / "dcmqi_ct_liver_seg"
    dicom = [*sorted((source / "ct").glob("*.dcm")), source / "liver_seg.dcm"]
    lake = LakeResource(root=str(root / "lake"))
    rng = np.random.default_rng(7)
    table = pd.DataFrame({f"feature_{i}": rng.normal(size=200) for i in range(20)})
    lake_writes, plain_writes = [], []
    plain = root / "plain"
    plain.mkdir()
    for index in range(patients):
        key = f"p{index:016x}"
        with lake.rebuild_patient_dir("deid", "dicom", key) as staging:
            for path in dicom:
                shutil.copyfile(path, staging / path.name)
        start = time.perf_counter()
        lake.write_table(table, "features", "bench_features", key)
        lake_writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), plain / f"{key}.parquet")
        plain_writes.append(time.perf_counter() - start)
    return lake_writes, plain_writes


def time_manifests(lake: Path, patients: int) -> list[float]:
    """Seconds to hash one written partition and record its manifest: the part of a write the manifest adds."""
    from radplan.lake_integrity import build_manifest, record_manifest

    seconds = []
    for index in range(patients):
        dataset = f"features/bench_features/patient_key=p{index:016x}"
        start = time.perf_counter()
        record_manifest(lake, build_manifest(dataset, lake / dataset))
        seconds.append(time.perf_counter() - start)
    return seconds


def time_verify(lake: Path) -> float:
    from radplan.lake_integrity import verify_local_lake

    start = time.perf_counter()
    report = verify_local_lake(lake)
    seconds = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(f"the benchmark lake does not verify: {report.counts()}")
    return seconds


def time_sha256sum(lake: Path, checklist: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", "--quiet", "-c", str(checklist)], cwd=lake, check=True)
    return time.perf_counter() - start


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="radplan-bench-integrity-"))
    try:
        lake_writes, plain_writes = build(work, PATIENTS)
        lake = work / "lake"
        from radplan.lake_integrity import local_files

        files = sorted(local_files(lake).sizes.items())
        nbytes = sum(size for _, size in files)
        listing = subprocess.run(["sha256sum", *[name for name, _ in files]], cwd=lake, check=True, capture_output=True, text=True).stdout
        checklist = work / "checklist.sha256"
        checklist.write_text(listing)
        time_verify(lake)  # warm the page cache for both
        verify_s = statistics.median(time_verify(lake) for _ in range(REPEATS))
        peer_s = statistics.median(time_sha256sum(lake, checklist) for _ in range(REPEATS))
        write_s, plain_s = statistics.median(lake_writes), statistics.median(plain_writes)
        manifest_s = statistics.median(time_manifests(lake, PATIENTS))
        rows = [
            result_row("lake_manifest_write", radplan=round(write_s, 5), peer=round(plain_s, 5), unit="s per partition write",
                       ratio=round(write_s / plain_s, 2), runs=len(lake_writes), patients=PATIENTS,
                       note="radplan: LakeResource.write_table (staging folder, rename, SHA-256 manifest, audit record); "
                            "peer: pyarrow.parquet.write_table to a path"),  # fmt: skip
            result_row("lake_manifest_share_of_write", radplan=round(manifest_s, 5), peer=round(write_s, 5), unit="s per partition write",
                       ratio=round(manifest_s / write_s, 2), runs=PATIENTS, patients=PATIENTS,
                       note="radplan: hashing one written partition and recording its manifest; peer: the whole "
                            "LakeResource.write_table it is part of"),  # fmt: skip
            result_row("lake_verify", radplan=round(verify_s, 3), peer=round(peer_s, 3), unit="s per whole-lake verify",
                       ratio=round(verify_s / peer_s, 2), runs=REPEATS, patients=PATIENTS, datasets=2 * PATIENTS,
                       files=len(files), megabytes=round(nbytes / 2**20, 1),
                       note="radplan: radplan.lake_integrity.verify_local_lake; peer: coreutils sha256sum -c over the "
                            "same files; warm page cache"),  # fmt: skip
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("lake_integrity.json", rows)
    for row in rows:
        print(f"{row['name']}: radplan {row['radplan']} vs peer {row['peer']} {row['unit']} (x{row['ratio']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
