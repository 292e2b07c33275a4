"""The landing zone: where hospital systems drop VCF/BAM files and EHR extracts (the DICOM part is the PACS)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

# The patient column of a Synthea CSV: PATIENT in event tables, Id in patients.csv.
PATIENT_COLUMNS = ("PATIENT", "Id")


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def ndjson_patient_id(resource: object) -> str | None:
    """The patient a FHIR resource belongs to (its id for a Patient, else subject/patient reference)."""
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") == "Patient":
        return str(resource["id"]).strip() if resource.get("id") else None
    for field in ("subject", "patient"):
        reference = resource.get(field)
        if isinstance(reference, dict) and str(reference.get("reference", "")).startswith("Patient/"):
            return reference["reference"].split("/", 1)[1].strip()
    return None


class LandingZoneResource(ConfigurableResource):
    folder: str = Field(description="Landing folder (RADPLAN_HOME/landing by default)")

    @property
    def genomics_dir(self) -> Path:
        return Path(self.folder) / "genomics"

    @property
    def ehr_csv_dir(self) -> Path:
        return Path(self.folder) / "ehr" / "csv"

    @property
    def ehr_fhir_dir(self) -> Path:
        return Path(self.folder) / "ehr" / "fhir"

    @property
    def trials_dir(self) -> Path:
        return Path(self.folder) / "trials"

    @property
    def feedback_dir(self) -> Path:
        return Path(self.folder) / "feedback"

    def watched_folders(self, pacs: object = None) -> dict[str, list[Path]]:
        """The folders each arrival sensor watches, by sensor name part; DICOM only for a landing-folder PACS."""
        from radplan_resources.pacs import LandingFolderPacs

        folders = {"genomics": [self.genomics_dir], "ehr": [self.ehr_csv_dir, self.ehr_fhir_dir]}
        if isinstance(pacs, LandingFolderPacs):
            folders["dicom"] = [Path(pacs.folder)]
        return folders

    def ehr_fingerprints(self) -> dict[str, str]:
        """Source patient id (PHI) -> hash of that patient's rows in every CSV extract and FHIR NDJSON file.

        A patient's hash changes only when one of their own rows changes, so another patient's new
        extract lines leave it alone. Unparseable lines are skipped here (the EHR assets quarantine them).
        """
        digests: dict[str, hashlib._Hash] = {}

        def add(patient_id: str, source: str, payload: str) -> None:
            digests.setdefault(patient_id, hashlib.sha256()).update(f"{source}\x00{payload}\n".encode())

        for path in sorted(self.ehr_csv_dir.glob("*.csv")) if self.ehr_csv_dir.is_dir() else []:
            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                reader = csv.reader(handle)
                header = next(reader, [])
                column = next((header.index(name) for name in PATIENT_COLUMNS if name in header), None)
                if column is None:
                    continue
                for row in reader:
                    if len(row) > column and row[column].strip():
                        add(row[column].strip(), path.name, "\x1f".join(row))
        for path in sorted(self.ehr_fhir_dir.glob("*.ndjson")) if self.ehr_fhir_dir.is_dir() else []:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        patient_id = ndjson_patient_id(json.loads(line))
                    except json.JSONDecodeError:
                        continue
                    if patient_id:
                        add(patient_id, path.name, line.rstrip("\n"))
        return {patient_id: digest.hexdigest()[:24] for patient_id, digest in digests.items()}
