"""De-identification of structured EHR tables under HIPAA Safe Harbor (45 CFR 164.514(b)(2)).

How each of the 18 Safe Harbor identifiers is handled:

 1. Names: FIRST/MIDDLE/LAST/PREFIX/SUFFIX/MAIDEN dropped; names in free text replaced by [NAME]
    (note de-identifier with the patient's own names as deny list).
 2. Geographic subdivisions smaller than a state: ADDRESS, CITY, COUNTY, FIPS, BIRTHPLACE dropped;
    ZIP cut to its first 3 digits, "000" for the 17 restricted prefixes (data/hipaa_restricted_zip3.csv).
    STATE is kept (allowed).
 3. Dates: every date is shifted by the patient's keyed shift (``Pseudonymizer.date_shift_days``, the
    same as DICOM and notes). NOTE: Safe Harbor proper keeps only years; radplan keeps shifted dates
    (intervals preserved, PS3.15 "modified dates") as the design requires: a documented deviation.
    BIRTHDATE is replaced by BIRTH_YEAR (the year of the shifted birth date) and is null for patients
    aged 90 or over at the reference date; ages over 89 are reported only as "90+" (AGE_GROUP) / 90.
 4-5. Telephone / fax numbers: not in Synthea tables; in free text replaced by [PHONE].
 6. E-mail addresses: free text -> [EMAIL].
 7. SSN: dropped; free text -> [SSN].
 8. Medical record numbers: the patient Id (the MRN here) -> ``patient_key``; free text -> [MRN].
 9. Health plan beneficiary numbers: PAYER ids -> keyed tokens.
10. Account numbers: not present; free text card/account numbers -> [ACCOUNT].
11. Certificate/licence numbers: DRIVERS and PASSPORT dropped.
12-13. Vehicle and device identifiers / serial numbers: tables not ingested here; devices are handled
    by the FHIR de-identifier (identifiers and UDI removed).
14-15. URLs and IP addresses: free text -> [URL] / [IP].
16-17. Biometric identifiers and full-face photographs: none in EHR tables.
18. Any other unique identifying number or code: encounter, organization, provider and other record
    ids -> ``pseudonymizer.token(purpose, value)``; LAT/LON dropped; HEALTHCARE_EXPENSES kept (not
    identifying on its own).

Only listed columns are kept for each table, so a column added upstream is dropped, not leaked.
"""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from radplan.ehr.dates import find_dates
from radplan.ehr.identifiers import PatientIdentifiers, patient_identifiers
from radplan.pseudonym import Pseudonymizer

if TYPE_CHECKING:  # Presidio and spaCy: imported when text is de-identified, not with the age and ZIP helpers
    from radplan.ehr.notes import NoteDeidentifier

AGE_CAP = 90
# Columns kept per table (identifier columns are handled separately and always replaced).
KEPT_COLUMNS = {
    "patients": ["DEATHDATE", "MARITAL", "RACE", "ETHNICITY", "GENDER", "STATE", "HEALTHCARE_EXPENSES", "HEALTHCARE_COVERAGE"],
    "encounters": ["START", "STOP", "ENCOUNTERCLASS", "CODE", "DESCRIPTION", "BASE_ENCOUNTER_COST", "TOTAL_CLAIM_COST",
                   "PAYER_COVERAGE", "REASONCODE", "REASONDESCRIPTION"],
    "conditions": ["START", "STOP", "CODE", "DESCRIPTION"],
    "medications": ["START", "STOP", "CODE", "DESCRIPTION", "BASE_COST", "PAYER_COVERAGE", "DISPENSES", "TOTALCOST",
                    "REASONCODE", "REASONDESCRIPTION", "STATUS"],
    "observations": ["DATE", "CATEGORY", "CODE", "DESCRIPTION", "VALUE", "UNITS", "TYPE"],
    "procedures": ["START", "STOP", "CODE", "DESCRIPTION", "BASE_COST", "REASONCODE", "REASONDESCRIPTION"],
    "notes": ["date", "text"],
}
# Record-id columns -> token purpose (the same purpose everywhere keeps joins working).
TOKEN_COLUMNS = {"ENCOUNTER": "encounter", "PAYER": "payer", "ORGANIZATION": "organization", "PROVIDER": "provider", "note_id": "note"}
PATIENT_COLUMNS = ("PATIENT", "patient")
FREE_TEXT_COLUMNS = ("DESCRIPTION", "REASONDESCRIPTION", "text")  # "text": clinical notes, full NER
# Observation values with a free-text answer can hold PHI (Synthea asks "What address do you live at?").
IDENTIFYING_OBSERVATION_CODES = {"56799-0"}


def restricted_zip3() -> frozenset[str]:
    text = importlib_resources.files("radplan.ehr").joinpath("data/hipaa_restricted_zip3.csv").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return frozenset(lines[1:])


def zip3(value) -> str | None:
    """First 3 digits of a ZIP, "000" for restricted prefixes, None when absent or malformed."""
    if value is None or pd.isna(value):
        return None
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    if len(digits) not in (5, 9):
        # Leading zeros may have been lost (Massachusetts "02155" read as 2155).
        digits = digits.zfill(5) if 3 <= len(digits) < 5 else ""
    if not digits:
        return None
    return "000" if digits[:3] in restricted_zip3() else digits[:3]


def age_in_years(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def age_group(age: float | None) -> str | None:
    if age is None or pd.isna(age):
        return None
    return "90+" if age >= AGE_CAP else f"{int(age) // 10 * 10}-{int(age) // 10 * 10 + 9}"


class _TextCleaner:
    """Free-text cleaning with per-text caching of the patient-independent part.

    The patient-specific layers (deny lists, date shift) only change the result
    when the text holds one of the patient's identifiers or a date, so other texts
    (mostly coded descriptions repeated across patients) are de-identified once.
    """

    def __init__(self, deidentifier: NoteDeidentifier, *, use_ner: bool):
        self._deidentifier = deidentifier
        self._use_ner = use_ner
        self._generic: dict[str, str] = {}

    def clean(self, text, identifiers: PatientIdentifiers | None, shift: int | None):
        if text is None or not isinstance(text, str) or not text.strip():
            return text
        lowered = text.lower()
        needles = (identifiers.names + identifiers.id_values() + identifiers.addresses + identifiers.phones) if identifiers else []
        if find_dates(text) or any(n.lower() in lowered for n in needles if n):
            return self._deidentifier.deidentify(text, identifiers, shift, use_ner=self._use_ner).text
        if text not in self._generic:
            self._generic[text] = self._deidentifier.deidentify(text, None, None, use_ner=self._use_ner).text
        return self._generic[text]


def _shift_column(values: pd.Series, shifts: pd.Series) -> pd.Series:
    return values + pd.to_timedelta(shifts, unit="D")


def deidentify_tables(
    tables: dict[str, pd.DataFrame],
    pseudonymizer: Pseudonymizer,
    *,
    reference_date: dt.date | None = None,
    deidentifier: NoteDeidentifier | None = None,
) -> dict[str, pd.DataFrame]:
    """Safe Harbor de-identified copies of Synthea-style tables (see the module docstring).

    Patient ids become ``patient_key``; ``conditions`` gains ``AGE_AT_START`` (age at onset
    from the true dates, capped at 90) so features need no birth date.
    """
    from radplan.ehr.notes import NoteDeidentifier

    reference_date = reference_date or dt.date.today()
    deidentifier = deidentifier or NoteDeidentifier()
    # Coded descriptions: deny lists + patterns only (NER turns drug names into [LOCATION]).
    cleaner = _TextCleaner(deidentifier, use_ner=False)
    note_cleaner = _TextCleaner(deidentifier, use_ner=True)
    patients = tables.get("patients")
    identifiers: dict[str, PatientIdentifiers] = {}
    birth_dates: dict[str, dt.date] = {}
    if patients is not None:
        for _index, row in patients.iterrows():
            ids = patient_identifiers(row)
            identifiers[ids.source_patient_id] = ids
            if ids.birth_date:
                birth_dates[ids.source_patient_id] = ids.birth_date
    shift_of = {}

    def shift(patient_id: str) -> int:
        if patient_id not in shift_of:
            shift_of[patient_id] = pseudonymizer.date_shift_days(patient_id)
        return shift_of[patient_id]

    out: dict[str, pd.DataFrame] = {}
    for name, frame in tables.items():
        if name not in KEPT_COLUMNS:
            continue
        if name == "patients":
            out[name] = _deidentify_patients(frame, pseudonymizer, reference_date, shift)
            continue
        patient_column = next(c for c in PATIENT_COLUMNS if c in frame.columns)
        source_ids = frame[patient_column].astype("string").str.strip()
        shifts = source_ids.map(lambda pid: shift(pid) if isinstance(pid, str) else 0)
        result = pd.DataFrame({"patient_key": source_ids.map(lambda pid: pseudonymizer.patient_key(pid) if isinstance(pid, str) else None)})
        if name == "encounters" and "Id" in frame:
            result["encounter_token"] = frame["Id"].map(lambda v: pseudonymizer.token("encounter", v) if isinstance(v, str) else None)
        for column, purpose in TOKEN_COLUMNS.items():
            if column in frame:
                result[f"{column.lower()}_token"] = frame[column].map(lambda v, p=purpose: pseudonymizer.token(p, v) if isinstance(v, str) else None)
        for column in KEPT_COLUMNS[name]:
            if column not in frame:
                continue
            values = frame[column]
            if pd.api.types.is_datetime64_any_dtype(values):
                values = _shift_column(values, shifts)
            elif column in FREE_TEXT_COLUMNS:
                values = pd.Series(
                    [(note_cleaner if column == "text" else cleaner).clean(text, identifiers.get(pid), shift(pid) if isinstance(pid, str) else None) for text, pid in zip(values, source_ids)],
                    index=frame.index,
                    dtype="object",
                )
            result[column] = values
        if name == "observations" and "VALUE" in result:
            identifying = frame["CODE"].isin(IDENTIFYING_OBSERVATION_CODES)
            result.loc[identifying, "VALUE"] = None
        if name == "conditions" and "START" in frame:
            result["AGE_AT_START"] = [
                float(min(age_in_years(birth_dates[pid], start.date()), AGE_CAP)) if pid in birth_dates and not pd.isna(start) else None
                for pid, start in zip(source_ids, frame["START"])
            ]
        out[name] = result.reset_index(drop=True)
    return out


def _deidentify_patients(frame: pd.DataFrame, pseudonymizer: Pseudonymizer, reference_date: dt.date, shift) -> pd.DataFrame:
    source_ids = frame["Id"].astype("string").str.strip()
    shifts = source_ids.map(shift)
    result = pd.DataFrame({"patient_key": source_ids.map(pseudonymizer.patient_key)})
    ages = []
    for birth, death in zip(frame["BIRTHDATE"], frame.get("DEATHDATE", pd.Series([pd.NaT] * len(frame)))):
        if pd.isna(birth):
            ages.append(None)
            continue
        end = death.date() if not pd.isna(death) and death.date() < reference_date else reference_date
        ages.append(age_in_years(birth.date(), end))
    shifted_birth = _shift_column(frame["BIRTHDATE"], shifts)
    result["AGE_GROUP"] = [age_group(age) for age in ages]
    result["AGE_AT_REFERENCE"] = pd.array([None if a is None else min(a, AGE_CAP) for a in ages], dtype="Int64")
    result["BIRTH_YEAR"] = pd.array(
        [None if a is None or a >= AGE_CAP or pd.isna(b) else b.year for a, b in zip(ages, shifted_birth)], dtype="Int64"
    )
    result["ZIP3"] = frame["ZIP"].map(zip3) if "ZIP" in frame else None
    for column in KEPT_COLUMNS["patients"]:
        if column in frame:
            values = frame[column]
            result[column] = _shift_column(values, shifts) if pd.api.types.is_datetime64_any_dtype(values) else values
    return result.reset_index(drop=True)


def quarantined_rows_table(quarantine_dir: Path, pseudonymizer: Pseudonymizer) -> pd.DataFrame:
    """One row per quarantined record (patient_key, table, reason) from the ``*.rejected.jsonl``
    files of the readers; pass it as ``deid_tables["quarantined"]`` to ``clinical_features``.
    Records whose patient cannot be told get patient_key None."""
    rows = []
    for path in sorted(Path(quarantine_dir).glob("*.rejected.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            patient_id = record.get("patient_id")
            rows.append(
                {"patient_key": pseudonymizer.patient_key(patient_id) if patient_id else None, "table": record["table"], "reason": record["reason"]}
            )
    return pd.DataFrame(rows, columns=["patient_key", "table", "reason"])
