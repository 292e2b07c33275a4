"""Clinical features: codes, unit harmonization, medications, note findings."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from radplan.ehr.deid import deidentify_tables
from radplan.ehr.extracts import fhir_to_tables
from radplan.ehr.features import FEATURE_COLUMNS, clinical_features, convert_lab, ingredients_from_description


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "expected"),
    [
        ("2160-0", "88.42", "umol/L", ("lab_creatinine_mg_dl", 1.0)),
        ("38483-4", "1.2", "mg/dL", ("lab_creatinine_mg_dl", 1.2)),
        ("1975-2", "17.1", "µmol/L", ("lab_bilirubin_mg_dl", 1.0)),
        ("718-7", "135", "g/L", ("lab_hemoglobin_g_dl", 13.5)),
        ("751-8", "2500", "/uL", ("lab_anc_10e9_l", 2.5)),
        ("1742-6", "0.5", "ukat/L", ("lab_alt_u_l", 30.0)),
    ],
)
def test_lab_units_are_harmonized(loinc, value, unit, expected):
    feature, converted = convert_lab(loinc, value, unit)
    assert feature == expected[0] and converted == pytest.approx(expected[1], rel=1e-3)


def test_unknown_units_are_null_and_counted_never_mixed():
    assert convert_lab("2160-0", "1.0", "mg/L") is None
    observations = pd.DataFrame(
        {
            "patient_key": ["pa", "pa", "pb"],
            "DATE": pd.to_datetime(["2020-01-01", "2020-02-01", "2020-01-01"], utc=True),
            "CODE": ["2160-0", "2160-0", "2160-0"],
            "VALUE": ["88.42", "9.9", "7"],
            "UNITS": ["umol/L", "furlongs", "stones"],
            "TYPE": ["numeric"] * 3,
        }
    )
    features = clinical_features({"observations": observations}).set_index("patient_key")
    # The later value has an unknown unit: it is counted, and the earlier convertible value kept.
    assert features.loc["pa", "lab_creatinine_mg_dl"] == pytest.approx(1.0)
    assert features.loc["pa", "ehr_lab_unknown_unit_count"] == 1
    assert pd.isna(features.loc["pb", "lab_creatinine_mg_dl"]) and features.loc["pb", "ehr_lab_unknown_unit_count"] == 1


def test_ingredients_from_rxnorm_names():
    assert ingredients_from_description("1049625", "Acetaminophen 325 MG / Oxycodone Hydrochloride 10 MG Oral Tablet [Percocet]") == [
        "acetaminophen", "oxycodone hydrochloride"]
    assert ingredients_from_description("2123111", "NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler") == ["albuterol"]
    assert ingredients_from_description("757594", "Jolivette 28 Day Pack") == ["norethindrone"]


@pytest.fixture(scope="module")
def fhir_features(fhir_resources, pseudonymizer_module, note_deidentifier):
    tables = fhir_to_tables({k: fhir_resources[k] for k in ("Patient", "Condition", "MedicationRequest")})
    tables.pop("notes")
    deid = deidentify_tables(tables, pseudonymizer_module, reference_date=dt.date(2024, 1, 1), deidentifier=note_deidentifier)
    return clinical_features(deid), deid


@pytest.fixture(scope="module")
def pseudonymizer_module():
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    return Pseudonymizer(DEMO_KEY)


def test_features_from_fhir(fhir_features, fhir_resources, pseudonymizer_module):
    features, deid = fhir_features
    assert list(features.columns[: len(FEATURE_COLUMNS)]) == list(FEATURE_COLUMNS)
    assert features["patient_key"].is_unique and len(features) == 6
    lung = features[features["cancer_type"] == "nsclc"]
    assert len(lung) == 1
    row = lung.iloc[0]
    assert row["stage"] == "I" and row["ehr_stage_source"] == "condition_code"
    # Cisplatin + paclitaxel, all requests stopped: one finished line of therapy.
    assert row["prior_lines_of_therapy"] == 1
    assert "cisplatin" not in row["current_medications"]
    source = next(c for c in fhir_resources["Condition"] if c.code.coding[0].code == "254637007")
    patient_id = source.subject.reference.split("/")[-1]
    assert row["patient_key"] == pseudonymizer_module.patient_key(patient_id)
    onset = pd.Timestamp(source.onsetDateTime).date()
    assert row["diagnosis_date"].date() == pseudonymizer_module.shift_date(onset, patient_id)
    patient = next(p for p in fhir_resources["Patient"] if p.id == patient_id)
    expected_age = onset.year - patient.birthDate.year - ((onset.month, onset.day) < (patient.birthDate.month, patient.birthDate.day))
    assert row["age_years"] == expected_age and row["sex"] == "F"


def test_features_from_synthea_csv(synthea_raw, synthea_deid, pseudonymizer_module):
    tables = synthea_raw
    features = clinical_features(synthea_deid).set_index("patient_key")
    assert len(features) == len(tables["patients"])
    smoking = tables["observations"][tables["observations"]["CODE"] == "72166-2"]
    former = smoking[smoking["VALUE"] == "Former smoker"]["PATIENT"].iloc[0]
    assert features.loc[pseudonymizer_module.patient_key(former), "smoking_status"] == "former"
    assert set(features["smoking_status"].dropna()) <= {"never", "former", "current"}
    hemoglobin = tables["observations"][tables["observations"]["CODE"] == "718-7"].sort_values("DATE").iloc[-1]
    assert features.loc[pseudonymizer_module.patient_key(hemoglobin["PATIENT"]), "lab_hemoglobin_g_dl"] == pytest.approx(float(hemoglobin["VALUE"]))
    active = tables["medications"][tables["medications"]["STOP"].isna() & (tables["medications"]["CODE"] == "314076")]
    assert "lisinopril" in features.loc[pseudonymizer_module.patient_key(active["PATIENT"].iloc[0]), "current_medications"]


def test_note_findings_fill_gaps_with_source(fhir_features):
    features, deid = fhir_features
    key = features["patient_key"].iloc[0]
    findings = pd.DataFrame(
        [
            {"patient_key": key, "finding": "ecog", "value": 1, "negated": False},
            {"patient_key": key, "finding": "stage", "value": "IIIA", "negated": False},
            {"patient_key": key, "finding": "biomarker", "value": "ALK rearrangement", "negated": True},
            {"patient_key": key, "finding": "biomarker", "value": "EGFR exon 19 deletion", "negated": False},
        ]
    )
    row = clinical_features(deid, findings).set_index("patient_key").loc[key]
    assert row["ecog"] == 1 and row["ehr_ecog_source"] == "note"
    assert row["stage"] == "III" and row["ehr_stage_source"] == "note"
    assert row["ehr_biomarkers"] == ["EGFR exon 19 deletion"]


def test_fhir_observations_are_tabulated_and_harmonized(pseudonymizer_module, note_deidentifier):
    from radplan.ehr.extracts import parse_fhir_line

    def observation(code, value, unit, when):
        return parse_fhir_line(json.dumps({
            "resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/pt-1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": unit},
        }))

    resources = {"Observation": [
        observation("2160-0", 97.3, "umol/L", "2021-01-01T10:00:00Z"),
        observation("718-7", 12.1, "g/dL", "2021-01-01T10:00:00Z"),
        observation("89247-1", 2, "{score}", "2021-01-02T10:00:00Z"),
    ]}
    tables = fhir_to_tables(resources)
    assert list(tables["observations"]["UNITS"]) == ["umol/L", "g/dL", "{score}"]
    deid = deidentify_tables(tables, pseudonymizer_module, deidentifier=note_deidentifier)
    row = clinical_features(deid).iloc[0]
    assert row["patient_key"] == pseudonymizer_module.patient_key("pt-1")
    assert row["lab_creatinine_mg_dl"] == pytest.approx(97.3 / 88.42, rel=1e-4)
    assert row["lab_hemoglobin_g_dl"] == pytest.approx(12.1) and row["ecog"] == 2


def test_stored_findings_of_one_patient_without_key_and_text_values(fhir_features):
    features, deid = fhir_features
    key = features["patient_key"].iloc[0]
    one_patient = {name: frame[frame["patient_key"] == key] for name, frame in deid.items()}
    stored = pd.DataFrame(
        [
            {"note_id": "n1", "date_shifted": "2020-01-01", "finding": "ecog", "value": "2", "negated": False},
            {"note_id": "n1", "date_shifted": "2020-01-01", "finding": "smoking_status", "value": "former", "negated": False},
        ]
    )
    row = clinical_features(one_patient, stored).iloc[0]
    assert row["ecog"] == 2 and row["ehr_ecog_source"] == "note" and row["smoking_status"] == "former"
