"""De-identification of FHIR R4 bulk-export resources, with the same rules as the tables.

Every resource: ``id`` -> keyed token (Patient: the patient key), references rewritten
the same way, ``identifier``/``text`` narrative/reference ``display`` removed, every
date/dateTime/instant shifted by the patient's shift, base64 text attachments
(notes) de-identified by the note de-identifier. Patient: names, telecom, contact,
photo, identifiers and identifying extensions removed; address kept as state + 3-digit
ZIP; birthDate kept as year (removed for ages 90+). Output is validated with fhir.resources.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

from radplan.ehr.deid import AGE_CAP, age_in_years, zip3
from radplan.ehr.extracts import parse_fhir_line, read_fhir_ndjson
from radplan.ehr.identifiers import patient_identifiers
from radplan.ehr.notes import NoteDeidentifier
from radplan.errors import InvalidEhrRecordError, InvalidNoteError
from radplan.lake import atomic_path
from radplan.pseudonym import Pseudonymizer

_FHIR_DATE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(?P<rest>T[\d:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")
# Identifier-bearing elements (incl. device UDI/serial numbers, Safe Harbor #13).
_DROPPED_KEYS = {"identifier", "udiCarrier", "serialNumber", "lotNumber", "distinctIdentifier"}
_PATIENT_DROPPED = {"name", "telecom", "contact", "photo", "identifier", "text", "generalPractitioner", "link", "multipleBirthInteger", "multipleBirthBoolean"}
_KEPT_PATIENT_EXTENSIONS = ("us-core-race", "us-core-ethnicity", "us-core-birthsex")


def _patient_id(resource: dict) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for key in ("subject", "patient", "beneficiary"):
        reference = (resource.get(key) or {}).get("reference", "")
        if reference.startswith("Patient/"):
            return reference.split("/", 1)[1]
    return None


class FhirDeidentifier:
    def __init__(self, pseudonymizer: Pseudonymizer, deidentifier: NoteDeidentifier, *, reference_date: dt.date | None = None):
        self._pseudonymizer = pseudonymizer
        self._deidentifier = deidentifier
        self._reference_date = reference_date or dt.date.today()
        self._identifiers: dict = {}

    def register_patients(self, patients) -> None:
        for patient in patients:
            self._identifiers[patient.id] = patient_identifiers(patient)

    def _new_id(self, resource_type: str, value: str) -> str:
        if resource_type == "Patient":
            return self._pseudonymizer.patient_key(value)
        return self._pseudonymizer.token(f"fhir-{resource_type}", value, length=32)

    def deidentify(self, resource) -> dict:
        payload = json.loads(resource.model_dump_json(exclude_none=True))
        patient_id = _patient_id(payload)
        shift = self._pseudonymizer.date_shift_days(patient_id) if patient_id else None
        if payload["resourceType"] == "Patient":
            payload = self._patient(payload)
        cleaned = self._walk(payload, shift, patient_id)
        cleaned["id"] = self._new_id(payload["resourceType"], payload["id"]) if payload.get("id") else None
        cleaned = {k: v for k, v in cleaned.items() if v is not None}
        # Validate what we write: a de-identified resource must still be valid FHIR.
        return json.loads(parse_fhir_line(json.dumps(cleaned), payload["resourceType"]).model_dump_json(exclude_none=True))

    def _patient(self, payload: dict) -> dict:
        payload = {k: v for k, v in payload.items() if k not in _PATIENT_DROPPED}
        payload["extension"] = [e for e in payload.get("extension", []) if e.get("url", "").endswith(_KEPT_PATIENT_EXTENSIONS)] or None
        birth = payload.pop("birthDate", None)
        if birth:
            end = self._reference_date
            deceased = payload.get("deceasedDateTime")
            if deceased:
                end = min(end, dt.date.fromisoformat(deceased[:10]))
            if age_in_years(dt.date.fromisoformat(birth[:10]), end) < AGE_CAP:
                shifted = dt.date.fromisoformat(birth[:10]) + dt.timedelta(days=self._pseudonymizer.date_shift_days(payload["id"]))
                # Kept as a bare year: FHIR "date" allows YYYY; never shifted again below.
                payload["birthDate"] = f"{shifted.year:04d}"
        addresses = []
        for address in payload.get("address", []):
            kept = {k: address[k] for k in ("state", "country") if k in address}
            if address.get("postalCode") and zip3(address["postalCode"]):
                kept["postalCode"] = zip3(address["postalCode"])
            if kept:
                addresses.append(kept)
        payload["address"] = addresses or None
        return {k: v for k, v in payload.items() if v is not None}

    def _walk(self, value, shift: int | None, patient_id: str | None, key: str = ""):
        if isinstance(value, dict):
            out = {}
            for child_key, child in value.items():
                narrative = child_key == "text" and isinstance(child, dict) and "div" in child
                if child_key in _DROPPED_KEYS or narrative or (child_key == "display" and "reference" in value):
                    continue
                if child_key == "reference" and isinstance(child, str):
                    out[child_key] = self._reference(child)
                elif child_key == "data" and value.get("contentType", "").startswith("text/"):
                    out[child_key] = self._note(child, shift, patient_id)
                    # The de-identified note is plain UTF-8 text whatever it was (RTF and HTML are reduced to text).
                    out["contentType"] = "text/plain; charset=utf-8"
                elif child_key == "contentType" and "contentType" in out:
                    continue
                elif child_key == "birthDate":
                    out[child_key] = child
                else:
                    out[child_key] = self._walk(child, shift, patient_id, child_key)
            return out
        if isinstance(value, list):
            return [self._walk(item, shift, patient_id, key) for item in value]
        if isinstance(value, str) and shift is not None:
            match = _FHIR_DATE.match(value)
            if match:
                shifted = dt.date.fromisoformat(match["date"]) + dt.timedelta(days=shift)
                return shifted.isoformat() + (match["rest"] or "")
        return value

    def _reference(self, reference: str) -> str:
        if "?" in reference:  # conditional references carry identifiers (NPI, organization ids)
            return reference.split("?", 1)[0]
        parts = reference.replace("urn:uuid:", "").split("/")
        if len(parts) == 2:
            return f"{parts[0]}/{self._new_id(parts[0], parts[1])}"
        return reference

    def _note(self, data: str, shift: int | None, patient_id: str | None) -> str:
        # Bytes: the de-identifier decodes them (UTF-8, UTF-16, Windows-1252) or raises InvalidNoteError.
        result = self._deidentifier.deidentify(base64.b64decode(data), self._identifiers.get(patient_id), shift)
        return base64.b64encode(result.text.encode("utf-8")).decode("ascii")


def deidentify_fhir_folder(in_dir: Path, out_dir: Path, pseudonymizer: Pseudonymizer, deidentifier: NoteDeidentifier | None = None) -> dict:
    """De-identify every ``*.ndjson`` in ``in_dir`` into ``out_dir``; returns PHI-free counts."""
    resources, quarantined = read_fhir_ndjson(Path(in_dir), quarantine_dir=Path(out_dir) / "_quarantine")
    fhir = FhirDeidentifier(pseudonymizer, deidentifier or NoteDeidentifier())
    fhir.register_patients(resources.get("Patient", []))
    written: dict[str, int] = {}
    for resource_type, items in resources.items():
        target = Path(out_dir) / f"{resource_type}.ndjson"
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for resource in items:
                try:
                    handle.write(json.dumps(fhir.deidentify(resource), separators=(",", ":")) + "\n")
                except InvalidEhrRecordError as error:
                    quarantined.append({"table": resource_type, "line": None, "reason": f"invalid after de-identification: {error}"})
                    continue
                except InvalidNoteError as error:
                    # Left out, never written unscanned; the reason names no PHI.
                    quarantined.append({"table": resource_type, "line": None, "reason": f"note attachment not de-identified: {error}"})
                    continue
                written[resource_type] = written.get(resource_type, 0) + 1
    return {"written": written, "quarantined": len(quarantined)}
