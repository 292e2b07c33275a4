"""Lake zones: atomic writes, hive-partitioned tables, quarantine with a machine-readable reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from radplan.errors import InvalidVcfError
from radplan.lake import atomic_path, atomic_write_text
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
