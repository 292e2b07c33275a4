"""Intake: find what the PACS and the landing zone hold, per patient, and register patient partitions.

The inventory maps source patient ids (PHI) to pseudonymous keys; it stays in
the raw zone. Dagster sees only keys and counts.

Each run also records, per patient, a keyed fingerprint of everything the patient's
assets read (study contents, genomics file contents, the patient's EHR rows) and
lists in its metadata the patients whose fingerprint changed since the previous
inventory: the patient refresh sensor reruns exactly those partitions.
"""

from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from radplan.ehr.extracts import accepted_patient_ids
from radplan.inventory import (
    GenomicsFile,
    changed_fingerprints,
    changed_sources,
    combine_fingerprints,
    genomics_content_hashes,
    landing_state,
    scan_genomics,
    source_fingerprints,
)
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource, PacsResource
from radplan_resources.pacs import StudyLocation
from radplan_resources.io_manager import own_previous_output, table_metadata

FINGERPRINTS = "patient_fingerprints"
# Per patient and input source (radplan.inventory.INPUT_SOURCES): which branch of the patient's assets a change concerns.
SOURCE_FINGERPRINTS = "patient_source_fingerprints"
# Metadata entry of a landing_inventory materialization: {patient_key: fingerprint} of changed patients.
CHANGED_PATIENTS = "changed_patients"
# Metadata entry: {patient_key: [input sources whose fingerprint changed]} for the same patients.
CHANGED_SOURCES = "changed_sources"
# Metadata entry: {watched folder name: keyed landing token} as this intake found the landing zone.
LANDING_TOKENS = "landing_tokens"
# Run tag of every sensor-requested run, and its value on intakes the PACS change feed asked for (sensors/landing.py).
TRIGGER_TAG = "radplan/trigger"
PACS_FEED_TRIGGER = "pacs-changes"
# Inventory table: the landing tokens this intake's tables describe (lets the next intake skip unchanged EHR extracts).
LANDING_STATE = "landing_state"
EHR_PATIENT_COLUMNS = ["patient_key", "source_patient_id", "rows_fingerprint"]


@asset(
    group_name="ingest",
    metadata=table_metadata("landing_inventory"),
    description=(
        "Inventory of the PACS and the landing zone: every study, genomics file and EHR patient, "
        "mapped to a pseudonymous patient key (raw zone, PHI). Registers new patient partitions; "
        "files whose headers cannot be read are quarantined."
    ),
)
def landing_inventory(
    context: AssetExecutionContext,
    lake: LakeResource,
    pacs: PacsResource,
    landing: LandingZoneResource,
    deid_key: DeidKeyResource,
) -> MaterializeResult:
    pseudonymizer = deid_key.pseudonymizer()
    previous_inventory = own_previous_output(lake, "landing_inventory")
    quarantined = []
    # Taken before the scan: a file that lands during the scan changes the state, so a sensor still asks.
    landing_tokens = {
        name: landing_state(pseudonymizer.token, folders)[0] for name, folders in landing.watched_folders(pacs).items()
    }

    # An intake the PACS change feed asked for reuses the fingerprints of stable studies whose revision did not change
    # (two PACS requests fewer per study); every other intake (the landing sensors', the catch-up after an outage, a
    # manual or scheduled one) re-reads every study, which also sees instances deleted from a stable study.
    known = _known_studies(previous_inventory["dicom_studies"]) if context.run.tags.get(TRIGGER_TAG) == PACS_FEED_TRIGGER else None
    studies, unreadable = pacs.list_studies(known=known)
    if known is not None:
        reused = sum(1 for study in studies if study.study_ref in known and known[study.study_ref].unchanged_at(study.revision))
        context.log.info(f"PACS change feed intake: {reused} of {len(studies)} studies unchanged since the previous intake, not re-read")
    for item in unreadable:
        quarantined.append(lake.quarantine(item.path, "pacs-scan", item.error).safe_summary())
    study_rows = [
        {
            "patient_key": pseudonymizer.patient_key(study.source_patient_id),
            "source_patient_id": study.source_patient_id,
            "study_ref": study.study_ref,
            "files": list(study.files),
            "content_fingerprint": study.content_fingerprint,
            "revision": study.revision,
        }
        for study in studies
    ]

    genomics_files = []
    for found in scan_genomics(landing.genomics_dir, known=_known_genomics_files(previous_inventory["genomics_files"])):
        if not isinstance(found, GenomicsFile):
            path, error = found
            quarantined.append(lake.quarantine(path, "genomics-scan", error).safe_summary())
            continue
        genomics_files.append(found)
    previous_files = previous_inventory["genomics_files"]
    known = (list(previous_files[["path", "size", "mtime_ns", "sha256"]].itertuples(index=False, name=None))
             if {"path", "size", "mtime_ns", "sha256"} <= set(previous_files.columns) else [])
    hashes = genomics_content_hashes([found.path for found in genomics_files], known)
    genomics_rows = []
    for found in genomics_files:
        stat = found.path.stat()
        for sample in found.samples:
            genomics_rows.append(
                {
                    "patient_key": pseudonymizer.patient_key(sample),
                    "source_patient_id": sample,
                    "path": str(found.path),
                    "kind": found.kind,
                    "sample": sample,
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": hashes[str(found.path)],
                }
            )

    ehr_rows = _unchanged_ehr_rows(previous_inventory, landing_tokens["ehr"])
    if ehr_rows is None:
        ehr_hashes = landing.ehr_fingerprints()
        ehr_rows = [
            {"patient_key": pseudonymizer.patient_key(pid), "source_patient_id": pid, "rows_fingerprint": ehr_hashes.get(pid, "")}
            for pid in sorted(accepted_patient_ids(landing.ehr_csv_dir, landing.ehr_fhir_dir))
        ]
    else:
        context.log.info(f"EHR extracts unchanged since the previous intake: its {len(ehr_rows)} EHR patients kept, not re-read")

    tables = {
        "dicom_studies": pd.DataFrame(study_rows, columns=["patient_key", "source_patient_id", "study_ref", "files", "content_fingerprint",
                                                           "revision"]),
        "genomics_files": pd.DataFrame(
            genomics_rows, columns=["patient_key", "source_patient_id", "path", "kind", "sample", "size", "mtime_ns", "sha256"]
        ),
        "ehr_patients": pd.DataFrame(ehr_rows, columns=EHR_PATIENT_COLUMNS),
        # After ehr_patients: a landing token stored here always describes the EHR rows stored before it.
        LANDING_STATE: pd.DataFrame(sorted(landing_tokens.items()), columns=["folder", "landing_token"]),
    }

    by_source: dict[str, dict[str, list[str]]] = {}
    for row in study_rows:
        by_source.setdefault(row["patient_key"], {}).setdefault("imaging", []).append(
            f"study\x00{row['study_ref']}\x00{row['content_fingerprint']}")
    for row in genomics_rows:
        by_source.setdefault(row["patient_key"], {}).setdefault("genomics", []).append(
            f"genomics\x00{row['kind']}\x00{row['sample']}\x00{row['sha256']}")
    for row in ehr_rows:
        by_source.setdefault(row["patient_key"], {}).setdefault("ehr", []).append(f"ehr\x00{row['rows_fingerprint']}")
    fingerprints = combine_fingerprints({key: [part for values in sources.values() for part in values] for key, sources in by_source.items()},
                                        pseudonymizer.token)
    previous = previous_inventory[FINGERPRINTS]
    changed = changed_fingerprints(dict(zip(previous.get("patient_key", []), previous.get("fingerprint", []))), fingerprints)
    per_source = source_fingerprints(by_source, pseudonymizer.token)
    previous_sources = previous_inventory[SOURCE_FINGERPRINTS]
    sources_changed = changed_sources(_per_source(previous_sources) if len(previous_sources) else None, per_source, changed)
    tables[SOURCE_FINGERPRINTS] = pd.DataFrame(
        [(key, source, fp) for key, sources in per_source.items() for source, fp in sources.items()],
        columns=["patient_key", "source", "fingerprint"],
    )
    tables[FINGERPRINTS] = pd.DataFrame(sorted(fingerprints.items()), columns=["patient_key", "fingerprint"])

    # The IO manager writes the tables in this order, fingerprints last: a run that fails half-way leaves the
    # previous fingerprints, so its changes are seen again.
    keys = sorted(fingerprints)
    known = set(context.instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))
    new_keys = [key for key in keys if key not in known]
    if new_keys:
        context.instance.add_dynamic_partitions(PATIENTS_PARTITION_NAME, new_keys)
    context.log.info(
        f"inventory: {len(keys)} patients ({len(new_keys)} new, {len(changed)} changed), "
        f"{len(study_rows)} studies, {len(quarantined)} files quarantined"
    )
    return MaterializeResult(
        value=tables,
        metadata={
            "patients": len(keys),
            "new_patients": len(new_keys),
            "changed_patient_count": len(changed),
            # Pseudonymous keys and keyed fingerprints only.
            CHANGED_PATIENTS: MetadataValue.json(changed),
            CHANGED_SOURCES: MetadataValue.json(sources_changed),
            LANDING_TOKENS: MetadataValue.json(landing_tokens),
            "studies": len(study_rows),
            "genomics_files": len(genomics_rows),
            "ehr_patients": len(ehr_rows),
            "quarantined": len(quarantined),
            "quarantine_ids": MetadataValue.json(quarantined),
        }
    )


def _known_genomics_files(previous: pd.DataFrame) -> dict[tuple[str, int, int], GenomicsFile]:
    """The previous intake's genomics files by (path, size, mtime_ns), their samples in the order scanned."""
    if not {"path", "kind", "sample", "size", "mtime_ns"} <= set(previous.columns):
        return {}
    samples: dict[tuple[str, int, int], list[str]] = {}
    kinds: dict[tuple[str, int, int], str] = {}
    for path, kind, sample, size, mtime_ns in previous[["path", "kind", "sample", "size", "mtime_ns"]].itertuples(index=False, name=None):
        key = (str(path), int(size), int(mtime_ns))
        samples.setdefault(key, []).append(sample)
        kinds[key] = kind
    return {key: GenomicsFile(Path(key[0]), kinds[key], tuple(names)) for key, names in samples.items()}


def _known_studies(previous: pd.DataFrame) -> dict[str, StudyLocation]:
    """The previous intake's studies with a PACS revision (study_ref -> StudyLocation), for PacsResource.list_studies."""
    if not {"study_ref", "source_patient_id", "content_fingerprint", "revision"} <= set(previous.columns):
        return {}
    return {
        ref: StudyLocation(source_patient_id=pid, study_ref=ref, content_fingerprint=fingerprint, revision=revision)
        for ref, pid, fingerprint, revision in previous[["study_ref", "source_patient_id", "content_fingerprint", "revision"]]
        .itertuples(index=False, name=None)
        if revision
    }


def _unchanged_ehr_rows(previous_inventory: dict, ehr_token: str) -> list[dict] | None:
    """The previous intake's EHR patients when the EHR landing folders are as it found them (same keyed token over every
    file's path, size and modification time), else None: every intake, a PACS-triggered one too, would otherwise
    re-read and re-validate the whole cohort's extracts."""
    state, previous = previous_inventory.get(LANDING_STATE), previous_inventory.get("ehr_patients")
    if state is None or previous is None or not {"folder", "landing_token"} <= set(state.columns):
        return None
    if dict(zip(state["folder"], state["landing_token"])).get("ehr") != ehr_token or not set(EHR_PATIENT_COLUMNS) <= set(previous.columns):
        return None
    return previous[EHR_PATIENT_COLUMNS].to_dict("records")


def _per_source(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    result: dict[str, dict[str, str]] = {}
    for key, source, fingerprint in table[["patient_key", "source", "fingerprint"]].itertuples(index=False, name=None):
        result.setdefault(key, {})[source] = fingerprint
    return result


def patient_inventory(frame: pd.DataFrame, patient_key: str) -> pd.DataFrame:
    """This patient's rows of one inventory table (PHI: use inside the asset only)."""
    if frame.empty:
        return frame
    return frame[frame["patient_key"] == patient_key].reset_index(drop=True)
