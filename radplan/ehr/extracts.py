"""EHR extract ingest: Synthea CSV tables and FHIR R4 bulk-export NDJSON.

Both readers stream their input (CSV lines in chunks, NDJSON line by line), keep
every good record and quarantine each bad one with its line number and reason.
A table may arrive as several files (``conditions.csv``, ``conditions.2024-06.csv``;
``Patient.000.ndjson``...). The returned quarantine records hold no PHI (table,
line, reason); with a ``quarantine_dir`` the rejected raw lines of each file are
also written there (``<source>.rejected.jsonl``: file, stage, error class, message,
line, raw line and the source patient id where it can be told; that folder is part
of the PHI zone), and a CSV file that cannot be read as its table at all is copied
there whole with a ``reason.json`` while the other files go on;
``deid.quarantined_rows_table`` turns the rejected lines into per-patient-key counts.

A per-patient read of a shared extract (a ``PatientScope``) skips the lines of every other registered
patient before they are typed or validated, so one patient's refresh costs a scan of the extract's
lines, not a validation of the whole cohort's records. Its rejected lines are written to
``<source>.<patient label>.rejected.jsonl``; lines no registered patient owns go to
``<source>.rejected.jsonl``, the same file whichever patient's run wrote it. A read with nothing left to reject
removes the quarantine files it answers for (the extract was corrected since they were written).

FHIR resources are parsed and validated with ``fhir.resources`` R4B models
(FHIR 4.3, wire-compatible with R4 for the resources used here).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from dataclasses import dataclass
from collections.abc import Iterable, Iterator
from importlib import resources as importlib_resources
from pathlib import Path

import pandas as pd
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from radplan.ehr.identifiers import PatientIdentifiers, patient_identifiers  # noqa: F401  (re-exported API)
from radplan.errors import InvalidEhrRecordError
from radplan.lake import atomic_write_text, quarantine_file

SYNTHEA_TABLES = ("patients", "encounters", "conditions", "medications", "observations", "procedures")
FHIR_TABLE_TYPES = ("Patient", "Condition", "MedicationRequest", "Observation", "DocumentReference")


def _schema() -> dict:
    return json.loads(importlib_resources.files("radplan.ehr").joinpath("data/synthea_schema.json").read_text())


CSV_STAGE = "ehr-csv"
FHIR_STAGE = "ehr-fhir"


_LABEL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class PatientScope:
    """Whose records a per-patient read takes from an extract that holds many patients.

    ``ids``: the source patient ids read (PHI). ``label``: names their quarantine files, so it must be a
    pseudonym (the patient key), never a source id. ``others``: every other registered patient; their lines are
    skipped before they are typed or validated, because their own runs read them. Lines of neither (no patient
    id, or an id no registered patient has) are validated in every patient's run, and their rejections go to
    the extract's shared quarantine file.
    """

    ids: frozenset[str]
    label: str
    others: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.label):
            raise ValueError("PatientScope.label must be letters, digits, '_' or '-' (it names quarantine files)")
        if self.ids & self.others:
            raise ValueError("PatientScope.ids and .others overlap")

    def reads(self, patient_id: str | None) -> bool:
        """Whether a line of this patient (None: cannot be told) is read here."""
        return patient_id is None or patient_id.strip() not in self.others

    def own_quarantine_name(self, name: str) -> str:
        """The quarantine file (stem) of this patient's rejected lines of extract ``name``."""
        return f"{name}.{self.label}"

    def quarantine_name(self, name: str, patient_id: str | None) -> str | None:
        """The quarantine file (stem) a rejected line goes to here; None when another patient's run writes it."""
        patient_id = patient_id.strip() if patient_id else None
        if patient_id in self.ids:
            return self.own_quarantine_name(name)
        return None if patient_id in self.others else name


def _quarantine_record(table: str, line: int | None, reason: str) -> dict:
    return {"table": table, "line": line, "reason": reason}


def _write_quarantine(quarantine_dir: Path | None, name: str, source: Path, stage: str, rejected: list[dict]) -> None:
    """Rejected raw lines with their reasons, one JSON object per line (PHI zone), in ``<name>.rejected.jsonl``.

    With none rejected, a file left by an earlier read is removed: the extract has been corrected since, and the
    file would go on counting rejections that no longer exist (``deid.quarantined_rows_table``)."""
    if quarantine_dir is None:
        return
    if not rejected:
        (Path(quarantine_dir) / f"{name}.rejected.jsonl").unlink(missing_ok=True)
        return
    records = [{"file": source.name, "stage": stage, "error_class": InvalidEhrRecordError.__name__, "message": r["reason"], **r}
               for r in rejected]
    atomic_write_text(Path(quarantine_dir) / f"{name}.rejected.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _quarantine_in_scope(quarantine_dir: Path | None, name: str, source: Path, stage: str, rejected: list[dict],
                         scope: PatientScope | None) -> list[dict]:
    """Write a file's rejected lines (all of them, or per ``scope``: the patient's file and the shared one) and
    return those this read answers for."""
    if scope is None:
        _write_quarantine(quarantine_dir, name, source, stage, rejected)
        return rejected
    # the two files this read answers for, written or (nothing rejected) removed: the patient's and the shared one
    files: dict[str, list[dict]] = {scope.own_quarantine_name(name): [], name: []}
    for record in rejected:
        target = scope.quarantine_name(name, record["patient_id"])
        if target is not None:
            files[target].append(record)
    for target, records in files.items():
        _write_quarantine(quarantine_dir, target, source, stage, records)
    return [record for records in files.values() for record in records]


def table_files(folder: Path, table: str, suffix: str = ".csv") -> list[Path]:
    """The files of one table: ``<table><suffix>`` and extra deliveries ``<table>.<part><suffix>``."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(f"{table}*{suffix}") if p.is_file() and p.name.split(".")[0] == table)


def _split_csv_line(text: str) -> list[str] | None:
    """The fields of one CSV line, or None when it is not CSV (e.g. a bare carriage return inside it)."""
    try:
        return next(csv.reader([text.rstrip("\r\n")]), [])
    except csv.Error:
        return None


def _csv_patient_id(text: str, header: list[str], patient_column: str) -> str | None:
    """The patient id of a rejected CSV line, when it can still be told (for per-patient counts)."""
    fields = _split_csv_line(text) or []
    if len(fields) != len(header) or patient_column not in header:
        return None
    return fields[header.index(patient_column)].strip() or None


def fhir_patient_id(resource: object) -> str | None:
    """The patient a parsed FHIR resource belongs to: its id for a Patient, else its subject/patient reference."""
    if not isinstance(resource, dict):
        return None
    if resource.get("resourceType") == "Patient":
        return resource["id"].strip() or None if isinstance(resource.get("id"), str) else None
    for key in ("subject", "patient"):
        reference = resource.get(key)
        if isinstance(reference, dict) and str(reference.get("reference", "")).startswith("Patient/"):
            return reference["reference"].split("/", 1)[1].strip() or None
    return None


def _fhir_patient_id(text: str) -> str | None:
    try:
        return fhir_patient_id(json.loads(text))
    except json.JSONDecodeError:
        return None


def _plain_field(raw: bytes, width: int, column: int) -> str | None:
    """Field ``column`` of a CSV line the csv module would split at every comma (no quote, carriage return or NUL
    inside, ``width`` fields), stripped; None for any other line. Invalid UTF-8 in the field reads as U+FFFD, as the
    reader's own patient-id lookup of a rejected line reads it."""
    line = raw.rstrip(b"\r\n")
    if b'"' in line or b"\r" in line or b"\x00" in line:
        return None
    fields = line.split(b",")
    return fields[column].decode("utf-8", "replace").strip() if len(fields) == width else None


def _csv_rows(path: Path, table: str, rejected: list[dict], scope: PatientScope | None = None,
              patient_column: str | None = None) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line number, header, fields) of each well-formed line; bad lines go to ``rejected``.

    With a ``scope``, a line whose ``patient_column`` names a patient the scope does not read (another registered
    patient's) is dropped: from its bytes alone when they tell its fields (:func:`_plain_field`), before it is decoded
    or split; otherwise once it is split. Bad lines are never dropped here (their quarantine file follows the scope)."""
    with open(path, "rb") as handle:
        try:
            header = _split_csv_line(handle.readline().decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            raise InvalidEhrRecordError(f"{table}: unreadable CSV header (not UTF-8)") from error
        if header is None:
            raise InvalidEhrRecordError(f"{table}: unreadable CSV header (not CSV, or carriage-return line endings)")
        column = header.index(patient_column) if scope is not None and patient_column in header else -1
        for line_number, raw in enumerate(handle, start=2):
            if not raw.strip():
                continue
            if column >= 0 and (owner := _plain_field(raw, len(header), column)) and not scope.reads(owner):
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                rejected.append({"line": line_number, "reason": "invalid UTF-8 encoding", "raw": raw.decode("utf-8", "replace")})
                continue
            fields = _split_csv_line(text)
            if fields is None:
                rejected.append({"line": line_number, "reason": "not a CSV line (bare carriage return)", "raw": text})
                continue
            if len(fields) != len(header):
                rejected.append({"line": line_number, "reason": f"expected {len(header)} columns, found {len(fields)}", "raw": text})
                continue
            if column >= 0 and not scope.reads(fields[column] or None):
                continue
            yield line_number, header, fields


def _typed_chunk(table: str, rows: list[tuple[int, list[str]]], header: list[str], spec: dict, rejected: list[dict]) -> pd.DataFrame:
    """Type one chunk's columns; rows with unparsable values or missing keys are moved to ``rejected``."""
    frame = pd.DataFrame([fields for _line, fields in rows], columns=header, dtype="string")
    frame = frame.replace({"": pd.NA})
    lines = pd.Series([line for line, _fields in rows], index=frame.index)
    bad_reason = pd.Series(pd.NA, index=frame.index, dtype="object")

    def mark(mask: pd.Series, reason: str) -> None:
        bad_reason[mask & bad_reason.isna()] = reason

    for column in spec["required"]:
        if column in frame:
            mark(frame[column].isna(), f"missing required value in {column}")
        else:
            raise InvalidEhrRecordError(f"{table}: required column {column} is missing")
    for column in spec["dates"]:
        if column in frame:
            parsed = pd.to_datetime(frame[column], format="%Y-%m-%d", errors="coerce")
            mark(parsed.isna() & frame[column].notna(), f"unparsable date in {column}")
            frame[column] = parsed
    for column in spec["datetimes"]:
        if column in frame:
            parsed = pd.to_datetime(frame[column], format="ISO8601", utc=True, errors="coerce")
            mark(parsed.isna() & frame[column].notna(), f"unparsable date-time in {column}")
            frame[column] = parsed
    for column in spec["numbers"] + spec["integers"]:
        if column in frame:
            parsed = pd.to_numeric(frame[column], errors="coerce")
            mark(parsed.isna() & frame[column].notna(), f"unparsable number in {column}")
            frame[column] = parsed.astype("Int64") if column in spec["integers"] else parsed.astype("float64")
    if table == "observations" and "TYPE" in frame and "VALUE" in frame:
        numeric = frame["TYPE"].eq("numeric").fillna(False)
        parsed = pd.to_numeric(frame["VALUE"], errors="coerce")
        mark(numeric & parsed.isna() & frame["VALUE"].notna(), "unparsable numeric VALUE")
    bad = bad_reason.notna()
    for index in bad[bad].index:
        rejected.append({"line": int(lines[index]), "reason": str(bad_reason[index]), "raw": ",".join(rows[index][1])})
    return frame[~bad].reset_index(drop=True)


def _read_csv_file(path: Path, table: str, spec: dict, patient_ids: set[str] | None, chunksize: int,
                   rejected: list[dict], scope: PatientScope | None = None) -> pd.DataFrame:
    """One CSV file of ``table``, typed and filtered; bad lines appended to ``rejected`` with their patient id.
    With a ``scope``, lines of the scope's other patients are dropped before they are typed."""
    chunks: list[pd.DataFrame] = []
    buffer: list[tuple[int, list[str]]] = []
    header: list[str] = []
    for line_number, header, fields in _csv_rows(path, table, rejected, scope, spec["patient_column"]):
        buffer.append((line_number, fields))
        if len(buffer) >= chunksize:
            chunks.append(_filter_patients(_typed_chunk(table, buffer, header, spec, rejected), spec, patient_ids))
            buffer = []
    if buffer or not chunks:
        if not header:
            header = next(csv.reader([path.open(encoding="utf-8-sig", errors="replace").readline()]), [])
        chunks.append(_filter_patients(_typed_chunk(table, buffer, header, spec, rejected), spec, patient_ids))
    for record in rejected:
        record["patient_id"] = _csv_patient_id(record["raw"], header, spec["patient_column"])
    return pd.concat(chunks, ignore_index=True)


def read_synthea_csv(
    folder: Path, quarantine_dir: Path | None = None, patient_ids: set[str] | None = None, chunksize: int = 100_000,
    scope: PatientScope | None = None,
) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """The Synthea tables in ``folder`` with typed columns, and a PHI-free record per quarantined row.

    Codes stay strings (SNOMED/RxNorm codes exceed float precision); dates are
    ``datetime64`` (date columns naive, date-time columns UTC). A file that cannot be read as its
    table (unreadable header, a required column missing) raises InvalidEhrRecordError; with a
    ``quarantine_dir`` it is quarantined whole instead (one record with ``line`` None) and the
    other files go on.

    ``patient_ids`` keeps those patients' rows. A ``scope`` reads one patient's rows (its ``ids``) without
    typing the other registered patients' rows, and quarantines per the scope (module docstring).
    """
    if scope is not None:
        if patient_ids is not None:
            raise ValueError("read_synthea_csv takes patient_ids or a scope, not both")
        patient_ids = set(scope.ids)
    folder = Path(folder)
    schema = _schema()
    tables: dict[str, pd.DataFrame] = {}
    quarantined: list[dict] = []
    for table in SYNTHEA_TABLES:
        spec = schema[table]
        frames: list[pd.DataFrame] = []
        for path in table_files(folder, table):
            rejected: list[dict] = []
            try:
                frames.append(_read_csv_file(path, table, spec, patient_ids, chunksize, rejected, scope))
            except InvalidEhrRecordError as error:
                if quarantine_dir is None:
                    raise
                quarantine_file(quarantine_dir, path, CSV_STAGE, error)
                quarantined.append(_quarantine_record(table, None, str(error)))
                continue
            rejected = _quarantine_in_scope(quarantine_dir, f"synthea_{path.stem}", path, CSV_STAGE,
                                            [{"table": table, **r} for r in rejected], scope)
            if scope is None and patient_ids is not None:
                rejected = [r for r in rejected if r["patient_id"] is None or r["patient_id"] in patient_ids]
            quarantined += [_quarantine_record(table, r["line"], r["reason"]) for r in rejected]
        if frames:
            tables[table] = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return tables, quarantined


def accepted_patient_ids(csv_dir: Path, fhir_dir: Path) -> set[str]:
    """Ids of the patients rows the EHR ingest accepts: Synthea ``patients`` CSV rows and FHIR Patient lines.

    A row or line the ingest rejects (and quarantines) names no patient here, so it cannot register
    a patient who would have no record at all; a file the ingest quarantines whole gives no ids.
    """
    ids: set[str] = set()
    spec = _schema()["patients"]
    for path in table_files(Path(csv_dir), "patients"):
        try:
            frame = _read_csv_file(path, "patients", spec, None, 100_000, [])
        except InvalidEhrRecordError:
            continue
        ids.update(str(value).strip() for value in frame[spec["patient_column"]].dropna() if str(value).strip())
    for path in table_files(Path(fhir_dir), "Patient", ".ndjson"):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    patient = parse_fhir_line(line, "Patient")
                except InvalidEhrRecordError:
                    continue
                if patient.id and patient.id.strip():
                    ids.add(patient.id.strip())
    return ids


def _filter_patients(frame: pd.DataFrame, spec: dict, patient_ids: set[str] | None) -> pd.DataFrame:
    if patient_ids is None:
        return frame
    return frame[frame[spec["patient_column"]].isin(patient_ids)].reset_index(drop=True)


def _ndjson_files(folder: Path) -> list[tuple[str, Path]]:
    """(resource type, file) pairs: ``Patient.ndjson``, ``Patient.000.ndjson`` and the like."""
    return sorted((path.name.split(".")[0], path) for path in Path(folder).glob("*.ndjson"))


def _validation_reason(error: ValidationError) -> str:
    """Where validation failed, without the offending value (it may be PHI)."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"invalid {location or 'resource'}: {first.get('type', 'error')} ({error.error_count()} error(s))"


def parse_fhir_line(line: str, expected_type: str | None = None):
    """One NDJSON line -> a validated fhir.resources model; InvalidEhrRecordError if it is not one."""
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidEhrRecordError(f"not JSON: {error.msg} at column {error.colno}") from error
    if not isinstance(payload, dict) or "resourceType" not in payload:
        raise InvalidEhrRecordError("no resourceType")
    resource_type = payload["resourceType"]
    if expected_type and resource_type != expected_type:
        raise InvalidEhrRecordError(f"resourceType {resource_type} in a {expected_type} file")
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as error:
        raise InvalidEhrRecordError(f"unknown resourceType {resource_type}") from error
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidEhrRecordError(_validation_reason(error)) from error


def _bulk_resource(resource):
    """A bulk-export resource must carry its id (FHIR Bulk Data: references between files use it), and a
    note's text attachment must decode (base64 of UTF-8), or no table can be built from it."""
    from radplan.ehr.scoring import document_text

    if not resource.id:
        raise InvalidEhrRecordError(f"{resource.get_resource_type()} without id")
    if resource.get_resource_type() == "DocumentReference":
        try:
            document_text(resource)
        except ValueError as error:  # binascii.Error and UnicodeDecodeError
            raise InvalidEhrRecordError(f"DocumentReference attachment is not base64 UTF-8 text ({type(error).__name__})") from error
    return resource


def _line_patient_id(raw: bytes) -> str | None:
    """The patient of an NDJSON line before validation (None when it is not JSON or names no patient)."""
    try:
        return fhir_patient_id(json.loads(raw))
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None


def read_fhir_ndjson(
    folder: Path, resource_types: Iterable[str] | None = None, quarantine_dir: Path | None = None,
    scope: PatientScope | None = None,
) -> tuple[dict[str, list], list[dict]]:
    """Validated resources per type from a bulk-export folder; invalid lines quarantined.

    With a ``scope``, the lines of the scope's other patients are skipped before validation (a line's patient is
    its Patient id or its subject/patient reference), and quarantine follows the scope (module docstring); the
    resources returned are the scope's patients' and those no registered patient owns."""
    wanted = set(resource_types) if resource_types is not None else None
    resources: dict[str, list] = {}
    quarantined: list[dict] = []
    for resource_type, path in _ndjson_files(folder):
        if wanted is not None and resource_type not in wanted:
            continue
        rejected: list[dict] = []
        kept = resources.setdefault(resource_type, [])
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip() or (scope is not None and not scope.reads(_line_patient_id(raw))):
                    continue
                try:
                    kept.append(_bulk_resource(parse_fhir_line(raw.decode("utf-8"), resource_type)))
                except UnicodeDecodeError:
                    rejected.append({"line": line_number, "reason": "invalid UTF-8 encoding", "raw": raw.decode("utf-8", "replace")})
                except InvalidEhrRecordError as error:
                    rejected.append({"line": line_number, "reason": str(error), "raw": raw.decode("utf-8", "replace")})
        for record in rejected:
            record["patient_id"] = _fhir_patient_id(record["raw"])
        rejected = _quarantine_in_scope(quarantine_dir, f"fhir_{path.stem}", path, FHIR_STAGE,
                                        [{"table": resource_type, **r} for r in rejected], scope)
        quarantined += [_quarantine_record(resource_type, r["line"], r["reason"]) for r in rejected]
    return resources, quarantined


# ---------------------------------------------------------------- FHIR -> tables


def _ref_id(reference) -> str | None:
    if reference is None or not reference.reference:
        return None
    return reference.reference.split("/")[-1].replace("urn:uuid:", "")


def _first_coding(concept):
    if concept is None or not concept.coding:
        return None, (concept.text if concept is not None else None)
    coding = concept.coding[0]
    return coding.code, coding.display or concept.text


def _representable(stamp: pd.Timestamp) -> pd.Timestamp | None:
    """The stamp, or None outside the years 1677-2262 that the tables' datetime64[ns] columns can hold.

    FHIR allows any year from 0001; such dates are placeholders, not clinical dates: kept as unknown.
    """
    naive = stamp.tz_localize(None) if stamp.tzinfo else stamp
    return stamp if pd.Timestamp.min <= naive <= pd.Timestamp.max else None


def _timestamp(value) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = _representable(pd.Timestamp(value))
    if stamp is None:
        return None
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")


def _date(value) -> pd.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        value = value.date()
    return _representable(pd.Timestamp(value))


def _patient_row(patient) -> dict:
    ids = patient_identifiers(patient)
    official = next((n for n in patient.name or [] if n.use in (None, "official", "usual")), None)
    maiden = next((n for n in patient.name or [] if n.use == "maiden"), None)
    address = (patient.address or [None])[0]
    lat = lon = None
    for extension in (address.extension or []) if address else []:
        if extension.url.endswith("geolocation"):
            for part in extension.extension or []:
                if part.url == "latitude":
                    lat = float(part.valueDecimal)
                elif part.url == "longitude":
                    lon = float(part.valueDecimal)
    return {
        "Id": patient.id,
        "BIRTHDATE": _date(patient.birthDate),
        "DEATHDATE": _date(patient.deceasedDateTime),
        "SSN": (ids.ssn or [None])[0],
        "DRIVERS": (ids.drivers or [None])[0],
        "PASSPORT": (ids.passport or [None])[0],
        "PREFIX": " ".join(official.prefix or []) if official and official.prefix else None,
        "FIRST": " ".join(official.given or []) if official and official.given else None,
        "LAST": official.family if official else None,
        "SUFFIX": " ".join(official.suffix or []) if official and official.suffix else None,
        "MAIDEN": maiden.family if maiden else None,
        "GENDER": {"female": "F", "male": "M"}.get(patient.gender or ""),
        "ADDRESS": " ".join(address.line or []) if address and address.line else None,
        "CITY": address.city if address else None,
        "STATE": address.state if address else None,
        "ZIP": address.postalCode if address else None,
        "LAT": lat,
        "LON": lon,
    }


def _observation_value(observation) -> tuple[str | None, str | None, str]:
    if observation.valueQuantity is not None:
        quantity = observation.valueQuantity
        value = None if quantity.value is None else str(quantity.value)
        return value, quantity.unit or quantity.code, "numeric"
    if observation.valueCodeableConcept is not None:
        code, display = _first_coding(observation.valueCodeableConcept)
        return display or code, None, "text"
    if observation.valueString is not None:
        return observation.valueString, None, "text"
    return None, None, "text"


FHIR_TABLE_COLUMNS = {
    "patients": ["Id", "BIRTHDATE", "DEATHDATE", "SSN", "DRIVERS", "PASSPORT", "PREFIX", "FIRST", "LAST", "SUFFIX", "MAIDEN",
                 "GENDER", "ADDRESS", "CITY", "STATE", "ZIP", "LAT", "LON"],
    "conditions": ["START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"],
    "medications": ["START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION", "REASONCODE", "REASONDESCRIPTION", "STATUS"],
    "observations": ["DATE", "PATIENT", "ENCOUNTER", "CATEGORY", "CODE", "DESCRIPTION", "VALUE", "UNITS", "TYPE"],
    "notes": ["patient", "note_id", "date", "text"],
}


def fhir_to_tables(resources: dict[str, list]) -> dict[str, pd.DataFrame]:
    """FHIR resources -> tables with the Synthea CSV column names where they overlap, plus ``notes``."""
    from radplan.ehr.scoring import document_text

    rows: dict[str, list[dict]] = {"patients": [], "conditions": [], "medications": [], "observations": [], "notes": []}
    for patient in resources.get("Patient", []):
        rows["patients"].append(_patient_row(patient))
    for condition in resources.get("Condition", []):
        code, display = _first_coding(condition.code)
        rows["conditions"].append(
            {
                "START": _date(condition.onsetDateTime or condition.recordedDate),
                "STOP": _date(condition.abatementDateTime),
                "PATIENT": _ref_id(condition.subject),
                "ENCOUNTER": _ref_id(condition.encounter),
                "CODE": code,
                "DESCRIPTION": display,
            }
        )
    for request in resources.get("MedicationRequest", []):
        code, display = _first_coding(request.medicationCodeableConcept)
        reason_code, reason_display = _first_coding((request.reasonCode or [None])[0])
        # A request no longer active has ended; bulk exports carry no stop date.
        rows["medications"].append(
            {
                "START": _timestamp(request.authoredOn),
                "STOP": None,
                "PATIENT": _ref_id(request.subject),
                "ENCOUNTER": _ref_id(request.encounter),
                "CODE": code,
                "DESCRIPTION": display,
                "REASONCODE": reason_code,
                "REASONDESCRIPTION": reason_display,
                "STATUS": request.status,
            }
        )
    for observation in resources.get("Observation", []):
        code, display = _first_coding(observation.code)
        value, units, value_type = _observation_value(observation)
        category = _first_coding((observation.category or [None])[0])[0]
        rows["observations"].append(
            {
                "DATE": _timestamp(observation.effectiveDateTime or observation.issued),
                "PATIENT": _ref_id(observation.subject),
                "ENCOUNTER": _ref_id(observation.encounter),
                "CATEGORY": category,
                "CODE": code,
                "DESCRIPTION": display,
                "VALUE": value,
                "UNITS": units,
                "TYPE": value_type,
            }
        )
    for document in resources.get("DocumentReference", []):
        rows["notes"].append(
            {"patient": _ref_id(document.subject), "note_id": document.id, "date": _timestamp(document.date), "text": document_text(document)}
        )
    tables = {name: pd.DataFrame(table_rows, columns=FHIR_TABLE_COLUMNS[name]) for name, table_rows in rows.items()}
    for name, columns in (("conditions", ("START", "STOP")), ("patients", ("BIRTHDATE", "DEATHDATE"))):
        for column in columns:
            if column in tables[name]:
                tables[name][column] = pd.to_datetime(tables[name][column])
    for name, columns in (("medications", ("START", "STOP")), ("observations", ("DATE",)), ("notes", ("date",))):
        for column in columns:
            if column in tables[name]:
                tables[name][column] = pd.to_datetime(tables[name][column], utc=True)
    # Typed whatever the rows hold: one patient without a geolocation would otherwise give an object column.
    for column in ("LAT", "LON"):
        tables["patients"][column] = tables["patients"][column].astype("float64")
    return tables

