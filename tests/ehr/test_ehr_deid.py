"""Safe Harbor de-identification of the structured tables."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from radplan.ehr.deid import deidentify_tables, restricted_zip3, zip3

REFERENCE_DATE = dt.date(2024, 1, 1)  # as in the synthea_deid fixture
IDENTIFIER_COLUMNS = {"Id", "PATIENT", "SSN", "DRIVERS", "PASSPORT", "PREFIX", "FIRST", "LAST", "SUFFIX", "MAIDEN",
                      "ADDRESS", "CITY", "COUNTY", "FIPS", "ZIP", "LAT", "LON", "BIRTHDATE", "BIRTHPLACE", "ENCOUNTER",
                      "PAYER", "PROVIDER", "ORGANIZATION"}


@pytest.fixture()
def raw_tables(synthea_raw):
    return synthea_raw


@pytest.fixture()
def deid_tables(synthea_deid):
    return synthea_deid


def test_patient_keys_and_date_shifts_match_the_shared_pseudonymizer(raw_tables, deid_tables, pseudonymizer):
    raw_patients = raw_tables["patients"]
    assert list(deid_tables["patients"]["patient_key"]) == [pseudonymizer.patient_key(i) for i in raw_patients["Id"]]
    raw = raw_tables["conditions"]
    deid = deid_tables["conditions"]
    assert list(deid["patient_key"]) == [pseudonymizer.patient_key(p) for p in raw["PATIENT"]]
    for (_, before), (_, after) in zip(raw.iterrows(), deid.iterrows()):
        # The same per-patient shift as DICOM dates get.
        assert after["START"].date() == pseudonymizer.shift_date(before["START"].date(), before["PATIENT"])
    encounters = deid_tables["encounters"]
    obs_encounters = set(deid_tables["observations"]["encounter_token"].dropna())
    assert obs_encounters <= set(encounters["encounter_token"])  # joins survive tokenization
    shifts = (deid_tables["encounters"]["START"] - raw_tables["encounters"]["START"]).dt.days
    assert (shifts < 0).all() and (shifts >= -730).all()


def test_no_identifier_columns_remain(deid_tables):
    for name, frame in deid_tables.items():
        assert not IDENTIFIER_COLUMNS & set(frame.columns), name


def test_no_canary_identifier_strings_anywhere(raw_tables, deid_tables):
    patients = raw_tables["patients"]
    canaries = set()
    for column in ("Id", "SSN", "DRIVERS", "PASSPORT", "FIRST", "LAST", "MAIDEN", "ADDRESS"):
        canaries |= {str(v) for v in patients[column].dropna()}
    canaries |= {str(v) for v in raw_tables["encounters"]["Id"]}
    # (Birth dates are no canaries: a shifted date of some other event may equal one by chance.)
    assert len(canaries) > 100
    cells = set()
    for frame in deid_tables.values():
        for column in frame.columns:
            cells |= {str(v) for v in frame[column].dropna()}
    blob = "\n".join(cells)
    leaked = [c for c in canaries if c in blob]
    assert leaked == []


def test_ages_over_89_are_grouped_and_birth_year_dropped(raw_tables, pseudonymizer, note_deidentifier):
    patients = raw_tables["patients"].head(3).copy()
    patients.loc[patients.index[0], "BIRTHDATE"] = pd.Timestamp("1930-06-01")  # 93 at the reference date
    patients.loc[patients.index[1], "BIRTHDATE"] = pd.Timestamp("1934-01-02")  # 89 at the reference date
    deid = deidentify_tables({"patients": patients}, pseudonymizer, reference_date=REFERENCE_DATE, deidentifier=note_deidentifier)
    old, younger = deid["patients"].iloc[0], deid["patients"].iloc[1]
    assert old["AGE_GROUP"] == "90+" and old["AGE_AT_REFERENCE"] == 90 and pd.isna(old["BIRTH_YEAR"])
    assert younger["AGE_GROUP"] == "80-89" and younger["AGE_AT_REFERENCE"] == 89 and not pd.isna(younger["BIRTH_YEAR"])


def test_zip_codes_are_cut_to_three_digits_with_restricted_prefixes_zeroed(deid_tables, raw_tables):
    assert len(restricted_zip3()) == 17
    assert zip3("03601") == "000" and zip3("89301-1234") == "000" and zip3("02155") == "021"
    assert zip3(None) is None and zip3("12") is None
    expected = [zip3(z) for z in raw_tables["patients"]["ZIP"]]
    assert list(deid_tables["patients"]["ZIP3"]) == expected
    assert deid_tables["patients"]["ZIP3"].dropna().str.fullmatch(r"\d{3}").all()


def test_free_text_with_patient_identifiers_is_cleaned(raw_tables, pseudonymizer, note_deidentifier):
    patients = raw_tables["patients"].head(1)
    row = patients.iloc[0]
    conditions = raw_tables["conditions"][raw_tables["conditions"]["PATIENT"] == row["Id"]].head(1).copy()
    conditions["DESCRIPTION"] = f"Discussed with {row['FIRST']} {row['LAST']} on 03/14/2022"
    deid = deidentify_tables({"patients": patients, "conditions": conditions}, pseudonymizer, deidentifier=note_deidentifier)
    text = deid["conditions"]["DESCRIPTION"].iloc[0]
    shifted = pseudonymizer.shift_date(dt.date(2022, 3, 14), row["Id"])
    assert row["FIRST"] not in text and row["LAST"] not in text and "[NAME]" in text
    assert shifted.strftime("%m/%d/%Y") in text


def test_fhir_notes_table_is_deidentified_and_feeds_findings(fhir_resources, pseudonymizer, note_deidentifier):
    from radplan.ehr.extracts import fhir_to_tables
    from radplan.ehr.findings import note_findings_table

    tables = fhir_to_tables({"Patient": fhir_resources["Patient"], "DocumentReference": fhir_resources["DocumentReference"][::20]})
    deid = deidentify_tables(tables, pseudonymizer, reference_date=REFERENCE_DATE, deidentifier=note_deidentifier)
    notes = deid["notes"]
    assert list(notes.columns) == ["patient_key", "note_id_token", "date", "text"]
    raw = tables["notes"]
    for (_, before), (_, after) in zip(raw.iterrows(), notes.iterrows()):
        assert after["patient_key"] == pseudonymizer.patient_key(before["patient"])
        assert after["date"].date() == pseudonymizer.shift_date(before["date"].date(), before["patient"])
        written_date = dt.date.fromisoformat(before["text"].split()[0])  # Synthea notes open with their date
        assert after["text"].split()[0] == pseudonymizer.shift_date(written_date, before["patient"]).isoformat()
    patients = {p.id: p for p in fhir_resources["Patient"]}
    for _, note in raw.iterrows():
        for name in patients[note["patient"]].name:
            for part in list(name.given) + [name.family]:
                assert part not in "\n".join(notes["text"])
    findings = note_findings_table(notes)
    assert set(findings["patient_key"]) <= set(notes["patient_key"])
    assert (findings["finding"] == "smoking_status").any()


def test_patient_identifiers_from_csv_row_and_fhir_patient(raw_tables, fhir_resources):
    from radplan.ehr.extracts import patient_identifiers

    row = raw_tables["patients"].dropna(subset=["PREFIX"]).iloc[0]
    ids = patient_identifiers(row)
    assert {f"{row['FIRST']} {row['LAST']}", row["FIRST"], row["LAST"], f"{row['PREFIX']} {row['LAST']}"} <= set(ids.names)
    assert ids.ssn == [row["SSN"]] and ids.mrn == [row["Id"]] and ids.birth_date == row["BIRTHDATE"].date()
    patient = fhir_resources["Patient"][0]
    fhir_ids = patient_identifiers(patient)
    assert set(patient.name[0].given) <= set(fhir_ids.names)
    assert patient.telecom[0].value in fhir_ids.phones and patient.address[0].postalCode in fhir_ids.addresses
