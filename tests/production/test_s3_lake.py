"""The S3 lake against a real S3 endpoint (moto's server on loopback): real assets write through to the bucket,
a wiped or fresh working folder reads back identical data, every object is server-side encrypted, and S3
failures are retried, then reported, without publishing a partial dataset."""

from __future__ import annotations

import json
import shutil
import time

import boto3
import botocore.exceptions
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from dagster_aws.s3 import S3Resource

from production.local_services import free_port, moto_s3_server
from radplan.lake import ZONES, file_sha256
from radplan.synth.generator import generate_cohort
from radplan_assets import genomics, ingest
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources import DeidKeyResource, LandingFolderPacs, LandingZoneResource
from radplan_resources.s3_lake import S3LakeError, S3LakeResource
from support import with_lake_io, with_upstream_sources

BUCKET = "radplan-lake-test"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture
def s3_endpoint(tmp_path):
    with moto_s3_server(tmp_path) as url:
        boto3.client("s3", endpoint_url=url, **CREDENTIALS).create_bucket(Bucket=BUCKET)
        yield url


def s3_lake(root, endpoint: str, bucket: str = BUCKET, max_attempts: int = 3, **options) -> S3LakeResource:
    return S3LakeResource(root=str(root), s3=S3Resource(endpoint_url=endpoint, max_attempts=max_attempts, **CREDENTIALS), bucket=bucket, prefix="lake", **options)


def all_objects(endpoint: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS)
    return [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for item in page.get("Contents", [])]


def local_files(root) -> dict[str, str]:
    """Every file of the lake's zones (the audit log beside them stays on the node that wrote it)."""
    return {
        str(p.relative_to(root)): file_sha256(p)
        for zone in ZONES
        for p in sorted((root / zone).rglob("*"))
        if p.is_file() and ".s3sync" not in p.parts
    }


@pytest.mark.slow
def test_assets_write_through_and_a_cold_folder_reads_back_identical(s3_endpoint, tmp_path):
    generate_cohort(tmp_path / "home", 2, 7, bad_inputs=False)
    landing = tmp_path / "home" / "landing"
    kms = {"server_side_encryption": "aws:kms", "kms_key_id": "alias/radplan-lake"}
    lake_root = tmp_path / "lake"
    resources = {
        "lake": s3_lake(lake_root, s3_endpoint, **kms),
        "landing": LandingZoneResource(folder=str(landing)),
        "pacs": LandingFolderPacs(folder=str(landing / "dicom")),
        "deid_key": DeidKeyResource(demo=True),
    }
    instance = DagsterInstance.ephemeral()
    assert materialize(with_upstream_sources([ingest.landing_inventory]), resources=with_lake_io(resources), instance=instance).success
    key = sorted(instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))[0]
    chain = [genomics.raw_genomics, genomics.variants, genomics.coverage_qc, genomics.pgx_phenotypes]
    assert materialize(with_upstream_sources(chain), resources=with_lake_io(resources), instance=instance, partition_key=key).success

    written = local_files(lake_root)
    variants = resources["lake"].read_table("features", "variants", key)
    pgx = resources["lake"].read_table("features", "pgx_phenotypes", key)
    assert len(variants) > 0 and len(pgx) > 0

    keys = all_objects(s3_endpoint)
    assert not [k for k in keys if k.startswith("lake/_staging/")], "staging objects must be cleaned up"
    assert f"lake/_manifests/features/variants/patient_key={key}.json" in keys
    assert f"lake/features/variants/patient_key={key}/part-0.parquet" in keys
    client = boto3.client("s3", endpoint_url=s3_endpoint, **CREDENTIALS)
    for object_key in keys:
        head = client.head_object(Bucket=BUCKET, Key=object_key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", "alias/radplan-lake"), object_key

    # A wiped working folder: a fresh resource reads the same tables and the same files back from S3.
    shutil.rmtree(lake_root)
    cold = s3_lake(lake_root, s3_endpoint, **kms)
    pd.testing.assert_frame_equal(cold.read_table("features", "variants", key), variants)
    pd.testing.assert_frame_equal(cold.read_table("features", "pgx_phenotypes", key), pgx)
    for zone in ("raw", "deid", "features", "quarantine"):
        cold.zone(zone)
    assert local_files(lake_root) == written

    # A step on another (cold) machine: its inputs come from the bucket, its output goes back to it.
    elsewhere = {**resources, "lake": s3_lake(tmp_path / "other-node", s3_endpoint, **kms)}
    assert materialize(with_upstream_sources([genomics.pgx_phenotypes]), resources=with_lake_io(elsewhere), instance=instance, partition_key=key).success
    pd.testing.assert_frame_equal(elsewhere["lake"].read_table("features", "pgx_phenotypes", key), pgx)


def test_tables_and_files_written_by_path_round_trip(s3_endpoint, tmp_path):
    lake = s3_lake(tmp_path / "a", s3_endpoint)
    cohort = pd.DataFrame({"patient_key": ["p0000000000000001", "p0000000000000002"], "age_years": [61.0, 70.5]})
    lake.write_table(cohort, "features", "cohort_features")
    lake.write_table(cohort.iloc[:1], "features", "patient_features", "p0000000000000001")
    report = lake.zone("exports") / "model_report.json"
    report.write_text(json.dumps({"auc": 0.7}))
    assert lake.publish_pending() == ["exports/model_report.json"]
    assert lake.publish_pending() == []  # nothing changed since

    reader = s3_lake(tmp_path / "b", s3_endpoint)
    assert reader.has_table("features", "patient_features", "p0000000000000001")
    assert not reader.has_table("features", "patient_features", "p0000000000000002")
    pd.testing.assert_frame_equal(reader.read_table("features", "cohort_features"), cohort)
    pd.testing.assert_frame_equal(reader.read_table("features", "patient_features")[list(cohort.columns)], cohort.iloc[:1])
    assert json.loads((reader.zone("exports") / "model_report.json").read_text()) == {"auc": 0.7}
    head = boto3.client("s3", endpoint_url=s3_endpoint, **CREDENTIALS).head_object(Bucket=BUCKET, Key="lake/features/cohort_features.parquet")
    assert head["ServerSideEncryption"] == "AES256"

    # A newer version from one node replaces the older one on another node's next read.
    lake.write_table(cohort.assign(age_years=[1.0, 2.0]), "features", "cohort_features")
    assert reader.read_table("features", "cohort_features")["age_years"].tolist() == [1.0, 2.0]


def test_failed_publish_leaves_the_previous_version(s3_endpoint, tmp_path):
    lake = s3_lake(tmp_path / "a", s3_endpoint)
    key = "p00000000000000aa"
    with lake.rebuild_patient_dir("features", "masks", key) as staging:
        (staging / "a.bin").write_bytes(b"version 1 a")
        (staging / "b.bin").write_bytes(b"version 1 b")

    def fail_second_upload(params, **_):
        if params["Key"].startswith("lake/_staging/") and params["Key"].endswith("b.bin"):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=s3_endpoint)

    lake.s3_client().meta.events.register("before-parameter-build.s3.PutObject", fail_second_upload)
    with pytest.raises(S3LakeError, match="could not publish a 'features'-zone dataset"):
        with lake.rebuild_patient_dir("features", "masks", key) as staging:
            (staging / "a.bin").write_bytes(b"version 2 a")
            (staging / "b.bin").write_bytes(b"version 2 b")

    keys = all_objects(s3_endpoint)
    assert not [k for k in keys if k.startswith("lake/_staging/")]
    reader = s3_lake(tmp_path / "b", s3_endpoint)
    folder = reader.zone("features") / "masks" / key
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a.bin": b"version 1 a", "b.bin": b"version 1 b"}
    # The writer's folder is newer than the bucket (its step failed); once S3 answers, publish_pending sends it.
    lake.s3_client().meta.events.unregister("before-parameter-build.s3.PutObject", fail_second_upload)
    assert lake.publish_pending() == [f"features/masks/{key}"]
    fresh = s3_lake(tmp_path / "c", s3_endpoint).zone("features") / "masks" / key
    assert {p.name: p.read_bytes() for p in fresh.iterdir()} == {"a.bin": b"version 2 a", "b.bin": b"version 2 b"}


def test_missing_bucket_and_unreachable_endpoint_give_clear_errors(s3_endpoint, tmp_path):
    frame = pd.DataFrame({"patient_key": ["p0000000000000001"], "x": [1]})
    with pytest.raises(S3LakeError, match=r"s3://radplan-no-such-bucket/lake .*NoSuchBucket"):
        s3_lake(tmp_path / "a", s3_endpoint, bucket="radplan-no-such-bucket").write_table(frame, "features", "t")

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    lake = s3_lake(tmp_path / "b", down, max_attempts=3)
    attempts = []
    lake.s3_client().meta.events.register("before-send.s3", lambda **kwargs: attempts.append(kwargs["request"].url))
    started = time.monotonic()
    with pytest.raises(S3LakeError, match=r"\(up to 4 attempts for retryable errors\): EndpointConnectionError"):
        lake.write_table(frame, "features", "t")
    # botocore's standard retry mode: max_attempts=3 retries after the first call, then the error.
    assert len(attempts) == 4, attempts
    assert time.monotonic() - started < 30
    assert not (tmp_path / "b" / "features" / ".s3sync").exists()  # nothing recorded as published


def test_environment_switches_the_lake_to_s3(monkeypatch, tmp_path):
    from definitions import build_resources

    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    monkeypatch.setenv("RADPLAN_LAKE_S3_BUCKET", BUCKET)
    monkeypatch.setenv("RADPLAN_LAKE_S3_PREFIX", "prod/lake")
    monkeypatch.setenv("RADPLAN_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("RADPLAN_S3_KMS_KEY_ID", "alias/radplan")
    lake = build_resources()["lake"]
    assert isinstance(lake, S3LakeResource)
    assert (lake.bucket, lake.prefix, lake.s3.endpoint_url) == (BUCKET, "prod/lake", "http://127.0.0.1:9")
    assert (lake.server_side_encryption, lake.kms_key_id) == ("aws:kms", "alias/radplan")
    monkeypatch.setenv("RADPLAN_S3_SSE", "AES256")
    with pytest.raises(ValueError, match="kms_key_id is only valid with server_side_encryption='aws:kms'"):
        build_resources()
    monkeypatch.delenv("RADPLAN_LAKE_S3_BUCKET")
    assert not isinstance(build_resources()["lake"], S3LakeResource)
