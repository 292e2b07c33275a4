"""EHR chain: extracts -> Safe Harbor de-identification -> clinical features; notes -> de-identified notes -> findings.

Presidio and spaCy (radplan.ehr.notes) are imported by the assets that de-identify text, not when the code location loads.
"""

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from radplan.ehr import extracts, features, findings
from radplan.ehr.deid import deidentify_tables
from radplan.errors import InvalidNoteError
from radplan_assets.ingest import patient_inventory
from radplan_assets.partitions import patient_partitions
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource
from radplan_resources.io_manager import one_table_of, table_metadata

if TYPE_CHECKING:
    from radplan.ehr.notes import NoteDeidentifier

PATIENT_RESOURCE_FILE = "Patient.json"
EHR_FHIR_TYPES = ("Patient", "Condition", "MedicationRequest", "Observation", "DocumentReference")


def _source_patient_id(ehr_patients: pd.DataFrame, patient_key: str) -> str | None:
    rows = patient_inventory(ehr_patients, patient_key)
    return rows["source_patient_id"].iloc[0] if len(rows) else None


def _patient_column(frame: pd.DataFrame) -> str:
    for column in ("PATIENT", "patient", "Id"):
        if column in frame.columns:
            return column
    raise KeyError("table has no patient column")


def _raw_tables(lake: LakeResource, patient_key: str) -> dict[str, pd.DataFrame]:
    folder = lake.zone("raw") / "ehr" / patient_key
    if not folder.is_dir():
        return {}
    return {p.stem: pd.read_parquet(io.BytesIO(lake.read_raw_bytes(p))) for p in sorted(folder.glob("*.parquet"))}


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    description="The patient's rows of the Synthea-style CSV extracts and FHIR R4 NDJSON (validated with fhir.resources), "
    "copied into the raw zone (PHI). Only this patient's lines are typed and validated (the other registered patients' are "
    "skipped unread). Malformed rows and invalid resources are quarantined with a reason and counted.",
    ins={"landing_inventory": one_table_of("ehr_patients")},
)
def ehr_extracts(
    context: AssetExecutionContext, landing_inventory: pd.DataFrame, lake: LakeResource, landing: LandingZoneResource
) -> MaterializeResult:
    patient_key = context.partition_key
    source_id = _source_patient_id(landing_inventory, patient_key)
    quarantine_dir = lake.zone("quarantine") / "ehr"
    tables: dict[str, pd.DataFrame] = {}
    patient_resources: list = []
    problems: list = []
    if source_id is not None:
        # Only this patient's lines of the shared extracts are typed and validated; the other registered patients'
        # are skipped (their own runs read them), so a refresh does not revalidate the whole cohort's EHR.
        registered = set(landing_inventory["source_patient_id"])
        scope = extracts.PatientScope(frozenset({source_id}), patient_key, frozenset(registered - {source_id}))
        tables, problems = extracts.read_synthea_csv(landing.ehr_csv_dir, quarantine_dir=quarantine_dir, scope=scope)
        resources, fhir_problems = extracts.read_fhir_ndjson(landing.ehr_fhir_dir, EHR_FHIR_TYPES, quarantine_dir=quarantine_dir, scope=scope)
        problems += fhir_problems
        patient_resources = [r for r in resources.get("Patient", []) if str(r.id) == source_id]
        for name, frame in extracts.fhir_to_tables(resources).items():
            mine = frame[frame[_patient_column(frame)].astype(str) == source_id]
            if name == "patients" and name in tables:
                continue  # the CSV row is the primary record; the FHIR Patient is kept whole below
            if name in tables and len(mine):
                tables[name] = pd.concat([tables[name], mine], ignore_index=True)
            elif name not in tables:
                tables[name] = mine
    with lake.rebuild_patient_dir("raw", "ehr", patient_key) as staging:
        for name, frame in tables.items():
            frame.to_parquet(staging / f"{name}.parquet", index=False)
        if patient_resources:
            # Phones, e-mails and name variants the CSV lacks: deny-list material for the notes.
            (staging / PATIENT_RESOURCE_FILE).write_text(patient_resources[0].model_dump_json())
    return MaterializeResult(
        metadata={
            "tables": MetadataValue.json({name: len(frame) for name, frame in sorted(tables.items())}),
            "quarantined_records": len(problems),
        }
    )


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    deps=[ehr_extracts],
    metadata=table_metadata("deid_ehr"),
    description="Structured EHR de-identified per HIPAA Safe Harbor: identifiers removed or replaced by the shared keyed "
    "pseudonyms, dates shifted by the same per-patient shift as DICOM, ages over 89 grouped, ZIP cut to 3 digits.",
)
def deid_ehr(context: AssetExecutionContext, lake: LakeResource, deid_key: DeidKeyResource) -> MaterializeResult:
    patient_key = context.partition_key
    raw = {name: frame for name, frame in _raw_tables(lake, patient_key).items() if name != "notes"}
    deid = deidentify_tables(raw, deid_key.pseudonymizer()) if raw else {}
    return MaterializeResult(value=deid, metadata={"tables": MetadataValue.json({name: len(frame) for name, frame in sorted(deid.items())})})


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    deps=[ehr_extracts],
    description="The patient's free-text clinical notes (FHIR DocumentReference attachments) in the raw zone (PHI).",
)
def clinical_notes(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    notes_frame = _raw_tables(lake, context.partition_key).get("notes", pd.DataFrame())
    return MaterializeResult(metadata={"notes": len(notes_frame)})


def _known_identifiers(lake: LakeResource, patient_key: str, raw: dict[str, pd.DataFrame]):
    """The patient's identifiers from the CSV record and the FHIR Patient, merged (PHI: never logged)."""
    from fhir.resources.R4B.patient import Patient

    sources = []
    if len(raw.get("patients", [])):
        sources.append(extracts.patient_identifiers(raw["patients"].iloc[0]))
    resource_file = lake.zone("raw") / "ehr" / patient_key / PATIENT_RESOURCE_FILE
    if resource_file.exists():
        sources.append(extracts.patient_identifiers(Patient.model_validate_json(lake.read_raw_bytes(resource_file))))
    if not sources:
        return None
    merged = sources[0]
    for extra in sources[1:]:
        for field in ("names", "mrn", "ssn", "drivers", "passport", "phones", "emails", "addresses"):
            setattr(merged, field, list(dict.fromkeys([*getattr(merged, field), *getattr(extra, field)])))
        merged.birth_date = merged.birth_date or extra.birth_date
    return merged


def _quarantine_note(lake: LakeResource, note_token: str, text, error: InvalidNoteError) -> dict:
    """A note the de-identifier refused, as a file in the quarantine zone (PHI, like every quarantined input)."""
    data = text if isinstance(text, bytes) else str(text).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory(prefix="radplan-note-") as folder:
        path = Path(folder) / f"note-{note_token}.txt"
        path.write_bytes(data)
        return lake.quarantine(path, error.stage, error).safe_summary()


_DEIDENTIFIER: "NoteDeidentifier | None" = None


def note_deidentifier() -> "NoteDeidentifier":
    """Built once per process: loading the spaCy model and recognizers takes seconds."""
    from radplan.ehr.notes import NoteDeidentifier

    global _DEIDENTIFIER
    if _DEIDENTIFIER is None:
        _DEIDENTIFIER = NoteDeidentifier()
    return _DEIDENTIFIER


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    deps=[clinical_notes],
    metadata=table_metadata("deid_notes"),
    description="Notes de-identified with Presidio (spaCy NER when installed, pattern recognizers, and the patient's own "
    "known identifiers as deny-lists); dates shifted by the patient's shift so timelines survive.",
    ins={"landing_inventory": one_table_of("ehr_patients")},
)
def deid_notes(context: AssetExecutionContext, landing_inventory: pd.DataFrame, lake: LakeResource, deid_key: DeidKeyResource) -> MaterializeResult:
    patient_key = context.partition_key
    pseudonymizer = deid_key.pseudonymizer()
    raw = _raw_tables(lake, patient_key)
    notes_frame = raw.get("notes", pd.DataFrame())
    source_id = _source_patient_id(landing_inventory, patient_key)
    identifiers = _known_identifiers(lake, patient_key, raw)
    shift = pseudonymizer.date_shift_days(source_id) if source_id else None
    deidentifier = note_deidentifier()
    rows, quarantined = [], []
    for note in notes_frame.itertuples():
        try:
            result = deidentifier.deidentify(note.text, identifiers, shift)
        except InvalidNoteError as error:
            # One unreadable note is kept, with its reason, in the quarantine; the patient's other notes go on.
            quarantined.append(_quarantine_note(lake, pseudonymizer.token("note", str(note.note_id)), note.text, error))
            continue
        rows.append(
            {
                "note_id": pseudonymizer.token("note", str(note.note_id)),
                "date_shifted": str(pseudonymizer.shift_date(pd.Timestamp(note.date).date(), source_id)) if source_id and pd.notna(note.date) else None,
                "text": result.text,
                "entities_removed": len(result.entities),
            }
        )
    frame = pd.DataFrame(rows, columns=["note_id", "date_shifted", "text", "entities_removed"])
    return MaterializeResult(
        value=frame,
        metadata={"notes": len(frame), "entities_removed": int(frame["entities_removed"].sum()), "spacy_ner": deidentifier.spacy_available,
                  "quarantined": len(quarantined), "quarantine_ids": MetadataValue.json(quarantined)}
    )


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    description="Structured findings from the de-identified notes: stage/TNM, ECOG, smoking status and biomarker "
    "mentions, negation-aware.",
)
def note_findings(context: AssetExecutionContext, deid_notes: pd.DataFrame) -> MaterializeResult:
    rows = [
        {"note_id": note.note_id, "date_shifted": note.date_shifted, **finding}
        for note in deid_notes.itertuples()
        for finding in findings.extract_note_findings(note.text)
    ]
    frame = pd.DataFrame(rows)
    for column in ("value", "span"):
        # Findings mix numeric (ECOG) and text (stage) values: stored as text, typed downstream.
        if column in frame.columns:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return MaterializeResult(value=frame, metadata={"findings": len(frame)})


@asset(
    group_name="ehr",
    partitions_def=patient_partitions,
    description="Normalized per-patient clinical features: age, sex, cancer type from SNOMED codes, stage, ECOG, "
    "smoking, prior lines, key labs in harmonized units, current medications; notes fill gaps (with source columns).",
)
def clinical_features(context: AssetExecutionContext, deid_ehr: dict, note_findings: pd.DataFrame) -> MaterializeResult:
    patient_key = context.partition_key
    deid = dict(sorted(deid_ehr.items()))
    found = note_findings
    frame = features.clinical_features(deid, found if len(found) else None) if deid else pd.DataFrame({"patient_key": [patient_key]})
    row = frame.iloc[0].to_dict() if len(frame) else {}
    return MaterializeResult(
        value=frame,
        metadata={
            "cancer_type": str(row.get("cancer_type")),
            "stage": str(row.get("stage")),
            "ecog": str(row.get("ecog")),
            "medications": len(row.get("current_medications") or []),
        }
    )
