"""Lake zones: atomic writes, hive-partitioned tables, quarantine with a machine-readable reason."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from radplan.errors import InvalidVcfError
import radplan.lake as lake_module
from radplan.lake import atomic_path, atomic_write_text, read_hive_dataset
from radplan_resources import LakeResource


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "table.parquet"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_partitioned_tables_read_back_per_patient_and_as_one_dataset(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write_table(pd.DataFrame({"x": [1, 2]}), "features", "t", "p0000000000000001")
    lake.write_table(pd.DataFrame({"x": [3]}), "features", "t", "p0000000000000002")
    lake.write_table(pd.DataFrame({"x": [9]}), "features", "t", "p0000000000000002")  # replaces, never appends
    one = lake.read_table("features", "t", "p0000000000000001")
    assert one.to_dict("list") == {"patient_key": ["p0000000000000001"] * 2, "x": [1, 2]}
    everything = lake.read_table("features", "t").sort_values("x")
    assert everything["x"].tolist() == [1, 2, 9]
    assert everything["patient_key"].tolist() == ["p0000000000000001", "p0000000000000001", "p0000000000000002"]
    assert not [p for p in (tmp_path / "features" / "t").iterdir() if p.name.startswith(".")]


def test_one_dataset_read_unifies_a_column_that_is_all_null_in_some_partitions(tmp_path):
    # A patient without notes writes an all-null column (Arrow type null); whichever file comes first, the
    # column reads back with the other partitions' type, and an empty folder reads as no rows.
    lake = LakeResource(root=str(tmp_path))
    lake.write_table(pd.DataFrame({"finding": [None, None], "n": [1, 2]}), "features", "t", "p0000000000000001")
    lake.write_table(pd.DataFrame({"finding": ["EGFR"], "n": [3], "extra": [0.5]}), "features", "t", "p0000000000000002")
    everything = lake.read_table("features", "t").sort_values("n")
    assert everything["finding"].tolist() == [None, None, "EGFR"]
    assert everything["extra"].isna().tolist() == [True, True, False]
    assert everything["patient_key"].tolist() == ["p0000000000000001"] * 2 + ["p0000000000000002"]
    (tmp_path / "features" / "empty").mkdir()
    assert read_hive_dataset(tmp_path / "features" / "empty").columns.tolist() == ["patient_key"]


def test_partitions_read_in_groups_unify_types_across_groups(tmp_path, monkeypatch):
    # Groups of one file: the all-null column of the first group and the string column of the next are unified
    # when the groups are concatenated, in both the plain read and the snapshot read.
    monkeypatch.setattr(lake_module, "READ_GROUP_FILES", 1)
    lake = LakeResource(root=str(tmp_path))
    lake.write_table(pd.DataFrame({"finding": [None], "n": [1]}), "features", "t", "p0000000000000001")
    lake.write_table(pd.DataFrame({"finding": ["EGFR", "KRAS"], "n": [2, 3]}), "features", "t", "p0000000000000002")
    plain = read_hive_dataset(tmp_path / "features" / "t")
    through_snapshot = lake.read_table("features", "t")
    for frame in (plain, through_snapshot):
        assert frame["finding"].tolist() == [None, "EGFR", "KRAS"]
        assert frame["patient_key"].tolist() == ["p0000000000000001"] + ["p0000000000000002"] * 2


def test_cohort_reads_go_through_a_snapshot_that_rereads_only_changed_partitions(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    for index in range(4):
        lake.write_table(pd.DataFrame({"x": [index]}), "features", "t", f"p{index:016x}")
    folder, snapshot = tmp_path / "features" / "t", lake.compacted_snapshot_path("features", "t")
    assert lake.read_table("features", "t")["x"].tolist() == [0, 1, 2, 3] and snapshot.exists()
    report = lake.verify_integrity(["features"])
    assert report.ok and not report.unrecorded  # the snapshot is a hidden cache, not lake data

    # An unchanged partition is served from the snapshot: bytes altered behind its back (same size and mtime) stay unseen.
    untouched = folder / f"patient_key=p{0:016x}" / "part-0.parquet"
    stat = untouched.stat()
    original = untouched.read_bytes()
    untouched.write_bytes(original[:-8] + b"\0" * 4 + original[-4:])  # footer length zeroed: unreadable if opened
    os.utime(untouched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # A rewritten, a new and a removed partition are all seen.
    lake.write_table(pd.DataFrame({"x": [10, 11]}), "features", "t", f"p{1:016x}")
    lake.write_table(pd.DataFrame({"x": [4]}), "features", "t", f"p{4:016x}")
    shutil.rmtree(folder / f"patient_key=p{3:016x}")
    again = lake.read_table("features", "t")
    assert again["x"].tolist() == [0, 10, 11, 2, 4]
    assert again["patient_key"].tolist() == [f"p{i:016x}" for i in (0, 1, 1, 2, 4)]

    # A damaged snapshot is a cache miss: rebuilt from the partitions.
    snapshot.write_bytes(b"not parquet")
    untouched.write_bytes(original)
    os.utime(untouched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lake.read_table("features", "t")["x"].tolist() == [0, 10, 11, 2, 4]


def test_failed_partition_rebuild_keeps_the_previous_version(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write_table(pd.DataFrame({"x": [1]}), "features", "t", "p1")
    with pytest.raises(ValueError):
        with lake.rebuild_patient_dir("features", "t", "patient_key=p1") as staging:
            (staging / "part-0.parquet").write_text("garbage")
            raise ValueError("failed half way")
    assert lake.read_table("features", "t", "p1")["x"].tolist() == [1]


def test_quarantine_keeps_the_file_and_a_reason(tmp_path):
    lake = LakeResource(root=str(tmp_path / "lake"))
    bad = tmp_path / "landing" / "broken.vcf"
    bad.parent.mkdir()
    bad.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\nchr1\tnot-a-number\n")
    record = lake.quarantine(bad, "vcf", InvalidVcfError("line 3: POS is not an integer"))
    folder = tmp_path / "lake" / "quarantine" / "vcf" / record.quarantine_id
    reason = json.loads((folder / "reason.json").read_text())
    assert reason["error_class"] == "InvalidVcfError" and reason["stage"] == "vcf"
    assert "POS is not an integer" in reason["message"]
    assert (folder / "broken.vcf").read_bytes() == bad.read_bytes()
    assert bad.exists()  # the raw file is never moved away
    assert set(record.safe_summary()) == {"quarantine_id", "stage", "error_class"}
