"""Intake: find what the PACS and the landing zone hold, per patient, and register patient partitions.

The inventory maps source patient ids (PHI) to pseudonymous keys; it stays in
the raw zone. Dagster sees only keys and counts.
"""

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from radplan.inventory import GenomicsFile, ehr_patient_ids, scan_genomics
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource, PacsResource

INVENTORY = "inventory"


@asset(
    group_name="ingest",
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
    quarantined = []

    studies, unreadable = pacs.list_studies()
    for item in unreadable:
        quarantined.append(lake.quarantine(item.path, "pacs-scan", item.error).safe_summary())
    study_rows = [
        {
            "patient_key": pseudonymizer.patient_key(study.source_patient_id),
            "source_patient_id": study.source_patient_id,
            "study_ref": study.study_ref,
            "files": list(study.files),
        }
        for study in studies
    ]

    genomics_rows = []
    for found in scan_genomics(landing.genomics_dir):
        if not isinstance(found, GenomicsFile):
            path, error = found
            quarantined.append(lake.quarantine(path, "genomics-scan", error).safe_summary())
            continue
        for sample in found.samples:
            genomics_rows.append(
                {
                    "patient_key": pseudonymizer.patient_key(sample),
                    "source_patient_id": sample,
                    "path": str(found.path),
                    "kind": found.kind,
                    "sample": sample,
                }
            )

    ehr_rows = [
        {"patient_key": pseudonymizer.patient_key(pid), "source_patient_id": pid}
        for pid in sorted(ehr_patient_ids(landing.ehr_csv_dir, landing.ehr_fhir_dir))
    ]

    tables = {
        "dicom_studies": pd.DataFrame(study_rows, columns=["patient_key", "source_patient_id", "study_ref", "files"]),
        "genomics_files": pd.DataFrame(genomics_rows, columns=["patient_key", "source_patient_id", "path", "kind", "sample"]),
        "ehr_patients": pd.DataFrame(ehr_rows, columns=["patient_key", "source_patient_id"]),
    }
    for name, frame in tables.items():
        lake.write_table(frame, "raw", f"{INVENTORY}_{name}")

    keys = sorted(set().union(*(set(frame["patient_key"]) for frame in tables.values())))
    known = set(context.instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))
    new_keys = [key for key in keys if key not in known]
    if new_keys:
        context.instance.add_dynamic_partitions(PATIENTS_PARTITION_NAME, new_keys)
    context.log.info(f"inventory: {len(keys)} patients ({len(new_keys)} new), {len(study_rows)} studies, {len(quarantined)} files quarantined")
    return MaterializeResult(
        metadata={
            "patients": len(keys),
            "new_patients": len(new_keys),
            "studies": len(study_rows),
            "genomics_files": len(genomics_rows),
            "ehr_patients": len(ehr_rows),
            "quarantined": len(quarantined),
            "quarantine_ids": MetadataValue.json(quarantined),
        }
    )


def read_inventory(lake: LakeResource, name: str, patient_key: str) -> pd.DataFrame:
    """This patient's rows of one inventory table (PHI: use inside the asset only)."""
    frame = lake.read_table("raw", f"{INVENTORY}_{name}")
    return frame[frame["patient_key"] == patient_key].reset_index(drop=True)
