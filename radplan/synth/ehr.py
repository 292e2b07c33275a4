"""Synthea-v3-layout CSV rows and FHIR R4 Patient resources for the synthetic cohort.

Patient ``Id`` is the MRN (the one source patient id across DICOM, VCF and EHR). Encounters link
the diagnosis (conditions, biopsy), each CT study (procedure) and the start of first-line therapy
(medications, labs, ECOG, smoking status, vitals).
"""

from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from pathlib import Path

from radplan.cohort import RECIST_BEST_RESPONSE_CODE
from radplan.synth.cohort import PatientPlan, knowledge, patient_rng, stable_uuid

COLUMNS_PATH = Path(__file__).with_name("data") / "synthea_csv_columns.json"
CREATININE_MGDL_TO_UMOL = 88.42  # 1 mg/dL creatinine = 88.42 umol/L
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.7.1"


@lru_cache(maxsize=1)
def csv_columns() -> dict[str, list[str]]:
    return json.loads(COLUMNS_PATH.read_text(encoding="utf-8"))["columns"]


def _ts(day: dt.date, hhmmss: str = "090000") -> str:
    return f"{day.isoformat()}T{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:6]}Z"


def _plus_minutes(day: dt.date, hhmmss: str, minutes: int) -> str:
    start = dt.datetime.combine(day, dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:6])))
    return (start + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def therapy_start(plan: PatientPlan) -> dt.date:
    return plan.studies[0].date + dt.timedelta(days=14)


def ehr_rows(plan: PatientPlan, seed: int) -> dict[str, list[dict[str, str]]]:
    """Rows for patients, encounters, conditions, medications, observations, procedures."""
    kb = knowledge()
    rng = patient_rng(seed, plan.index, "ehr")
    cancer = kb["cancers"][plan.cancer_type]
    organization = stable_uuid(seed, "org", plan.institution["name"])
    provider = stable_uuid(seed, "provider", plan.oncologist)
    payer = stable_uuid(seed, "payer", "medicare" if plan.age >= 65 else "commercial")
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in csv_columns()}

    marital = "M" if rng.random() < 0.6 else str(rng.choice(["S", "W", "D"]))
    rows["patients"].append({
        "Id": plan.mrn, "BIRTHDATE": plan.birth_date.isoformat(), "DEATHDATE": "", "SSN": plan.ssn,
        "DRIVERS": plan.drivers_license, "PASSPORT": plan.passport, "PREFIX": plan.prefix, "FIRST": plan.first,
        "LAST": plan.last, "SUFFIX": "", "MAIDEN": "", "MARITAL": marital,
        "RACE": str(rng.choice(["white", "black", "asian", "other"], p=[0.72, 0.12, 0.1, 0.06])),
        "ETHNICITY": "hispanic" if rng.random() < 0.12 else "nonhispanic", "GENDER": plan.sex,
        "BIRTHPLACE": f"{plan.place['city']}  {plan.place['state']}  US", "ADDRESS": plan.street,
        "CITY": plan.place["city"], "STATE": plan.place["state"], "COUNTY": plan.place["county"],
        "ZIP": plan.place["zip"], "LAT": repr(plan_latitude(plan)), "LON": repr(plan_longitude(plan)),
        "HEALTHCARE_EXPENSES": f"{rng.uniform(20_000, 900_000):.2f}", "HEALTHCARE_COVERAGE": f"{rng.uniform(1_000, 60_000):.2f}",
    })

    def encounter(key: str, day: dt.date, hhmmss: str, kind: str, klass: str, reason: bool) -> str:
        encounter_id = stable_uuid(seed, "encounter", plan.index, key)
        code, description = kb["encounter_codes"][kind]
        rows["encounters"].append({
            "Id": encounter_id, "START": _ts(day, hhmmss), "STOP": _plus_minutes(day, hhmmss, 30), "PATIENT": plan.mrn,
            "ORGANIZATION": organization, "PROVIDER": provider, "PAYER": payer, "ENCOUNTERCLASS": klass, "CODE": code,
            "DESCRIPTION": description, "BASE_ENCOUNTER_COST": "136.80", "TOTAL_CLAIM_COST": f"{rng.uniform(150, 4000):.2f}",
            "PAYER_COVERAGE": f"{rng.uniform(0, 3000):.2f}", "REASONCODE": cancer["snomed"] if reason else "",
            "REASONDESCRIPTION": cancer["display"] if reason else "",
        })
        return encounter_id

    # Comorbidities were diagnosed years before the cancer, at one history visit.
    history_day = plan.diagnosis_date - dt.timedelta(days=int(rng.integers(400, 3000)))
    history = encounter("history", history_day, "101500", "lab", "ambulatory", False) if plan.comorbidities else ""
    for comorbidity in plan.comorbidities:
        rows["conditions"].append({"START": history_day.isoformat(), "STOP": "", "PATIENT": plan.mrn, "ENCOUNTER": history,
                                   "CODE": comorbidity["snomed"], "DESCRIPTION": comorbidity["display"]})
        if comorbidity["drug"]:
            _medication(rows, plan, payer, history, history_day, comorbidity["drug"], comorbidity["snomed"], comorbidity["display"], rng)

    diagnosis = encounter("diagnosis", plan.diagnosis_date, "093000", "oncology", "ambulatory", True)
    rows["conditions"].append({"START": plan.diagnosis_date.isoformat(), "STOP": "", "PATIENT": plan.mrn, "ENCOUNTER": diagnosis,
                               "CODE": cancer["snomed"], "DESCRIPTION": cancer["display"]})
    biopsy_code, biopsy_description = kb["procedures"]["biopsy"]
    rows["procedures"].append({"START": _ts(plan.diagnosis_date, "100000"), "STOP": _plus_minutes(plan.diagnosis_date, "100000", 45),
                               "PATIENT": plan.mrn, "ENCOUNTER": diagnosis, "CODE": biopsy_code, "DESCRIPTION": biopsy_description,
                               "BASE_COST": "1520.00", "REASONCODE": cancer["snomed"], "REASONDESCRIPTION": cancer["display"]})

    ct_code, ct_description = kb["procedures"]["ct_chest"]
    for study in plan.studies:
        imaging = encounter(f"ct{study.index}", study.date, study.time, "imaging", "outpatient", True)
        rows["procedures"].append({"START": _ts(study.date, study.time), "STOP": _plus_minutes(study.date, study.time, 20),
                                   "PATIENT": plan.mrn, "ENCOUNTER": imaging, "CODE": ct_code, "DESCRIPTION": ct_description,
                                   "BASE_COST": "840.00", "REASONCODE": cancer["snomed"], "REASONDESCRIPTION": cancer["display"]})

    start = therapy_start(plan)
    treatment = encounter("treatment", start, "083000", "oncology", "ambulatory", True)
    for drug in plan.therapy:
        _medication(rows, plan, payer, treatment, start, drug, cancer["snomed"], cancer["display"], rng)

    def observation(category: str, key: str, value: str, kind: str = "numeric") -> None:
        code, description, units = kb["loinc"][key]
        rows["observations"].append({"DATE": _ts(start, "083000"), "PATIENT": plan.mrn, "ENCOUNTER": treatment, "CATEGORY": category,
                                     "CODE": code, "DESCRIPTION": description, "VALUE": value, "UNITS": units, "TYPE": kind})

    observation("vital-signs", "height", f"{plan.height_cm:.1f}")
    observation("vital-signs", "weight", f"{plan.weight_kg:.1f}")
    observation("survey", "ecog", str(plan.ecog))
    observation("social-history", "smoking", kb["smoking_status"][plan.smoking], "text")
    if plan.creatinine_in_umol:  # a lab that reports SI units: same analyte, different LOINC and unit
        observation("laboratory", "creatinine_umol", f"{plan.labs['creatinine_mgdl'] * CREATININE_MGDL_TO_UMOL:.0f}")
    else:
        observation("laboratory", "creatinine_mgdl", f"{plan.labs['creatinine_mgdl']:.2f}")
    for key in ("anc", "bilirubin", "alt", "hemoglobin"):
        observation("laboratory", key, f"{plan.labs[key]:g}")

    # The observed outcome of first-line therapy, as a tumour board records it: RECIST best overall response.
    assessed = plan.studies[1].date if len(plan.studies) > 1 else start + dt.timedelta(days=63)
    assessment = encounter("assessment", assessed, "140000", "oncology", "ambulatory", True)
    rows["observations"].append({
        "DATE": _ts(assessed, "140000"), "PATIENT": plan.mrn, "ENCOUNTER": assessment, "CATEGORY": "exam",
        "CODE": RECIST_BEST_RESPONSE_CODE, "DESCRIPTION": "Best overall response (RECIST 1.1)",
        "VALUE": "Partial response" if plan.responder else "Progressive disease", "UNITS": "", "TYPE": "text",
    })
    return rows


def _medication(rows: dict, plan: PatientPlan, payer: str, encounter_id: str, day: dt.date, drug: str, reason_code: str,
                reason: str, rng) -> None:
    rxnorm = knowledge()["drugs_rxnorm"][drug]
    dispenses = int(rng.integers(1, 24))
    cost = float(rng.uniform(5, 900))
    rows["medications"].append({
        "START": _ts(day, "090000"), "STOP": "", "PATIENT": plan.mrn, "PAYER": payer, "ENCOUNTER": encounter_id, "CODE": rxnorm,
        "DESCRIPTION": drug, "BASE_COST": f"{cost:.2f}", "PAYER_COVERAGE": f"{cost * 0.8:.2f}", "DISPENSES": str(dispenses),
        "TOTALCOST": f"{cost * dispenses:.2f}", "REASONCODE": reason_code, "REASONDESCRIPTION": reason,
    })


def plan_latitude(plan: PatientPlan) -> float:
    return round(plan.place["lat"] + ((plan.index * 7919) % 1000 - 500) / 50_000, 9)


def plan_longitude(plan: PatientPlan) -> float:
    return round(plan.place["lon"] + ((plan.index * 104729) % 1000 - 500) / 50_000, 9)


def fhir_patient(plan: PatientPlan) -> dict:
    return {
        "resourceType": "Patient",
        "id": plan.mrn,
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical Record Number"}]},
             "system": MRN_SYSTEM, "value": plan.mrn},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS", "display": "Social Security Number"}]},
             "system": "http://hl7.org/fhir/sid/us-ssn", "value": plan.ssn},
        ],
        "name": [{"use": "official", "family": plan.last, "given": [plan.first], "prefix": [plan.prefix]}],
        "telecom": [{"system": "phone", "value": plan.phone, "use": "home"}],
        "gender": "male" if plan.sex == "M" else "female",
        "birthDate": plan.birth_date.isoformat(),
        "address": [{"line": [plan.street], "city": plan.place["city"], "state": plan.place["state_code"],
                     "postalCode": plan.place["zip"], "country": "US"}],
    }
