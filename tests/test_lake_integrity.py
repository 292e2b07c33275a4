"""Lake integrity: every write records a manifest, `radplan lake verify` finds damage planted by ordinary tools
(coreutils truncate/dd/rm), passes on a clean lake, and the restore drill (cp -a, delete, restore, verify) works.

The lake holds real files from ../shared/data (dcmqi's CT and SEG, a VCF) and tables read from them with
pydicom; the expected hashes come from `sha256sum`, not from the code under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from radplan.lake_integrity import PARTIAL, ALTERED, MISSING, UNEXPECTED, UNREADABLE, manifest_path, verify_local_lake
from radplan_cli.main import main as radplan
from radplan_resources import LakeResource

PATIENTS = ("p00000000000000a1", "p00000000000000b2")


def sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]


def build_lake(home: Path, shared_data: Path, lake: LakeResource | None = None) -> LakeResource:
    """A small lake as the assets write it: raw and de-identified DICOM folders, a raw VCF, per-patient and cohort tables."""
    lake = lake or LakeResource(root=str(home / "lake"))
    ct = sorted((shared_data / "imaging" / "dcmqi_ct_liver_seg" / "ct").glob("*.dcm"))
    seg = shared_data / "imaging" / "dcmqi_ct_liver_seg" / "liver_seg.dcm"
    vcf = shared_data / "genomics" / "vcf" / "vcf2maf_test.vcf"
    rows = []
    for index, patient in enumerate(PATIENTS):
        with lake.rebuild_patient_dir("raw", "dicom", patient) as staging:
            (staging / "study" / "series").mkdir(parents=True)
            for path in ct:
                shutil.copyfile(path, staging / "study" / "series" / path.name)
        with lake.rebuild_patient_dir("raw", "genomics", patient) as staging:
            shutil.copyfile(vcf, staging / vcf.name)
        with lake.rebuild_patient_dir("deid", "dicom", patient) as staging:
            shutil.copyfile(seg, staging / "seg.dcm")
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct[: index + 2]]
        table = pd.DataFrame({"sop_instance_uid": [h.SOPInstanceUID for h in headers], "rows": [int(h.Rows) for h in headers]})
        lake.write_table(table, "features", "imaging_metadata", patient)
        rows.append({"patient_key": patient, "instances": len(table)})
    lake.write_table(pd.DataFrame(rows), "features", "cohort_features")
    return lake


def verify_cli(home: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = radplan(["lake", "verify", "--home", str(home), *extra])
    return code, json.loads(capsys.readouterr().out)


def test_every_write_records_what_sha256sum_says(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    root = tmp_path / "lake"
    partition = "features/imaging_metadata/patient_key=" + PATIENTS[1]
    manifest = json.loads(manifest_path(root, partition).read_text())
    part = root / partition / "part-0.parquet"
    assert manifest["files"] == {"part-0.parquet": {"size": part.stat().st_size, "sha256": sha256sum(part)}}
    folder = json.loads(manifest_path(root, f"raw/dicom/{PATIENTS[0]}").read_text())
    expected = {f"study/series/{p.name}": sha256sum(p) for p in (shared_data / "imaging/dcmqi_ct_liver_seg/ct").glob("*.dcm")}
    assert {name: meta["sha256"] for name, meta in folder["files"].items()} == expected
    cohort = json.loads(manifest_path(root, "features/cohort_features.parquet").read_text())
    assert cohort["kind"] == "file" and cohort["files"][""]["sha256"] == sha256sum(root / "features/cohort_features.parquet")

    code, report = verify_cli(tmp_path, capsys)
    assert code == 0 and report["ok"]
    # 2 patients x (raw dicom, raw genomics, deid dicom, imaging_metadata partition) + the cohort table
    assert report["datasets_checked"] == 9
    assert report["files_hashed"] == 2 * (3 + 1 + 1 + 1) + 1
    assert report["unrecorded_files"] == 0


def test_verify_finds_a_truncated_file_and_an_altered_byte(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    root = tmp_path / "lake"
    dicom = next((root / "raw/dicom" / PATIENTS[0] / "study/series").glob("*.dcm"))
    part = root / "features/imaging_metadata" / f"patient_key={PATIENTS[1]}" / "part-0.parquet"
    size = part.stat().st_size
    subprocess.run(["truncate", "-s", "-100", str(dicom)], check=True)
    # One byte in the middle of the Parquet file, in place (same size).
    subprocess.run(["dd", "of=" + str(part), "bs=1", f"seek={size // 2}", "count=1", "conv=notrunc", "status=none"],
                   input=bytes([part.read_bytes()[size // 2] ^ 0xFF]), check=True)  # fmt: skip
    assert part.stat().st_size == size

    code, report = verify_cli(tmp_path, capsys)
    assert code == 1 and not report["ok"]
    found = {(f["dataset"], f["problem"]) for f in report["findings"]}
    assert found == {(f"raw/dicom/{PATIENTS[0]}", PARTIAL), (f"features/imaging_metadata/patient_key={PATIENTS[1]}", ALTERED)}
    by_problem = {f["problem"]: f for f in report["findings"]}
    assert by_problem[ALTERED]["file"] == "part-0.parquet"
    # Inside the PHI zones file names (as received) are withheld; the dataset (pseudonymous key) is named.
    assert by_problem[PARTIAL]["file"] == "(withheld: PHI zone)" and dicom.name not in json.dumps(report)
    assert report["problems"] == {PARTIAL: 1, ALTERED: 1}


def test_verify_finds_missing_and_unexpected_files_and_a_broken_manifest(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    root = tmp_path / "lake"
    subprocess.run(["rm", "-rf", str(root / "features/imaging_metadata" / f"patient_key={PATIENTS[0]}")], check=True)
    subprocess.run(["rm", str(root / "raw/genomics" / PATIENTS[1] / "vcf2maf_test.vcf")], check=True)
    (root / "deid/dicom" / PATIENTS[1] / "extra.dcm").write_bytes(b"not written by radplan")
    manifest_path(root, "features/cohort_features.parquet").write_text("{ truncated")
    # Exports are written by path: not covered by a manifest, counted as unrecorded (not a failure unless --strict).
    (root / "exports").mkdir()
    (root / "exports" / "recommendations.csv").write_text("patient_key\n")

    code, report = verify_cli(tmp_path, capsys)
    assert code == 1
    assert {(f["dataset"], f["problem"]) for f in report["findings"]} == {
        (f"features/imaging_metadata/patient_key={PATIENTS[0]}", MISSING),
        (f"raw/genomics/{PATIENTS[1]}", MISSING),
        (f"deid/dicom/{PATIENTS[1]}", UNEXPECTED),
        ("features/cohort_features.parquet", UNREADABLE),
    }
    assert report["unrecorded"] == {"exports/recommendations.csv": 1}


def test_unrecorded_files_fail_only_in_strict_mode(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    (tmp_path / "lake" / "exports").mkdir()
    (tmp_path / "lake" / "exports" / "report.html").write_text("<html></html>")
    assert verify_cli(tmp_path, capsys)[0] == 0
    assert verify_cli(tmp_path, capsys, "--strict")[0] == 1


def test_a_lake_without_manifests_is_indeterminate_not_intact(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    for zone in (tmp_path / "lake").iterdir():
        subprocess.run(["rm", "-rf", str(zone / ".manifests")], check=True)  # as a lake written before manifests
    code, report = verify_cli(tmp_path, capsys)
    assert code == 1 and report["indeterminate"] and not report["ok"] and report["datasets_checked"] == 0
    assert report["unrecorded_files"] == 2 * (3 + 1 + 1 + 1) + 1


def test_encrypted_raw_zone_is_verified_without_the_key(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("RADPLAN_RAW_ZONE_KEY", "ab" * 32)  # 64 hex digits
    lake = LakeResource(root=str(tmp_path / "lake"), raw_zone_encryption=True)
    vcf = shared_data / "genomics" / "vcf" / "vcf2maf_test.vcf"
    with lake.rebuild_patient_dir("raw", "genomics", PATIENTS[0]) as plain:
        shutil.copyfile(vcf, plain / vcf.name)
    sealed = tmp_path / "lake/raw/genomics" / PATIENTS[0] / vcf.name
    assert sealed.read_bytes() != vcf.read_bytes()  # ciphertext at rest: the manifest records those bytes
    monkeypatch.delenv("RADPLAN_RAW_ZONE_KEY")
    assert verify_local_lake(tmp_path / "lake").ok
    subprocess.run(["truncate", "-s", "-1", str(sealed)], check=True)
    assert [(f.dataset, f.problem) for f in verify_local_lake(tmp_path / "lake").findings] == [(f"raw/genomics/{PATIENTS[0]}", PARTIAL)]


def test_restore_drill_copy_delete_restore_verify(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    root, backup = tmp_path / "lake", tmp_path / "backup" / "lake"
    backup.parent.mkdir()
    subprocess.run(["cp", "-a", str(root), str(backup)], check=True)  # the drill's snapshot
    partition = f"features/imaging_metadata/patient_key={PATIENTS[1]}"
    patient_dir = f"raw/dicom/{PATIENTS[0]}"
    original = {p.relative_to(backup): sha256sum(p) for d in (partition, patient_dir) for p in (backup / d).rglob("*") if p.is_file()}
    subprocess.run(["rm", "-rf", str(root / partition)], check=True)
    subprocess.run(["truncate", "-s", "0", str(next((root / patient_dir).rglob("*.dcm")))], check=True)
    code, report = verify_cli(tmp_path, capsys)
    assert code == 1 and {f["dataset"] for f in report["findings"]} == {partition, patient_dir}

    assert radplan(["lake", "restore", "--home", str(tmp_path), "--from", str(backup)]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert sorted(o["dataset"] for o in restored["restored"] if o["restored"]) == sorted([partition, patient_dir])
    assert restored["verify_after"]["ok"]
    assert {p.relative_to(root): sha256sum(p) for d in (partition, patient_dir) for p in (root / d).rglob("*") if p.is_file()} == original
    assert verify_cli(tmp_path, capsys)[0] == 0
    assert LakeResource(root=str(root)).read_table("features", "imaging_metadata", PATIENTS[1])["rows"].tolist() == [512] * 3


def test_restore_refuses_a_damaged_backup(tmp_path, shared_data, capsys):
    build_lake(tmp_path, shared_data)
    root, backup = tmp_path / "lake", tmp_path / "backup"
    subprocess.run(["cp", "-a", str(root), str(backup)], check=True)
    partition = f"features/imaging_metadata/patient_key={PATIENTS[0]}"
    subprocess.run(["truncate", "-s", "-3", str(backup / partition / "part-0.parquet")], check=True)
    subprocess.run(["rm", "-rf", str(root / partition)], check=True)
    assert radplan(["lake", "restore", "--home", str(tmp_path), "--from", str(backup)]) == 1
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["restored"] == [{"dataset": partition, "restored": False, "detail": "the backup's copy is damaged (partial): not restored"}]
    assert not (root / partition).exists()


def test_verify_reads_the_s3_lake_through_the_resource(tmp_path, shared_data, monkeypatch, capsys):
    """The bucket is the system of record: objects damaged there by an S3 client are found; the working folder is intact."""
    import boto3
    from dagster_aws.s3 import S3Resource

    from production.local_services import moto_s3_server
    from radplan_resources.s3_lake import S3LakeResource

    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    with moto_s3_server(tmp_path) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, **credentials)
        client.create_bucket(Bucket="radplan-verify")
        lake = S3LakeResource(root=str(tmp_path / "lake"), s3=S3Resource(endpoint_url=endpoint, max_attempts=2, **credentials), bucket="radplan-verify", prefix="lake")
        build_lake(tmp_path, shared_data, lake)
        for name, value in {"RADPLAN_LAKE_S3_BUCKET": "radplan-verify", "RADPLAN_LAKE_S3_PREFIX": "lake", "RADPLAN_S3_ENDPOINT_URL": endpoint,
                            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        code, report = verify_cli(tmp_path, capsys)
        assert code == 0 and report["lake"] == "s3://radplan-verify/lake" and report["datasets_checked"] == 9
        assert report["files_hashed"] == 13 and report["unrecorded_files"] == 0

        part = f"lake/features/imaging_metadata/patient_key={PATIENTS[0]}/part-0.parquet"
        body = client.get_object(Bucket="radplan-verify", Key=part)["Body"].read()
        client.put_object(Bucket="radplan-verify", Key=part, Body=body[:-10])
        cohort = "lake/features/cohort_features.parquet"
        body = bytearray(client.get_object(Bucket="radplan-verify", Key=cohort)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket="radplan-verify", Key=cohort, Body=bytes(body))
        client.delete_object(Bucket="radplan-verify", Key=f"lake/raw/genomics/{PATIENTS[1]}/vcf2maf_test.vcf")

        code, report = verify_cli(tmp_path, capsys)
        assert code == 1
        assert {(f["dataset"], f["problem"]) for f in report["findings"]} == {
            (f"features/imaging_metadata/patient_key={PATIENTS[0]}", PARTIAL),
            ("features/cohort_features.parquet", ALTERED),
            (f"raw/genomics/{PATIENTS[1]}", MISSING),
        }
        # The working folder was not touched: --local verifies it clean.
        assert verify_cli(tmp_path, capsys, "--local")[0] == 0


@pytest.mark.slow
def test_the_demo_lake_verifies_clean(demo_home, capsys):
    """Every dataset the whole graph wrote (12 patients) matches its manifest; per-patient partitions are all covered."""
    code, report = verify_cli(demo_home, capsys)
    assert code == 0, report["findings"][:20]
    assert report["datasets_checked"] > 12 * 10
    uncovered = [group for group in report["unrecorded"] if group.split("/")[0] in ("raw", "deid", "features")]
    assert not uncovered, uncovered


def test_the_daily_schedule_runs_the_lake_integrity_check(tmp_path, shared_data):
    from dagster import DagsterInstance

    from support.inprocess import definitions_with

    lake = build_lake(tmp_path, shared_data)
    defs = definitions_with(lake=lake)
    assert defs.resolve_schedule_def("daily_lake_verify").job_name == "lake_verify_job"
    job = defs.resolve_job_def("lake_verify_job")
    instance = DagsterInstance.ephemeral()
    clean = job.execute_in_process(instance=instance).get_asset_check_evaluations()
    assert [(e.check_name, e.passed) for e in clean] == [("lake_integrity", True)]
    assert clean[0].metadata["datasets_checked"].value == 9

    subprocess.run(["truncate", "-s", "-1", str(tmp_path / "lake/features/cohort_features.parquet")], check=True)
    damaged = job.execute_in_process(instance=instance, raise_on_error=False).get_asset_check_evaluations()
    assert [(e.check_name, e.passed) for e in damaged] == [("lake_integrity", False)]
    assert damaged[0].metadata["damaged_datasets"].value == ["features/cohort_features.parquet"]
    assert damaged[0].metadata["problems"].value == {PARTIAL: 1}
    # An intake run does not hash the lake: the check is not part of ingest_job.
    assert not defs.resolve_job_def("ingest_job").asset_layer.asset_graph.asset_check_keys
