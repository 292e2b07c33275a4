"""Audit log: concurrent appends keep the hash chain, tampering is found, and a real run's trail is complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import radplan_cli.main as cli
from radplan.audit import AuditLog, AuditRecord, Materialization, compare_run, iter_records, verify_chain
from radplan_cli.audit import audit_complete_for_run
from radplan.privacy import PHI_ZONES, load_canaries, scan_tree
from radplan_resources import LakeResource

REPO_ROOT = Path(__file__).resolve().parents[2]
PATIENT_KEY = re.compile(r"p[0-9a-f]{16}")

APPENDER = """
import sys
import radplan_cli.main as cli
from radplan.audit import AuditLog, AuditRecord
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[2])):
    log.append(AuditRecord(action="write", zone="features", target=f"table_{sys.argv[3]}_{i}", rows=i))
"""


def _lines(folder: Path) -> list[str]:
    (path,) = sorted(folder.glob("audit-*.jsonl"))
    return path.read_text().splitlines(keepends=True)


def test_two_processes_appending_at_once_keep_one_intact_chain(tmp_path):
    per_process = 300
    workers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), str(per_process), name], cwd=REPO_ROOT) for name in ("a", "b")
    ]
    assert all(worker.wait(timeout=120) == 0 for worker in workers)
    records = list(iter_records(tmp_path))
    assert len(records) == 2 * per_process
    assert {r["target"] for r in records} == {f"table_{n}_{i}" for n in ("a", "b") for i in range(per_process)}
    assert len({r["who"]["pid"] for r in records}) == 2
    assert verify_chain(tmp_path) == []


def test_deleted_edited_or_reordered_lines_break_the_chain(tmp_path):
    log = AuditLog(tmp_path, fsync=False)
    for i in range(5):
        log.append(AuditRecord(action="read", zone="deid", target="notes", patient_key="p0123456789abcdef", rows=i))
    (path,) = sorted(tmp_path.glob("audit-*.jsonl"))
    original = path.read_text().splitlines(keepends=True)
    assert verify_chain(tmp_path) == []
    # (lines, first line whose previous-line hash no longer matches)
    tampered = {
        "deleted": (original[:2] + original[3:], 3),
        "edited": (original[:2] + [original[2].replace('"rows":2', '"rows":7')] + original[3:], 4),
        "reordered": (original[:1] + [original[2], original[1]] + original[3:], 2),
    }
    for name, (lines, first_break) in tampered.items():
        path.write_text("".join(lines))
        breaks = verify_chain(tmp_path)
        assert breaks and breaks[0].line_number == first_break, name
    with pytest.raises(ValueError, match="unknown audit action"):
        AuditRecord(action="copy", zone="raw", target="x")


def test_access_outside_dagster_is_recorded_with_no_run_and_the_caller(tmp_path):
    lake = LakeResource(root=str(tmp_path / "lake"))
    frame = pd.DataFrame({"value": [1, 2, 3]})
    lake.write_table(frame, "features", "scores", "p0123456789abcdef")
    lake.read_table("features", "scores", "p0123456789abcdef")
    with lake.rebuild_patient_dir("features", "volumes", "p0123456789abcdef") as staging:
        (staging / "ct.nii.gz").write_bytes(b"x" * 10)
    records = list(iter_records(tmp_path / "lake" / "audit"))
    assert [(r["action"], r["zone"], r["target"], r["rows"]) for r in records] == [
        ("write", "features", "scores", 3),
        ("read", "features", "scores", 3),
        ("write", "features", "features/volumes/p0123456789abcdef", None),
    ]
    assert records[2]["bytes"] == 10 and records[2]["files"] == 1
    assert all(r["run_id"] is None and r["asset_key"] is None and r["patient_key"] == "p0123456789abcdef" for r in records)
    assert records[0]["who"]["pid"] == os.getpid() and records[0]["who"]["os_user"]


def test_completeness_compares_materializations_with_records():
    records = [
        {"run_id": "r1", "asset_key": "deid_ehr", "partition_key": "pa", "action": "write"},
        {"run_id": "r1", "asset_key": "clinical_notes", "partition_key": "pa", "action": "read"},
        {"run_id": "r2", "asset_key": "deid_notes", "partition_key": "pa", "action": "write"},
    ]
    done = [Materialization("deid_ehr", "pa"), Materialization("clinical_notes", "pa"), Materialization("deid_notes", "pa")]
    report = compare_run("r1", done, records, [])
    assert report.missing == [Materialization("deid_notes", "pa")]  # audited, but under another run
    assert report.without_write == [Materialization("clinical_notes", "pa")]
    assert not report.complete


@pytest.mark.slow
def test_a_real_run_is_completely_audited_and_a_deleted_line_is_found(plain_home, tmp_path, monkeypatch, capsys):
    instance, audit_dir = plain_home.instance, plain_home.lake / "audit"
    preparation_runs = plain_home.run_ids[1:]
    for run_id in preparation_runs:
        report = audit_complete_for_run(instance, run_id, audit_dir)
        assert report.complete, report.as_dict()
        assert report.materializations >= 10  # imaging, genomics and EHR assets of one patient
    records = [r for r in iter_records(audit_dir) if r["run_id"] in preparation_runs]
    assert {r["action"] for r in records} >= {"read", "write"}
    assert {r["zone"] for r in records} >= {"raw", "deid", "features"}
    assert all(PATIENT_KEY.fullmatch(r["partition_key"]) for r in records)
    assert {r["partition_key"] for r in records} == set(plain_home.partition_keys)
    assert all(len(line.encode()) < 4096 for line in _lines(audit_dir))

    # Delete one line in a copy of the log: the hash chain breaks there.
    copy = tmp_path / "audit"
    shutil.copytree(audit_dir, copy)
    (path,) = sorted(copy.glob("audit-*.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    run_id = preparation_runs[0]
    of_deid_ehr = [i for i, line in enumerate(lines) if json.loads(line)["run_id"] == run_id and json.loads(line)["asset_key"] == "deid_ehr"]
    path.write_text("".join(lines[: of_deid_ehr[-1]] + lines[of_deid_ehr[-1] + 1 :]))
    report = audit_complete_for_run(instance, run_id, copy)
    assert report.chain_breaks and not report.complete
    # Delete every record of that asset's step (a writer that skipped the log): the check names the step.
    path.write_text("".join(line for i, line in enumerate(lines) if i not in of_deid_ehr))
    report = audit_complete_for_run(instance, run_id, copy)
    assert report.missing == [Materialization("deid_ehr", json.loads(lines[of_deid_ehr[0]])["partition_key"])]

    # The same through the command line (in-process; monkeypatch restores the variables it sets).
    monkeypatch.setenv("RADPLAN_HOME", str(plain_home.home))
    monkeypatch.setenv("DAGSTER_HOME", str(plain_home.home / "dagster_home"))
    assert cli.main(["audit-check", "--run-id", run_id, "--home", str(plain_home.home)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["complete"] is True
    assert cli.main(["audit-check", "--run-id", run_id, "--home", str(plain_home.home), "--audit-dir", str(copy)]) == 1
    assert json.loads(capsys.readouterr().out)[0]["missing"]


@pytest.mark.slow
def test_the_audit_log_is_scanned_for_phi_and_holds_none(plain_home, security_cohort, tmp_path):
    canaries = load_canaries(security_cohort / "truth" / "phi_canaries.json")
    audit_dir = plain_home.lake / "audit"
    assert not any(Path(zone) in [Path("lake/audit"), Path("lake")] for zone in PHI_ZONES)
    hits, scanned = scan_tree(audit_dir, canaries)
    assert scanned >= 1 and hits == []
    # The default scan of a home covers lake/audit: a canary planted there is found.
    home = tmp_path / "home"
    shutil.copytree(audit_dir, home / "lake" / "audit")
    victim = next(c for c in canaries if len(c) >= 8 and c.isalpha())
    with open(next((home / "lake" / "audit").glob("*.jsonl")), "a") as fh:
        fh.write(json.dumps({"target": victim}) + "\n")
    hits, _ = scan_tree(home, canaries)
    assert {hit.canary for hit in hits} == {victim.lower()}
