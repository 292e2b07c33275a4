"""The lake IO manager: an asset's return value is its table, and its downstream assets receive it as a parameter.

Every asset input is declared once, as a function parameter; Dagster draws the lineage from the same
declaration, so the graph and the data flow cannot disagree. Where a table lives comes from the asset's
entry in ``LAKE_LAYOUT`` (also the asset's definition metadata, shown in the UI):

- ``lake/zone``: the lake zone (default ``features``);
- ``lake/table``: the table name (default: the asset's name);
- ``lake/tables``: for an asset that returns a dict of tables, ``{dict key: table name}``;
- ``lake/table_prefix``: for an asset that returns a dict whose keys vary (the EHR tables), the table
  name is ``prefix + key`` and loading finds every table with that prefix.

Per-patient assets write and read their patient's partition; a cohort (unpartitioned) asset reading a
per-patient asset gets every partition as one frame (the hive dataset, not one read per patient).
An input marked ``optional_input()`` that was never materialized arrives empty; any other missing input
is an error that names the asset and the patient, never a silent empty frame.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
from dagster import AssetIn, ConfigurableIOManager, InputContext, OutputContext

from radplan_resources.lake import LakeResource

ZONE = "lake/zone"
TABLE = "lake/table"
TABLES = "lake/tables"
TABLE_PREFIX = "lake/table_prefix"
OPTIONAL = "lake/optional"
ONLY = "lake/only"
DEFAULT_ZONE = "features"


def lake_table(zone: str = DEFAULT_ZONE, *, table: str | None = None, tables: Mapping[str, str] | None = None,
               table_prefix: str | None = None) -> dict[str, Any]:
    """Asset metadata saying where the IO manager keeps the asset's table(s)."""
    metadata: dict[str, Any] = {ZONE: zone}
    if table:
        metadata[TABLE] = table
    if tables:
        metadata[TABLES] = dict(tables)
    if table_prefix:
        metadata[TABLE_PREFIX] = table_prefix
    return metadata


def optional_input(**kwargs) -> AssetIn:
    """An input that may never have been materialized (e.g. model masks before a champion exists): arrives empty."""
    return AssetIn(metadata={OPTIONAL: True}, **kwargs)


def one_table_of(key: str, **kwargs) -> AssetIn:
    """Of an asset that stores several tables, load just one (``key`` of its dict), e.g. the EHR observations."""
    return AssetIn(metadata={ONLY: key}, **kwargs)


# Assets whose tables are not one ``features/<asset name>`` table: the lake's layout, in one place. Their
# definitions carry the same metadata (shown in the Dagster UI); the IO manager reads it from here, so a job that
# materializes only part of the graph still finds an upstream asset's tables.
LAKE_LAYOUT: dict[str, dict[str, Any]] = {
    # Raw zone (PHI: source ids and paths); the fingerprints last, so a failed intake is seen again.
    "landing_inventory": lake_table("raw", tables={name: f"inventory_{name}" for name in (
        "dicom_studies", "genomics_files", "ehr_patients", "landing_state", "patient_source_fingerprints",
        "patient_fingerprints")}),
    # One deid table per EHR extract: deid/ehr_patients, ehr_conditions, ehr_medications, ehr_observations, ...
    "deid_ehr": lake_table("deid", table_prefix="ehr_"),
    "deid_notes": lake_table("deid", table="notes"),
    # predictions: every scored patient; training_snapshot: the rows the current version was fitted on.
    "response_model": lake_table(tables={"predictions": "response_predictions", "training_snapshot": "response_training_snapshot"}),
    # drift: this measurement's per-feature drift; history: missingness per measurement, appended each run.
    "model_monitoring": lake_table(tables={"drift": "feature_drift", "history": "data_quality_history"}),
    "clinician_feedback": lake_table(tables={"decisions": "clinician_feedback", "override_rates": "override_rates"}),
}


# Assets whose product is files in a lake folder rather than a table (written through the lake resource).
FILE_PRODUCTS: dict[str, str] = {
    "pacs_studies": "raw/dicom/{patient}/ (DICOM as received)",
    "deid_studies": "deid/dicom/{patient}/ (de-identified DICOM)",
    "raw_genomics": "raw/genomics/{patient}/ (VCF/BCF, BAM/CRAM as received)",
    "ehr_extracts": "raw/ehr/{patient}/ (the patient's extract rows, FHIR Patient)",
    "clinical_notes": "raw/ehr/{patient}/notes.parquet (written by ehr_extracts; counted here)",
    "variants": "features/variants/patient_key={patient}/part-*.parquet (streamed by the asset; loaded as a table)",
    "segmentation_model": "MLflow registry radplan-lesion-seg; exports/model_report.json",
    "pacs_lesion_segmentations": "the hospital's Orthanc (SEG and RTSTRUCT beside the source study); ONNX export in the champion's MLflow run",
    "patient_report": "exports/fhir/{patient}.json (FHIR R4 Bundle), exports/reports/{patient}.html",
    "recommendation_export": "exports/ (recommendations.parquet/.csv, COLUMNS.md, columns.json)",
}


def table_metadata(asset_name: str) -> dict[str, Any]:
    """The lake location metadata of an asset (for its definition)."""
    return dict(LAKE_LAYOUT.get(asset_name, lake_table()))


class TableLocation:
    """Where one asset's table(s) live, from its definition metadata."""

    def __init__(self, asset_name: str):
        metadata = table_metadata(asset_name)
        self.asset_name = asset_name
        self.zone = str(metadata.get(ZONE, DEFAULT_ZONE))
        self.table = str(metadata.get(TABLE, asset_name))
        self.tables = dict(metadata.get(TABLES) or {})
        self.prefix = metadata.get(TABLE_PREFIX)

    @property
    def is_dict(self) -> bool:
        return bool(self.tables) or bool(self.prefix)

    def write(self, lake: LakeResource, value: Any, patient_key: str | None) -> None:
        if not self.is_dict:
            # An Arrow table keeps the schema the asset gave it (patient_features: nullable integer columns).
            if not isinstance(value, (pd.DataFrame, pa.Table)):
                raise TypeError(f"asset {self.asset_name} returned {type(value).__name__}; the lake stores DataFrames and Arrow tables")
            lake.write_table(value, self.zone, self.table, patient_key)
            return
        if not isinstance(value, Mapping):
            raise TypeError(f"asset {self.asset_name} stores several tables and must return a dict of DataFrames")
        for key, frame in value.items():
            lake.write_table(frame, self.zone, self.table_name(key), patient_key)

    def table_name(self, key: str) -> str:
        if key in self.tables:
            return self.tables[key]
        if self.prefix:
            return f"{self.prefix}{key}"
        raise KeyError(f"asset {self.asset_name} has no table for {key!r} (tables: {sorted(self.tables)})")

    def read(self, lake: LakeResource, patient_key: str | None, *, optional: bool, only: str | None = None) -> Any:
        if only is not None:
            return self._read_one(lake, self.table_name(only), patient_key, optional=True)
        if not self.is_dict:
            return self._read_one(lake, self.table, patient_key, optional=optional)
        if self.tables:
            return {key: self._read_one(lake, name, patient_key, optional=True) for key, name in self.tables.items()}
        names = lake.list_tables(self.zone, self.prefix)
        return {
            name.removeprefix(self.prefix): lake.read_table(self.zone, name, patient_key)
            for name in names
            if lake.has_table(self.zone, name, patient_key)
        }

    def _read_one(self, lake: LakeResource, table: str, patient_key: str | None, *, optional: bool) -> pd.DataFrame:
        if lake.has_table(self.zone, table, patient_key):
            return lake.read_table(self.zone, table, patient_key)
        if optional:
            return pd.DataFrame()
        whose = "this patient" if patient_key else "the cohort"
        raise FileNotFoundError(f"{self.zone}/{table} has no data for {whose}: materialize {self.asset_name} first")


def own_previous_output(lake: LakeResource, asset_name: str) -> Any:
    """What an unpartitioned asset wrote last time (incremental state: inventory hashes, quality history); empty if none."""
    return TableLocation(asset_name).read(lake, None, optional=True)


class LakeIOManager(ConfigurableIOManager):
    """Stores each asset's returned DataFrame (or dict of DataFrames) in the lake and loads it for downstream assets."""

    lake: LakeResource

    @staticmethod
    def _location(context: OutputContext) -> TableLocation:
        return TableLocation(context.asset_key.path[-1])

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:  # an asset whose product is files (DICOM, NIfTI, raw extracts) written through the lake resource
            return
        patient_key = context.asset_partition_key if context.has_asset_partitions else None
        self._location(context).write(self.lake, obj, patient_key)

    def load_input(self, context: InputContext) -> Any:
        if not context.has_asset_key:
            raise TypeError("the lake IO manager loads asset inputs only")
        location = TableLocation(context.asset_key.path[-1])
        # The same patient's partition for a per-patient asset; every partition for a cohort asset.
        # (The run's partition key: an asset check's input is given every partition of its asset, not the run's one.)
        patient_key = context.partition_key if context.has_asset_partitions and context.has_partition_key else None
        metadata = context.definition_metadata or {}
        return location.read(self.lake, patient_key, optional=bool(metadata.get(OPTIONAL, False)), only=metadata.get(ONLY))
