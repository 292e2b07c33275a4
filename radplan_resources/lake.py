"""The lake: zones as folders, hive-partitioned Parquet tables, atomic writes, quarantine."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from radplan.lake import ZONES, QuarantineRecord, atomic_path, quarantine_file

PARTITION_COLUMN = "patient_key"
HIVE_PARTITIONING = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")


@contextmanager
def rebuild_dir(final: Path) -> Iterator[Path]:
    """Yield an empty hidden staging folder that replaces ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        if final.exists():
            retired = final.with_name(f".{final.name}.retired")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
            shutil.rmtree(retired)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class LakeResource(ConfigurableResource):
    """A local-folder lake (embedded default).

    Per-patient tables are Parquet datasets hive-partitioned by ``patient_key``
    (``<zone>/<table>/patient_key=<key>/part-*.parquet``) so Spark and pandas read
    all patients as one dataset; cohort tables are single files (``<zone>/<table>.parquet``).
    """

    root: str = Field(description="Lake root folder (RADPLAN_HOME/lake by default)")

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    def zone(self, name: str) -> Path:
        if name not in ZONES:
            raise ValueError(f"unknown lake zone {name!r}; zones are {ZONES}")
        path = self.root_path / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rebuild_patient_dir(self, zone: str, kind: str, patient_key: str):
        """Staging folder that atomically replaces ``<zone>/<kind>/<patient_key>`` (DICOM, volumes, masks)."""
        return rebuild_dir(self.zone(zone) / kind / patient_key)

    def relative(self, path: Path) -> str:
        """Path relative to the lake root: what tables and metadata record (no host paths)."""
        return str(Path(path).resolve().relative_to(self.root_path.resolve()))

    def partition_dir(self, zone: str, table: str, patient_key: str) -> Path:
        return self.zone(zone) / table / f"{PARTITION_COLUMN}={patient_key}"

    def cohort_table_path(self, zone: str, table: str) -> Path:
        return self.zone(zone) / f"{table}.parquet"

    def write_table(self, frame: pd.DataFrame | pa.Table, zone: str, table: str, patient_key: str | None = None) -> Path:
        """Write a cohort table, or replace one patient's partition, atomically."""
        arrow = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        if patient_key is None:
            target = self.cohort_table_path(zone, table)
            with atomic_path(target) as tmp:
                pq.write_table(arrow, tmp)
            return target
        if PARTITION_COLUMN in arrow.column_names:
            # The partition value lives in the folder name (hive layout), not in the file.
            arrow = arrow.drop_columns([PARTITION_COLUMN])
        with rebuild_dir(self.partition_dir(zone, table, patient_key)) as staging:
            pq.write_table(arrow, staging / "part-0.parquet")
        return self.partition_dir(zone, table, patient_key)

    def read_table(self, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame:
        """One patient's partition (with patient_key restored), a cohort table, or every partition."""
        if patient_key is not None:
            folder = self.partition_dir(zone, table, patient_key)
            if not folder.is_dir():
                raise FileNotFoundError(f"{zone}/{table} has no partition for this patient; materialize it first")
            frame = ds.dataset(folder, format="parquet").to_table().to_pandas()
            frame.insert(0, PARTITION_COLUMN, patient_key)
            return frame
        single = self.cohort_table_path(zone, table)
        if single.exists():
            return pq.read_table(single).to_pandas()
        folder = self.zone(zone) / table
        if not folder.is_dir():
            raise FileNotFoundError(f"{zone}/{table} has not been materialized")
        # Partitions are written one patient at a time, so a column that is all-null for one patient
        # has Arrow type null there: unify the per-partition schemas instead of trusting the first file.
        parts = []
        for fragment in ds.dataset(folder, format="parquet", partitioning=HIVE_PARTITIONING).get_fragments():
            part = fragment.to_table()
            key = ds.get_partition_keys(fragment.partition_expression)[PARTITION_COLUMN]
            parts.append(part.append_column(PARTITION_COLUMN, pa.array([key] * part.num_rows, pa.string())))
        if not parts:
            return pd.DataFrame(columns=[PARTITION_COLUMN])
        return pa.concat_tables(parts, promote_options="permissive").to_pandas()

    def read_table_if_present(self, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame:
        """Like read_table, but an empty frame where nothing was materialized (an optional input)."""
        return self.read_table(zone, table, patient_key) if self.has_table(zone, table, patient_key) else pd.DataFrame()

    def has_table(self, zone: str, table: str, patient_key: str | None = None) -> bool:
        if patient_key is None:
            return self.cohort_table_path(zone, table).exists() or (self.zone(zone) / table).is_dir()
        return self.partition_dir(zone, table, patient_key).is_dir()

    def quarantine(self, source: Path, stage: str, error: BaseException) -> QuarantineRecord:
        return quarantine_file(self.zone("quarantine"), source, stage, error)
