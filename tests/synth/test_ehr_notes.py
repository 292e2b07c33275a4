"""EHR CSV (Synthea v3 layout), FHIR Patient/DocumentReference, and notes that agree with the structured data."""

from __future__ import annotations

import base64
import csv
import json
from collections import defaultdict

import pytest

TABLES = ("patients", "encounters", "conditions", "medications", "observations", "procedures")


def _rows(cohort, table):
    with open(cohort / "landing" / "ehr" / "csv" / f"{table}.csv", newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def notes(cohort):
    by_patient = defaultdict(list)
    for line in (cohort / "landing" / "ehr" / "fhir" / "DocumentReference.ndjson").read_text().splitlines():
        resource = json.loads(line)
        attachment = resource["content"][0]["attachment"]
        assert resource["resourceType"] == "DocumentReference" and attachment["contentType"] == "text/plain"
        by_patient[resource["subject"]["reference"].removeprefix("Patient/")].append(base64.b64decode(attachment["data"]).decode())
    return by_patient


@pytest.mark.parametrize("table", TABLES)
def test_csv_columns_equal_the_shared_synthea_export(cohort, shared_data, table):
    with open(shared_data / "ehr" / "synthea_csv" / f"{table}.csv", newline="") as handle:
        expected = next(csv.reader(handle))
    rows = _rows(cohort, table)
    assert rows[0] == expected
    bad = [i for i, row in enumerate(rows[1:], start=2) if len(row) != len(expected)]
    assert bad == ([3] if table == "conditions" else [])  # the one planted malformed row


def test_patients_table_carries_realistic_phi(cohort, truth):
    header, *rows = _rows(cohort, "patients")
    records = {row[0]: dict(zip(header, row)) for row in rows}
    assert records.keys() == truth["patients"].keys()
    for mrn, record in records.items():
        assert record["Id"].startswith("MRN")
        assert record["SSN"].startswith("999-") and len(record["SSN"]) == 11
        assert record["FIRST"] and record["LAST"] and record["ADDRESS"] and record["DRIVERS"] and record["PASSPORT"]
        assert len(record["ZIP"]) == 5 and float(record["LAT"]) and float(record["LON"])
        assert record["GENDER"] == truth["patients"][mrn]["sex"]


def test_clinical_codes_and_links(cohort, truth):
    encounter_header, *encounters = _rows(cohort, "encounters")
    encounter_ids = {row[0] for row in encounters}
    for table in ("conditions", "medications", "observations", "procedures"):
        header, *rows = _rows(cohort, table)
        column = header.index("ENCOUNTER")
        linked = [row[column] for row in rows if len(row) == len(header)]
        assert linked and set(linked) <= encounter_ids
    header, *conditions = _rows(cohort, "conditions")
    for mrn, patient in truth["patients"].items():
        codes = {row[4] for row in conditions if len(row) == len(header) and row[2] == mrn}
        assert patient["cancer_snomed"] in codes
    header, *observations = _rows(cohort, "observations")
    observed = defaultdict(dict)
    for row in observations:
        record = dict(zip(header, row))
        observed[record["PATIENT"]][record["CODE"]] = record
    for mrn, patient in truth["patients"].items():
        assert observed[mrn]["89247-1"]["VALUE"] == str(patient["ecog"])
        assert observed[mrn]["72166-2"]["TYPE"] == "text"
        creatinine = "14682-9" if patient["creatinine_reported_in_umol"] else "2160-0"
        assert observed[mrn][creatinine]["UNITS"] == ("umol/L" if patient["creatinine_reported_in_umol"] else "mg/dL")
        for code in ("29463-7", "8302-2", "751-8", "1975-2", "1742-6", "718-7"):
            assert float(observed[mrn][code]["VALUE"]) > 0
    header, *medications = _rows(cohort, "medications")
    for mrn, patient in truth["patients"].items():
        assert {row[5] for row in medications if row[2] == mrn} == set(patient["medications_rxnorm"])


def test_fhir_patients(cohort, truth):
    patients = [json.loads(line) for line in (cohort / "landing" / "ehr" / "fhir" / "Patient.ndjson").read_text().splitlines()]
    assert sorted(p["id"] for p in patients) == sorted(truth["patients"])
    for patient in patients:
        assert patient["resourceType"] == "Patient"
        assert any(i["value"] == patient["id"] and i["type"]["coding"][0]["code"] == "MR" for i in patient["identifier"])
        assert patient["name"][0]["family"] and patient["birthDate"] and patient["telecom"][0]["system"] == "phone"
        assert patient["address"][0]["postalCode"]


def test_notes_carry_phi_and_agree_with_structured_truth(cohort, truth, notes):
    from radplan.synth.cohort import knowledge

    kb = knowledge()
    canaries = json.loads((cohort / "truth" / "phi_canaries.json").read_text())["patients"]
    for mrn, patient in truth["patients"].items():
        texts = notes[mrn]
        assert 2 <= len(texts) <= 5
        joined = "\n".join(texts)
        assert mrn in joined
        names = [c for c in canaries[mrn] if c.startswith(("Mr. ", "Mrs. "))]
        assert names and names[0] in joined
        assert f"ECOG {patient['ecog']}" in joined
        assert f"{patient['stage']['tnm']}, stage {patient['stage']['group']}" in joined
        for marker, positive in patient["biomarker_status"].items():
            if positive:
                assert any(kb["somatic_hotspots"][key]["note_positive"] in joined for key in kb["somatic_hotspots"]
                           if kb["somatic_hotspots"][key]["gene"] == marker)
            else:
                assert kb["marker_negative_phrases"][marker] in joined
        smoking = {"never": "Never smoker", "former": "Former smoker", "current": "Current every-day smoker"}[patient["smoking_status"]]
        assert smoking in joined
