"""The privacy scanner finds canaries inside decoded formats, and only whole tokens."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3

import pandas as pd
import pydicom
from pydicom.data import get_testdata_file

from radplan.privacy import CanaryMatcher, scan_tree


def test_matcher_finds_whole_tokens_case_insensitively():
    matcher = CanaryMatcher(["Ruth", "Sumiko254 Larue605", "1.2.840.10008.99", "MRN0001234", "ab"])
    assert matcher.find("the truth is out there") == set()
    assert matcher.find("Patient RUTH was seen") == {"ruth"}
    assert matcher.find("note for sumiko254 larue605.") == {"sumiko254 larue605"}
    assert matcher.find("uid 1.2.840.10008.99.7 leaked") == {"1.2.840.10008.99"}
    assert matcher.find("MRN00012345") == set()
    assert matcher.find("ab ab ab") == set()  # too short to be a canary


def test_scan_tree_decodes_dicom_parquet_sqlite_json_base64_and_gzip(tmp_path):
    canary = "Zyxwvut Canary"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00091010, "LO", canary)  # private tag
    ds.save_as(tmp_path / "a.dcm")
    pd.DataFrame({"x": [["ok", canary]]}).to_parquet(tmp_path / "b.parquet")
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("CREATE TABLE t (v BLOB)")
        db.execute("INSERT INTO t VALUES (?)", (canary.encode(),))
    (tmp_path / "d.json").write_text(json.dumps({"data": base64.b64encode(f"text {canary} text".encode()).decode()}))
    (tmp_path / "e.csv.gz").write_bytes(gzip.compress(f"a,{canary}\n".encode()))
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "raw.txt").write_text(canary)  # PHI zone: not scanned

    hits, scanned = scan_tree(tmp_path, [canary])
    assert scanned == 5
    assert sorted({h.path for h in hits}) == ["a.dcm", "b.parquet", "c.db", "d.json", "e.csv.gz"]
    assert all(canary not in h.redacted() for h in hits)


def test_a_name_inside_shipped_citations_is_not_a_hit_but_elsewhere_it_is():
    from radplan.privacy import public_reference_texts

    citations = public_reference_texts()
    citation = next(c for c in citations if "Robert" in c)
    matcher = CanaryMatcher(["Robert"], citations)
    assert matcher.find(f"guideline: {citation}") == set()
    assert matcher.find(f"guideline: {citation}; patient Robert returns") == {"robert"}
