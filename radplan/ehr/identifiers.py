"""A patient's known direct identifiers, gathered from a Synthea patients row or a FHIR Patient.

They become deny lists for the note de-identifier (a patient's own name is the
PHI most likely to appear in that patient's notes) and canaries for tests.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

_BLANK = {"", "nan", "none", "nat"}


def _clean(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and pd.isna(value):
        return None
    text = str(value).strip()
    return None if text.lower() in _BLANK else text


@dataclass
class PatientIdentifiers:
    """Direct identifiers of one patient (PHI: never log or return as metadata)."""

    source_patient_id: str
    names: list[str] = field(default_factory=list)
    mrn: list[str] = field(default_factory=list)
    ssn: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)
    passport: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    birth_date: dt.date | None = None

    def id_values(self) -> list[str]:
        """Every identifier number (MRN, SSN, licence, passport), each once."""
        return _unique(self.mrn + self.ssn + self.drivers + self.passport)


def _unique(values) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        cleaned = _clean(value)
        if cleaned:
            seen.setdefault(cleaned, None)
    return list(seen)


def name_variants(prefix: str | None, given: list[str], family: str | None, suffix: str | None) -> list[str]:
    """Full name and the common ways notes refer to a person ("Mr. Family", "Given Family", ...)."""
    given = [g for g in (_clean(x) for x in given) if g]
    family = _clean(family)
    prefix = _clean(prefix)
    suffix = _clean(suffix)
    variants: list[str] = []
    if given and family:
        variants += [" ".join(given + [family]), f"{given[0]} {family}", f"{family}, {given[0]}", f"{family}, {' '.join(given)}"]
        if len(given) > 1:
            variants.append(f"{given[0]} {given[1][0]}. {family}")
    if given:
        variants.append(" ".join(given))
    if prefix and family:
        variants += [f"{prefix} {family}", f"{prefix} {' '.join(given + [family])}".strip()]
    if suffix and given and family:
        variants.append(f"{' '.join(given + [family])} {suffix}")
    # Single tokens last: every part of a name is an identifier on its own.
    variants += given
    if family:
        variants.append(family)
    # Synthea appends digits to names ("Sumiko254"); notes may drop them.
    variants += [re.sub(r"\d+", "", v).strip() for v in list(variants) if re.search(r"\d", v)]
    return _unique(v for v in variants if len(v) >= 2)


def _parse_date(value) -> dt.date | None:
    text = _clean(value)
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        return None


def _from_patients_row(row: Mapping) -> PatientIdentifiers:
    # FIRST may hold several given names ("Devin82 Anibal473"): each is an identifier on its own.
    given = [part for column in ("FIRST", "MIDDLE") for part in (_clean(row.get(column)) or "").split()]
    names = name_variants(row.get("PREFIX"), given, row.get("LAST"), row.get("SUFFIX"))
    maiden = _clean(row.get("MAIDEN"))
    if maiden:
        names += name_variants(None, given, maiden, None)
    address = [row.get("ADDRESS"), row.get("CITY"), row.get("ZIP")]
    return PatientIdentifiers(
        source_patient_id=str(row["Id"]).strip(),
        names=_unique(names),
        mrn=_unique([row.get("Id")]),
        ssn=_unique([row.get("SSN")]),
        drivers=_unique([row.get("DRIVERS")]),
        passport=_unique([row.get("PASSPORT")]),
        addresses=_unique(address),
        birth_date=_parse_date(row.get("BIRTHDATE")),
    )


def _from_fhir_patient(patient) -> PatientIdentifiers:
    names: list[str] = []
    for human_name in patient.name or []:
        names += name_variants(
            " ".join(human_name.prefix or []) or None,
            list(human_name.given or []),
            human_name.family,
            " ".join(human_name.suffix or []) or None,
        )
        if human_name.text:
            names.append(human_name.text)
    for extension in patient.extension or []:
        if extension.url.endswith("patient-mothersMaidenName") and extension.valueString:
            names += name_variants(None, extension.valueString.split()[:-1], extension.valueString.split()[-1], None)
    kinds: dict[str, list[str]] = {"MR": [], "SS": [], "DL": [], "PPN": []}
    for identifier in patient.identifier or []:
        codes = [c.code for c in (identifier.type.coding or [])] if identifier.type else []
        for code in codes:
            if code in kinds and identifier.value:
                kinds[code].append(identifier.value)
    phones, emails = [], []
    for contact in patient.telecom or []:
        (emails if contact.system == "email" else phones).append(contact.value)
    addresses: list[str] = []
    for address in patient.address or []:
        addresses += list(address.line or []) + [address.city, address.postalCode]
    return PatientIdentifiers(
        source_patient_id=str(patient.id),
        names=_unique(names),
        mrn=_unique([patient.id] + kinds["MR"]),
        ssn=_unique(kinds["SS"]),
        drivers=_unique(kinds["DL"]),
        passport=_unique(kinds["PPN"]),
        phones=_unique(phones),
        emails=_unique(emails),
        addresses=_unique(addresses),
        birth_date=patient.birthDate if isinstance(patient.birthDate, dt.date) else _parse_date(patient.birthDate),
    )


def patient_identifiers(patient) -> PatientIdentifiers:
    """Identifiers from a Synthea ``patients.csv`` row (Series/dict) or a fhir.resources Patient."""
    if getattr(patient, "resource_type", None) == "Patient" or type(patient).__name__ == "Patient":
        return _from_fhir_patient(patient)
    if isinstance(patient, pd.Series):
        patient = patient.to_dict()
    if isinstance(patient, Mapping) and "Id" in patient:
        return _from_patients_row(patient)
    raise TypeError("patient_identifiers expects a patients.csv row or a FHIR Patient resource")
