"""Cohort reads over 1,000 and 100,000 patient partitions: snapshot, Arrow dataset, the former Python loop, Spark.

The lake keeps a per-patient table as one ``patient_key=<key>/part-0.parquet`` folder per patient (hive layout).
A cohort asset reads every partition at once. At 100,000 patients that is 100,000 small files to open, whoever
opens them (Arrow, Spark or a Python loop): the cohort path therefore reads through a compacted snapshot
(``radplan.lake.refresh_compacted_snapshot``: one Parquet file, only partitions changed since the last read are
opened again; ``cohort_features`` gives Spark that one file). Measured per size, on ``patient_features`` with the
real schema (one row per patient: a file written once by Arrow and copied into every partition folder, so setup
stays short; reads still open every path):

- ``arrow_dataset_s``: ``read_hive_dataset`` (one Arrow dataset read of every partition, no snapshot; small sizes
  only unless ``--loop-at-large``: at the large size ``snapshot_cold_s`` is that read plus one file written);
- ``python_loop_s``: the per-partition Python loop ``read_hive_dataset`` was before (small sizes only unless
  ``--loop-at-large``: at 10,000 partitions it took about as long as the dataset read, both bound by file opens);
- ``snapshot_cold_s``: building the snapshot (every partition read once);
- ``snapshot_warm_s``: a cohort read with nothing changed; ``snapshot_after_1pct_s``: after 1% of the patients
  were rewritten;
- ``python_peak_rss_mb``: the benchmark process's peak resident memory after the cold snapshot build (partitions
  are read in groups, ``radplan.lake.READ_GROUP_FILES``; one read of 20,000 files peaked at 4.9 GB before);
- ``spark_snapshot_s``: ``cohort_table_spark`` on the snapshot (local[2]); ``spark_folder_s``: on the folder
  (small sizes only: 504 s at 10,000 partitions on the loaded machine).

Writes the ``scale.<N>.cohort_read.*`` keys of benchmarks/results/operations.json (read-modify-write) and
benchmarks/results/cohort_read.json. The machine is shared: the load average is recorded beside every figure.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, load_average, merge_operations, result_row, write_results

from radplan.lake import PARTITION_COLUMN


def write_cohort(folder: Path, patients: int, first: int = 0) -> None:
    """Partitions ``first``..``first+patients-1`` of patient_features: one row of the real schema, one file each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radplan.cohort import patient_features_schema

    schema = patient_features_schema()
    placeholder = {pa.types.is_boolean: True, pa.types.is_floating: 1.5, pa.types.is_integer: 2,
                   pa.types.is_string: "value", pa.types.is_list: ["EGFR L858R"]}
    columns = {field.name: pa.array([next(v for test, v in placeholder.items() if test(field.type))], field.type)
               for field in schema if field.name != PARTITION_COLUMN}
    template = folder.parent / f".{folder.name}.template.parquet"
    pq.write_table(pa.table(columns), template)
    for index in range(first, first + patients):
        partition = folder / f"{PARTITION_COLUMN}=p{index:016x}"
        partition.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, partition / "part-0.parquet")
    template.unlink()


def python_loop_read(folder: Path):
    """The read_hive_dataset before this benchmark: one Python iteration (and one Arrow read) per partition."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    parts = []
    for fragment in ds.dataset(folder, format="parquet", partitioning=partitioning).get_fragments():
        part = fragment.to_table()
        key = ds.get_partition_keys(fragment.partition_expression)[PARTITION_COLUMN]
        parts.append(part.append_column(PARTITION_COLUMN, pa.array([key] * part.num_rows, pa.string())))
    return pa.concat_tables(parts, promote_options="permissive").to_pandas()


def _timed(fn, repeats: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        rows = len(fn())
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000" if QUICK else "1000,100000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--loop-at-large", action="store_true", help="also time the Python loop and Spark on the folder at the largest size")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from radplan.cohort import cohort_table_spark
    from radplan.lake import read_hive_dataset, read_hive_dataset_compacted

    session = None
    if not args.no_spark:
        from radplan_resources import SparkResource

        session = SparkResource(master="local[2]", driver_memory="3g").session()
    rows, operations = [], {}
    work = Path(tempfile.mkdtemp(prefix="radplan-bench-cohort-read-"))
    try:
        if session is not None:  # JVM and Spark SQL warm-up, not timed: the first query of a session costs ~30 s here
            write_cohort(work / "warm_up", 3)
            cohort_table_spark(session, str(work / "warm_up"))
        for size in sizes:
            folder = work / f"patient_features_{size}"
            snapshot = work / ".compacted" / f"patient_features_{size}.parquet"
            start = time.perf_counter()
            write_cohort(folder, size)
            row = {"partitions": size, "setup_s": round(time.perf_counter() - start, 1), "load_average_before": load_average()}
            small = size < 10_000 or args.loop_at_large
            once = 1 if size >= 10_000 else args.repeats
            if small:  # at the large size the cold snapshot build below is this read (plus one file written)
                row["arrow_dataset_s"], count = _timed(lambda: read_hive_dataset(folder), once)
                assert count == size, (count, size)
                row["python_loop_s"], count = _timed(lambda: python_loop_read(folder), once)
                assert count == size, (count, size)
            row["snapshot_cold_s"], count = _timed(lambda: read_hive_dataset_compacted(folder, snapshot), 1)
            assert count == size and snapshot.exists(), (count, size)
            # This process's peak resident memory so far (Spark's JVM is another process): bounded by the read
            # groups of radplan.lake.READ_GROUP_FILES, not by the number of partitions.
            row["python_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            row["snapshot_warm_s"], count = _timed(lambda: read_hive_dataset_compacted(folder, snapshot), args.repeats)
            assert count == size, (count, size)
            changed = max(1, size // 100)
            shutil.rmtree(folder / f"{PARTITION_COLUMN}=p{0:016x}")  # one patient removed, 1% rewritten
            write_cohort(folder, changed, first=1)
            row["snapshot_after_1pct_s"], count = _timed(lambda: read_hive_dataset_compacted(folder, snapshot), 1)
            assert count == size - 1, (count, size)
            if session is not None:
                row["spark_snapshot_s"], count = _timed(lambda: cohort_table_spark(session, str(snapshot)), args.repeats)
                assert count == size - 1, (count, size)
                if small:
                    row["spark_folder_s"], count = _timed(lambda: cohort_table_spark(session, str(folder)), once)
                    assert count == size - 1, (count, size)
            row["load_average_after"] = load_average()
            print(row, flush=True)
            rows.append(row)
            operations.update({f"scale.{size}.cohort_read.{key}": value for key, value in row.items() if key != "partitions"})
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if session is not None:
            session.stop()
        shutil.rmtree(work, ignore_errors=True)
    large = rows[-1]
    full = large.get("arrow_dataset_s", large["snapshot_cold_s"])
    ratio = round(large["snapshot_warm_s"] / full, 3)
    merge_operations("scale.", operations, owned=lambda key: ".cohort_read." in key)
    write_results("cohort_read.json", [result_row(
        "cohort_read", radplan=large["snapshot_after_1pct_s"], peer=full, unit="s",
        ratio=round(large["snapshot_after_1pct_s"] / full, 3), runs=args.repeats, lower_is_better=True,
        peer_tool=f"every partition read (the cold snapshot build), {large['partitions']:,} partitions",
        note="cohort read through the compacted snapshot after 1% of the patients changed (radplan column) vs reading "
             f"every partition (peer); with nothing changed the snapshot read is {ratio}x the full read", steps=rows)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
