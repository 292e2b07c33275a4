"""The lake on S3: a local working folder that writes through to, and reads through from, a bucket.

Object layout (``<prefix>`` inside the bucket) mirrors the local lake, so Spark, Athena or DuckDB can read
``s3://<bucket>/<prefix>/features/patient_features/`` as the same hive-partitioned dataset:

    <prefix>/<zone>/<path>                     data objects (server-side encrypted)
    <prefix>/_manifests/<zone>/<dataset>.json   one manifest per published dataset, written last
    <prefix>/_staging/<version>/...             uploads in flight (removed after the copy into place)

A *dataset* is the unit the lake replaces atomically: a cohort table file, one patient's partition folder, one
patient folder of ``rebuild_patient_dir``, or any other single file written under the root (exports, reports,
quarantine records). Publishing uploads every file of the dataset to a staging key, copies them into place
(server side), then writes the manifest (file names, sizes, SHA-256); a failure before the manifest leaves the
previous version's objects and manifest untouched. Readers trust only the manifest and verify every file's hash.

Locally, ``<zone>/.s3sync/<dataset>.json`` remembers the manifest (and its ETag) last published or fetched, so a
warm folder costs one LIST per zone per run and a cold one (a fresh pod, a wiped disk) is filled from the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import boto3.exceptions
import botocore.exceptions
import pandas as pd
import pyarrow as pa
from dagster import InitResourceContext
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, model_validator

from radplan.lake import ZONES, atomic_path, file_sha256
from radplan.lake_integrity import IntegrityReport, StoredFiles, build_manifest, is_hidden, record_manifest, verify, well_formed
from radplan_resources.lake import PARTITION_COLUMN, LakeResource, rebuild_dir
from radplan.settings import S3LakeSettings

SYNC_FOLDER = ".s3sync"
MANIFEST_PREFIX = "_manifests"
STAGING_PREFIX = "_staging"
S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.Boto3Error)


class S3LakeError(RuntimeError):
    """An S3 operation of the lake failed after botocore's retries (names the zone and bucket, never a file)."""


def dataset_of(relative_file: str, published: set[str]) -> str:
    """The dataset a file under the root belongs to: its nearest published ancestor folder, else the file itself."""
    parts = relative_file.split("/")
    for depth in range(len(parts) - 1, 1, -1):
        folder = "/".join(parts[:depth])
        if folder in published:
            return folder
    return relative_file


class S3LakeResource(LakeResource):
    """Write-through / read-through lake: ``root`` is the local working folder, the bucket is the system of record."""

    s3: S3Resource = Field(description="dagster-aws S3 resource (endpoint, region, credentials, max_attempts)")
    bucket: str = Field(description="Bucket holding the lake (PHI-bearing: raw and quarantine zones)")
    prefix: str = Field(default="radplan", description="Key prefix of the lake inside the bucket")
    server_side_encryption: Literal["AES256", "aws:kms"] = Field(
        default="AES256", description="S3 server-side encryption of every object: AES256 (SSE-S3) or aws:kms (SSE-KMS)"
    )
    kms_key_id: str | None = Field(default=None, description="KMS key id or ARN for aws:kms (None: the bucket's AWS-managed key)")

    _client: Any = PrivateAttr(default=None)
    _hydrated_zones: set = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _kms_key_needs_kms(self):
        if self.kms_key_id and self.server_side_encryption != "aws:kms":
            raise ValueError("kms_key_id is only valid with server_side_encryption='aws:kms'")
        return self

    # ---- S3 plumbing -------------------------------------------------------------------------------------------

    def s3_client(self):
        """The boto3 client built by dagster-aws (its retry config: standard mode, ``s3.max_attempts`` attempts)."""
        if self._client is None:
            self._client = self.s3.get_client()
        return self._client

    @property
    def _encryption(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.server_side_encryption}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def _manifest_key(self, dataset: str) -> str:
        return self._key(MANIFEST_PREFIX, f"{dataset}.json")

    @contextmanager
    def _s3_errors(self, action: str, dataset: str) -> Iterator[None]:
        """Turn botocore/boto3 failures into one clear error; the zone is named, paths are not (they may hold PHI)."""
        try:
            yield
        except S3_ERRORS as error:
            zone = dataset.split("/", 1)[0]
            code = getattr(error, "response", {}).get("Error", {}).get("Code") or type(error).__name__
            endpoint = self.s3.endpoint_url or "AWS S3"
            # botocore reads ``max_attempts`` as retries after the first call: it records the total it will make.
            attempts = self.s3_client().meta.config.retries.get("total_max_attempts", self.s3.max_attempts)
            raise S3LakeError(
                f"S3 lake: could not {action} a {zone!r}-zone dataset in s3://{self.bucket}/{self.prefix} at {endpoint} "
                f"(up to {attempts} attempts for retryable errors): {code}"
            ) from error

    def _sync_record_path(self, dataset: str) -> Path:
        zone, _, rest = dataset.partition("/")
        return self.root_path / zone / SYNC_FOLDER / f"{rest}.json"

    def _read_sync_record(self, dataset: str) -> dict | None:
        path = self._sync_record_path(dataset)
        return json.loads(path.read_text()) if path.exists() else None

    def _write_sync_record(self, dataset: str, manifest: dict, etag: str) -> None:
        target = self.root_path / dataset
        stats = {}
        for name in manifest["files"]:
            stat = (target / name if name else target).stat()
            stats[name] = [stat.st_size, stat.st_mtime_ns]
        record = {"etag": etag, "manifest": manifest, "local_stat": stats}
        path = self._sync_record_path(dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, sort_keys=True))

    # ---- publishing (local → S3) ------------------------------------------------------------------------------

    def publish(self, dataset: str) -> None:
        """Upload one dataset (a file or folder relative to the root), then its manifest; stale objects go last."""
        local = self.root_path / dataset
        if not local.exists():
            raise FileNotFoundError(f"nothing to publish for a {dataset.split('/', 1)[0]!r}-zone dataset")
        version = uuid.uuid4().hex
        # The same manifest the local lake records (radplan.lake_integrity), plus the published version.
        manifest = {**build_manifest(dataset, local), "version": version}
        files = list(manifest["files"])
        client = self.s3_client()
        relative_keys = {name: f"{dataset}/{name}" if name else dataset for name in files}
        previous = self._remote_manifest(dataset)
        with self._s3_errors("publish", dataset):
            try:
                # 1. every file to staging: a failure here leaves the published version untouched
                for name, relative in relative_keys.items():
                    client.upload_file(str(local / name if name else local), self.bucket, self._key(STAGING_PREFIX, version, relative), ExtraArgs=self._encryption)
                # 2. server-side copies into place (each object replaced atomically), 3. the manifest, last
                for relative in relative_keys.values():
                    source = {"Bucket": self.bucket, "Key": self._key(STAGING_PREFIX, version, relative)}
                    client.copy(source, self.bucket, self._key(relative), ExtraArgs=self._encryption)
                response = client.put_object(
                    Bucket=self.bucket,
                    Key=self._manifest_key(dataset),
                    Body=json.dumps(manifest, sort_keys=True).encode(),
                    ContentType="application/json",
                    **self._encryption,
                )
            finally:
                self._delete_keys([self._key(STAGING_PREFIX, version, r) for r in relative_keys.values()], best_effort=True)
            if previous:
                stale = set(previous["files"]) - set(files)
                self._delete_keys([self._key(f"{dataset}/{name}" if name else dataset) for name in stale], best_effort=False)
        self._write_sync_record(dataset, manifest, response["ETag"])

    def _delete_keys(self, keys: list[str], best_effort: bool) -> None:
        client = self.s3_client()
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            try:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except S3_ERRORS:
                if not best_effort:
                    raise

    def publish_pending(self) -> list[str]:
        """Publish every file under the root that no manifest covers yet or that changed since (exports, reports,
        quarantine records written by path rather than through write_table); returns the datasets published."""
        published: dict[str, dict] = {}
        for zone in ZONES:
            records = self.root_path / zone / SYNC_FOLDER
            for path in records.rglob("*.json") if records.is_dir() else []:
                rest = str(path.relative_to(records)).replace(os.sep, "/").removesuffix(".json")
                published[f"{zone}/{rest}"] = json.loads(path.read_text())
        dirty: set[str] = set()
        for zone in ZONES:
            folder = self.root_path / zone
            for path in folder.rglob("*") if folder.is_dir() else []:
                relative = str(path.relative_to(self.root_path)).replace(os.sep, "/")
                if is_hidden(relative) or not path.is_file():
                    continue
                dataset = dataset_of(relative, set(published))
                name = relative[len(dataset) + 1 :] if dataset != relative else ""
                recorded = published.get(dataset, {}).get("local_stat", {}).get(name)
                stat = path.stat()
                if recorded != [stat.st_size, stat.st_mtime_ns]:
                    dirty.add(dataset)
        for dataset in sorted(dirty):
            self.publish(dataset)
        return sorted(dirty)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        # Files written by path (exports, model report, quarantine) reach the bucket when the step ends.
        self.publish_pending()

    # ---- fetching (S3 → local) --------------------------------------------------------------------------------

    def _remote_manifest(self, dataset: str) -> dict | None:
        client = self.s3_client()
        with self._s3_errors("read the manifest of", dataset):
            try:
                body = client.get_object(Bucket=self.bucket, Key=self._manifest_key(dataset))["Body"].read()
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
        return json.loads(body)

    def _remote_datasets(self, dataset_prefix: str) -> dict[str, str]:
        """Published datasets under a prefix (``features/`` or ``features/cohort_features``) → manifest ETag."""
        client = self.s3_client()
        listing_prefix = self._key(MANIFEST_PREFIX, dataset_prefix)
        found: dict[str, str] = {}
        with self._s3_errors("list", dataset_prefix):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=listing_prefix):
                for item in page.get("Contents", []):
                    dataset = item["Key"][len(self._key(MANIFEST_PREFIX)) + 1 :].removesuffix(".json")
                    found[dataset] = item["ETag"]
        return found

    def fetch(self, dataset: str, etag: str | None = None) -> bool:
        """Make the local copy of one dataset equal its published version; False when nothing is published."""
        record = self._read_sync_record(dataset)
        if etag is not None and record is not None and record["etag"] == etag and (self.root_path / dataset).exists():
            return True
        client = self.s3_client()
        with self._s3_errors("fetch", dataset):
            try:
                response = client.get_object(Bucket=self.bucket, Key=self._manifest_key(dataset))
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return False
                raise
            manifest = json.loads(response["Body"].read())
            target = self.root_path / dataset
            if manifest["kind"] == "file":
                with atomic_path(target) as tmp:
                    self._download(dataset, dataset, manifest["files"][""], tmp)
            else:
                with rebuild_dir(target) as staging:
                    for name, meta in manifest["files"].items():
                        (staging / name).parent.mkdir(parents=True, exist_ok=True)
                        self._download(dataset, f"{dataset}/{name}", meta, staging / name)
        if dataset.split("/", 1)[0] in ZONES:
            # The working folder stays verifiable like a local lake, with the manifest its own writer would record.
            record_manifest(self.root_path, {name: value for name, value in manifest.items() if name != "version"})
        self._write_sync_record(dataset, manifest, response["ETag"])
        return True

    def _download(self, dataset: str, relative: str, meta: dict, destination: Path) -> None:
        self.s3_client().download_file(self.bucket, self._key(relative), str(destination))
        if file_sha256(destination) != meta["sha256"]:
            raise S3LakeError(
                f"S3 lake: an object of a {dataset.split('/', 1)[0]!r}-zone dataset in s3://{self.bucket}/{self.prefix} "
                "does not match its manifest (a concurrent writer?); run again"
            )

    def fetch_prefix(self, dataset_prefix: str) -> int:
        """Fetch every published dataset under a prefix whose local copy is missing or stale; returns how many."""
        fetched = 0
        for dataset, etag in self._remote_datasets(dataset_prefix).items():
            record = self._read_sync_record(dataset)
            if record is None or record["etag"] != etag or not (self.root_path / dataset).exists():
                self.fetch(dataset, etag)
                fetched += 1
        return fetched

    # ---- integrity -------------------------------------------------------------------------------------------

    def verify_integrity(self, zones: Sequence[str] = ZONES) -> IntegrityReport:
        """Re-read the bucket (the system of record) against its published manifests: one listing of the lake's
        objects, then every recorded object is streamed and hashed (``radplan lake verify`` with the S3 lake)."""
        client = self.s3_client()
        manifests: list[tuple[str, dict | None]] = []
        sizes: dict[str, int] = {}
        skip = len(self._key()) + 1 if self._key() else 0  # "<prefix>/"
        for zone in zones:
            with self._s3_errors("verify", f"{zone}/"):
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(zone) + "/"):
                    for item in page.get("Contents", []):
                        relative = item["Key"][skip:]
                        if not is_hidden(relative):
                            sizes[relative] = item["Size"]
                for dataset in sorted(self._remote_datasets(f"{zone}/")):
                    try:
                        manifest = self._remote_manifest(dataset)
                    except ValueError:  # not JSON
                        manifest = None
                    manifests.append((dataset, well_formed(dataset, manifest)))

        def sha256(relative: str) -> str:
            digest = hashlib.sha256()
            with self._s3_errors("verify", relative):
                body = client.get_object(Bucket=self.bucket, Key=self._key(relative))["Body"]
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest()

        return verify(manifests, StoredFiles(sizes=sizes, sha256=sha256))

    # ---- the LakeResource interface -----------------------------------------------------------------------------

    def zone(self, name: str) -> Path:
        path = super().zone(name)
        if name not in self._hydrated_zones:
            # Before the first use in this run: assets also read zone files by path (DICOM, volumes, masks).
            self._hydrated_zones.add(name)
            self.fetch_prefix(f"{name}/")
        return path

    def write_table(self, frame: pd.DataFrame | pa.Table, zone: str, table: str, patient_key: str | None = None) -> Path:
        path = super().write_table(frame, zone, table, patient_key)
        self.publish(self.relative(path))
        return path

    @contextmanager
    def rebuild_patient_dir(self, zone: str, kind: str, patient_key: str) -> Iterator[Path]:
        with super().rebuild_patient_dir(zone, kind, patient_key) as staging:
            yield staging
        self.publish(f"{zone}/{kind}/{patient_key}")

    def ops_written(self, path: Path) -> None:
        self.publish(self.relative(path))

    def read_table(self, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame:
        self._refresh(zone, table, patient_key)
        return super().read_table(zone, table, patient_key)

    def has_table(self, zone: str, table: str, patient_key: str | None = None) -> bool:
        self._refresh(zone, table, patient_key)
        return super().has_table(zone, table, patient_key)

    def _refresh(self, zone: str, table: str, patient_key: str | None) -> None:
        """Pick up what another process published since this run's zone hydration (one LIST)."""
        self.zone(zone)
        if patient_key is not None:
            dataset = f"{zone}/{table}/{PARTITION_COLUMN}={patient_key}"
            etag = self._remote_datasets(dataset).get(dataset)
            if etag is not None:
                self.fetch(dataset, etag)
            return
        for dataset, etag in self._remote_datasets(f"{zone}/{table}").items():
            if dataset == f"{zone}/{table}.parquet" or dataset.startswith(f"{zone}/{table}/"):
                self.fetch(dataset, etag)


def s3_lake_from_settings(root: str, settings: S3LakeSettings | None, **lake_options: Any) -> S3LakeResource | None:
    """The S3 lake when ``RADPLAN_LAKE_S3_BUCKET`` is set (credentials: the standard AWS chain), else None."""
    if settings is None:
        return None
    return S3LakeResource(
        root=root,
        s3=S3Resource(endpoint_url=settings.endpoint_url, region_name=settings.region_name, max_attempts=settings.max_attempts),
        bucket=settings.bucket,
        prefix=settings.prefix,
        server_side_encryption=settings.server_side_encryption,
        kms_key_id=settings.kms_key_id,
        **lake_options,
    )
