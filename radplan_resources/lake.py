"""The lake: zones as folders, hive-partitioned Parquet tables, atomic writes, quarantine.

Every access to patient-level data through the resource is recorded in the
append-only audit log (``<lake>/audit``, see ``radplan.audit``), with the running
Dagster step's run id, asset key and partition when there is one. When
``raw_zone_encryption`` is on, every file in the raw zone is encrypted at rest
with the key from ``RADPLAN_RAW_ZONE_KEY`` (``radplan.crypto``): writers fill a
plaintext scratch folder that is encrypted into the zone on success, readers get
plaintext through ``open_raw``/``read_raw_bytes``/``read_table``. Every table and
patient folder written records its content manifest (file sizes and SHA-256,
``radplan.lake_integrity``) in ``<zone>/.manifests``, which ``radplan lake verify``
checks the lake against.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from radplan import crypto
from radplan.audit import AUDIT_FOLDER, AuditLog, AuditRecord, process_identity
from radplan.lake import (
    COMPACTED_DIR,
    PARTITION_COLUMN,
    ZONES,
    QuarantineRecord,
    atomic_path,
    quarantine_file,
    read_hive_dataset_compacted,
    rebuild_dir,
    refresh_compacted_snapshot,
)
from radplan.lake_integrity import IntegrityReport, build_manifest, record_manifest, verify_local_lake

ENCRYPTED_ZONES = ("raw",)
# Run tags that name who launched a run (Dagster+ sets dagster/user; a launcher may set user).
LAUNCHER_TAGS = ("dagster/user", "user")


def execution_scope() -> dict:
    """Run id, asset key(s), partition and who, from the running Dagster step; nulls outside one (CLI, tests)."""
    from dagster import OpExecutionContext
    from dagster import DagsterInvariantViolationError

    who = process_identity()
    try:
        context = OpExecutionContext.get()
    except DagsterInvariantViolationError:
        return {"run_id": None, "asset_key": None, "partition_key": None, "who": who}
    keys = sorted(key.to_user_string() for key in context.selected_asset_keys)
    if not keys:  # an asset check step
        keys = sorted({check.asset_key.to_user_string() for check in context.selected_asset_check_keys})
    tags = context.run.tags
    launcher = next((tags[tag] for tag in LAUNCHER_TAGS if tags.get(tag)), None)
    who = {**who, "job": context.job_name, **({"launched_by": launcher} if launcher else {})}
    return {
        "run_id": context.run_id,
        "asset_key": ",".join(keys) or None,
        "partition_key": context.partition_key if context.has_partition_key else None,
        "who": who,
    }


def _bare_patient_key(folder_name: str) -> str:
    return folder_name.removeprefix(f"{PARTITION_COLUMN}=")


def _tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


class LakeResource(ConfigurableResource):
    """A local-folder lake (embedded default).

    Per-patient tables are Parquet datasets hive-partitioned by ``patient_key``
    (``<zone>/<table>/patient_key=<key>/part-*.parquet``) so Spark and pandas read
    all patients as one dataset; cohort tables are single files (``<zone>/<table>.parquet``).
    Subclasses (other storage) keep the method signatures and call ``audit`` for each access.
    """

    root: str = Field(description="Lake root folder (RADPLAN_HOME/lake by default)")
    raw_zone_encryption: bool = Field(
        default=False, description="Encrypt raw-zone files at rest (AES-256-GCM) with the key in RADPLAN_RAW_ZONE_KEY"
    )
    audit_dir: str | None = Field(default=None, description="Audit log folder (default <root>/audit, outside every zone)")
    scratch_dir: str | None = Field(
        default=None, description="Parent of the private folders holding decrypted raw files while in use (default: system temp)"
    )

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def audit_path(self) -> Path:
        return Path(self.audit_dir) if self.audit_dir else self.root_path / AUDIT_FOLDER

    def zone(self, name: str) -> Path:
        if name not in ZONES:
            raise ValueError(f"unknown lake zone {name!r}; zones are {ZONES}")
        path = self.root_path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- audit -----------------------------------------------------------------------------------------------

    def audit(
        self, action: str, zone: str, target: str, patient_key: str | None = None, rows: int | None = None, nbytes: int | None = None, files: int | None = None
    ) -> None:
        """Append one access record (keys, names and counts only) with the current run/asset/partition."""
        record = AuditRecord(action=action, zone=zone, target=target, patient_key=patient_key, rows=rows, bytes=nbytes, files=files, **execution_scope())
        AuditLog(self.audit_path).append(record)

    # --- raw-zone encryption ---------------------------------------------------------------------------------

    def raw_key(self) -> crypto.RawZoneKey | None:
        """The raw-zone key when encryption is on (read from the environment at use, never stored in config)."""
        if not self.raw_zone_encryption:
            return None
        key = crypto.key_from_env()
        if key is None:
            raise RuntimeError(f"raw_zone_encryption is on but {crypto.KEY_ENV_VAR} is not set")
        return key

    def _key_for(self, zone: str) -> crypto.RawZoneKey | None:
        return self.raw_key() if zone in ENCRYPTED_ZONES else None

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A private (0700) folder for plaintext, removed however the block ends."""
        folder = Path(tempfile.mkdtemp(prefix="radplan-raw-", dir=self.scratch_dir))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _refuse_encrypted(self, path: Path) -> None:
        if crypto.is_encrypted_file(path):
            raise crypto.RawZoneCryptoError(
                f"{self.relative(path)}: encrypted at rest, but this lake has raw_zone_encryption off; set {crypto.KEY_ENV_VAR}"
            )

    def _decrypt_file(self, source: Path, target: Path, key: crypto.RawZoneKey) -> int:
        try:
            with open(source, "rb") as sealed, open(target, "wb") as plain:
                return crypto.decrypt_stream(sealed, plain, key, self.relative(source))
        except BaseException:
            target.unlink(missing_ok=True)  # never leave unauthenticated plaintext behind
            raise

    def _encrypt_tree(self, plain: Path, staging: Path, final: Path, key: crypto.RawZoneKey) -> None:
        for item in sorted(plain.rglob("*")):
            relative = item.relative_to(plain)
            if item.is_dir():
                (staging / relative).mkdir(parents=True, exist_ok=True)
                continue
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            with open(item, "rb") as source, open(staging / relative, "wb") as sealed:
                crypto.encrypt_stream(source, sealed, key, self.relative(final / relative))

    def _raw_file(self, path: Path | str) -> tuple[Path, str]:
        path = Path(path) if Path(path).is_absolute() else self.root_path / path
        relative = self.relative(path)
        if relative.split("/", 1)[0] not in ENCRYPTED_ZONES:
            raise ValueError(f"{relative} is not in the raw zone")
        if not path.is_file():
            raise FileNotFoundError(f"{relative} does not exist")
        return path, relative

    @staticmethod
    def _patient_of(relative: str) -> str | None:
        parts = relative.split("/")
        return _bare_patient_key(parts[2]) if len(parts) > 3 else None

    @contextmanager
    def open_raw(self, path: Path | str, companions: Sequence[str] = ()) -> Iterator[Path]:
        """A plaintext path for a raw-zone file, for tools that need a path (pydicom, cyvcf2, pysam).

        ``companions`` are sidecar suffixes (".tbi", ".bai") decrypted beside it when present.
        Without encryption this is the file itself; with it, a decrypted copy in a private
        scratch folder that is deleted when the block ends. Audited as one read.
        """
        path, relative = self._raw_file(path)
        sidecars = [path.with_name(path.name + suffix) for suffix in companions if path.with_name(path.name + suffix).is_file()]
        key = self.raw_key()
        if key is None:
            for item in (path, *sidecars):
                self._refuse_encrypted(item)
            self.audit("read", "raw", relative, patient_key=self._patient_of(relative), nbytes=path.stat().st_size, files=1 + len(sidecars))
            yield path
            return
        with self._scratch() as scratch:
            # Mirror the lake path so a quarantine reason written from the copy still says which raw file it was.
            plain = scratch / relative
            plain.parent.mkdir(parents=True)
            nbytes = self._decrypt_file(path, plain, key)
            for sidecar in sidecars:
                self._decrypt_file(sidecar, plain.with_name(sidecar.name), key)
            self.audit("read", "raw", relative, patient_key=self._patient_of(relative), nbytes=nbytes, files=1 + len(sidecars))
            yield plain

    def read_raw_bytes(self, path: Path | str) -> bytes:
        """A (small) raw-zone file's plaintext bytes, decrypted and authenticated when encryption is on; audited."""
        path, relative = self._raw_file(path)
        key = self.raw_key()
        if key is None:
            self._refuse_encrypted(path)
            data = path.read_bytes()
        else:
            with open(path, "rb") as sealed:
                data = b"".join(crypto.decrypt_chunks(sealed, key, relative))
        self.audit("read", "raw", relative, patient_key=self._patient_of(relative), nbytes=len(data), files=1)
        return data

    # --- files and tables ------------------------------------------------------------------------------------

    @contextmanager
    def rebuild_patient_dir(self, zone: str, kind: str, patient_key: str) -> Iterator[Path]:
        """Staging folder that atomically replaces ``<zone>/<kind>/<patient_key>`` (DICOM, volumes, masks).

        In an encrypted zone the caller fills a plaintext scratch folder; on success each file is
        encrypted (bound to its final lake path) into the staging folder that replaces the old one.
        """
        final = self.zone(zone) / kind / patient_key
        dataset = self.relative(final)
        key = self._key_for(zone)
        if key is None:
            with rebuild_dir(final) as staging:
                yield staging
                files, nbytes = _tree_size(staging)
                manifest = build_manifest(dataset, staging)
        else:
            with self._scratch() as plain:
                yield plain
                files, nbytes = _tree_size(plain)
                with rebuild_dir(final) as staging:
                    self._encrypt_tree(plain, staging, final, key)
                    manifest = build_manifest(dataset, staging)  # the bytes at rest: ciphertext
        record_manifest(self.root_path, manifest)
        self.audit("write", zone, self.relative(final), patient_key=_bare_patient_key(patient_key), nbytes=nbytes, files=files)

    def verify_integrity(self, zones: Sequence[str] = ZONES) -> IntegrityReport:
        """Re-read the lake against the manifests its writes recorded (other storage verifies its system of record)."""
        return verify_local_lake(self.root_path, zones)

    def ops_path(self, name: str) -> Path:
        """A file of the operators' folder (``<lake>/ops``, outside the data zones: run failures)."""
        path = self.root_path / "ops" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def ops_written(self, path: Path) -> None:
        """Called after an ops file was replaced: other storage publishes it (the local lake has nothing to do)."""

    def relative(self, path: Path) -> str:
        """Path relative to the lake root: what tables and metadata record (no host paths)."""
        return str(Path(path).resolve().relative_to(self.root_path.resolve()))

    def dataset_path(self, zone: str, table: str) -> Path:
        """The folder of a per-patient (hive-partitioned) table, for engines that read it whole (Spark)."""
        return self.zone(zone) / table

    def partition_dir(self, zone: str, table: str, patient_key: str) -> Path:
        return self.zone(zone) / table / f"{PARTITION_COLUMN}={patient_key}"

    def cohort_table_path(self, zone: str, table: str) -> Path:
        return self.zone(zone) / f"{table}.parquet"

    def _write_parquet(self, arrow: pa.Table, path: Path, final: Path, key: crypto.RawZoneKey | None) -> None:
        if key is None:
            pq.write_table(arrow, path)
            return
        buffer = io.BytesIO()
        pq.write_table(arrow, buffer)
        buffer.seek(0)
        with open(path, "wb") as sealed:
            crypto.encrypt_stream(buffer, sealed, key, self.relative(final))

    def _read_parquet(self, path: Path, key: crypto.RawZoneKey | None) -> pa.Table:
        """One Parquet file of an encrypted-capable zone: decrypted and authenticated, or refused if unexpectedly sealed."""
        if key is None:
            self._refuse_encrypted(path)
            return pq.read_table(path)
        with open(path, "rb") as sealed:
            data = b"".join(crypto.decrypt_chunks(sealed, key, self.relative(path)))
        return pq.read_table(pa.BufferReader(data))

    def _read_partition(self, zone: str, folder: Path) -> pa.Table:
        if zone not in ENCRYPTED_ZONES:
            return ds.dataset(folder, format="parquet").to_table()
        key = self._key_for(zone)
        parts = [self._read_parquet(path, key) for path in sorted(folder.glob("*.parquet"))]
        return pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({})

    def write_table(self, frame: pd.DataFrame | pa.Table, zone: str, table: str, patient_key: str | None = None) -> Path:
        """Write a cohort table, or replace one patient's partition, atomically; its content manifest is recorded
        (``radplan.lake_integrity``) from the staged bytes once they are in place."""
        arrow = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        key = self._key_for(zone)
        if patient_key is None:
            target = self.cohort_table_path(zone, table)
            with atomic_path(target) as tmp:
                self._write_parquet(arrow, tmp, target, key)
                manifest = build_manifest(self.relative(target), tmp)
            record_manifest(self.root_path, manifest)
            self.audit("write", zone, table, rows=arrow.num_rows, nbytes=target.stat().st_size, files=1)
            return target
        if PARTITION_COLUMN in arrow.column_names:
            # The partition value lives in the folder name (hive layout), not in the file.
            arrow = arrow.drop_columns([PARTITION_COLUMN])
        target = self.partition_dir(zone, table, patient_key)
        with rebuild_dir(target) as staging:
            self._write_parquet(arrow, staging / "part-0.parquet", target / "part-0.parquet", key)
            nbytes = (staging / "part-0.parquet").stat().st_size
            manifest = build_manifest(self.relative(target), staging)
        record_manifest(self.root_path, manifest)
        self.audit("write", zone, table, patient_key=patient_key, rows=arrow.num_rows, nbytes=nbytes, files=1)
        return target

    def read_table(self, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame:
        """One patient's partition (with patient_key restored), a cohort table, or every partition."""
        frame = self._read_table(zone, table, patient_key)
        self.audit("read", zone, table, patient_key=patient_key, rows=len(frame))
        return frame

    def _read_table(self, zone: str, table: str, patient_key: str | None) -> pd.DataFrame:
        if patient_key is not None:
            folder = self.partition_dir(zone, table, patient_key)
            if not folder.is_dir():
                raise FileNotFoundError(f"{zone}/{table} has no partition for this patient; materialize it first")
            frame = self._read_partition(zone, folder).to_pandas()
            frame.insert(0, PARTITION_COLUMN, patient_key)
            return frame
        single = self.cohort_table_path(zone, table)
        if single.exists():
            if zone in ENCRYPTED_ZONES:
                return self._read_parquet(single, self._key_for(zone)).to_pandas()
            return pq.read_table(single).to_pandas()
        folder = self.zone(zone) / table
        if not folder.is_dir():
            raise FileNotFoundError(f"{zone}/{table} has not been materialized")
        # Partitions are written one patient at a time, so a column that is all-null for one patient
        # has Arrow type null there: unify the per-partition schemas instead of trusting the first file.
        parts = []
        if zone in ENCRYPTED_ZONES:
            for partition in sorted(folder.glob(f"{PARTITION_COLUMN}=*")):
                part = self._read_partition(zone, partition)
                key = _bare_patient_key(partition.name)
                parts.append(part.append_column(PARTITION_COLUMN, pa.array([key] * part.num_rows, pa.string())))
        else:
            # Through the table's compacted snapshot: at 100,000 patients only the changed partitions' files are opened.
            return read_hive_dataset_compacted(folder, self.compacted_snapshot_path(zone, table))
        if not parts:
            return pd.DataFrame(columns=[PARTITION_COLUMN])
        return pa.concat_tables(parts, promote_options="permissive").to_pandas()

    def compacted_snapshot_path(self, zone: str, table: str) -> Path:
        """Where the compacted snapshot of a per-patient table lives (hidden: a cache rebuilt from the partitions)."""
        return self.zone(zone) / COMPACTED_DIR / f"{table}.parquet"

    def compacted_table(self, zone: str, table: str) -> Path:
        """One Parquet file with every partition of a per-patient table (``patient_key`` a column), brought up to date
        by reading only the partitions changed since the last call: what Spark reads for a cohort."""
        folder = self.zone(zone) / table
        if not folder.is_dir():
            raise FileNotFoundError(f"{zone}/{table} has not been materialized")
        if zone in ENCRYPTED_ZONES:
            raise ValueError(f"{zone}/{table} is encrypted at rest: no plaintext snapshot of it is written")
        snapshot = self.compacted_snapshot_path(zone, table)
        rows = refresh_compacted_snapshot(folder, snapshot)
        if rows is None:
            raise FileNotFoundError(f"{zone}/{table} has no partition yet")
        self.audit("read", zone, table, rows=rows.num_rows, files=1)
        return snapshot

    def read_table_if_present(self, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame:
        """Like read_table, but an empty frame where nothing was materialized (an optional input)."""
        return self.read_table(zone, table, patient_key) if self.has_table(zone, table, patient_key) else pd.DataFrame()

    def list_tables(self, zone: str, prefix: str) -> list[str]:
        """Names of the tables in a zone that start with ``prefix`` (cohort files and partitioned folders)."""
        names = set()
        for path in self.zone(zone).glob(f"{prefix}*"):
            if path.is_dir():
                names.add(path.name)
            elif path.suffix == ".parquet":
                names.add(path.name.removesuffix(".parquet"))
        return sorted(names)

    def has_table(self, zone: str, table: str, patient_key: str | None = None) -> bool:
        if patient_key is None:
            return self.cohort_table_path(zone, table).exists() or (self.zone(zone) / table).is_dir()
        return self.partition_dir(zone, table, patient_key).is_dir()

    def quarantine(self, source: Path, stage: str, error: BaseException) -> QuarantineRecord:
        record = quarantine_file(self.zone("quarantine"), source, stage, error)
        source = Path(source)
        files, nbytes = (1, source.stat().st_size) if source.is_file() else _tree_size(source) if source.is_dir() else (0, 0)
        self.audit("quarantine", "quarantine", f"quarantine/{stage}/{record.quarantine_id}", nbytes=nbytes, files=files)
        return record
