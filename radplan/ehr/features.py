"""Per-patient clinical features from de-identified EHR tables (and note findings).

Codes are mapped through data files in ``radplan/ehr/data`` (SNOMED cancer types,
LOINC lab units, smoking answers, RxNorm ingredients, antineoplastic ingredients).
Lab values are converted to one canonical unit per feature; a value whose unit is
not in the table is never used (it is counted in ``ehr_lab_unknown_unit_count``).
Where structured data lacks stage/TNM/ECOG/smoking status, non-negated note
findings fill them; ``ehr_*_source`` says where each value came from.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from functools import lru_cache
from importlib import resources as importlib_resources

import pandas as pd

from radplan.ehr.deid import AGE_CAP, age_group

ECOG_LOINC = "89247-1"
SMOKING_LOINC = "72166-2"
LAB_FEATURES = ("lab_creatinine_mg_dl", "lab_bilirubin_mg_dl", "lab_alt_u_l", "lab_anc_10e9_l", "lab_hemoglobin_g_dl")
FEATURE_COLUMNS = (
    "patient_key", "age_years", "age_group", "sex", "cancer_type", "diagnosis_date", "stage", "tnm", "ecog",
    "smoking_status", "prior_lines_of_therapy", *LAB_FEATURES, "current_medications", "current_medication_rxnorm",
    "ehr_quarantined_rows",
)


def _data_rows(name: str) -> list[dict]:
    text = importlib_resources.files("radplan.ehr").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO("".join(line + "\n" for line in text.splitlines() if not line.startswith("#")))))


@lru_cache(maxsize=1)
def cancer_codes() -> dict[str, tuple[str, str | None]]:
    return {row["code"]: (row["cancer_type"], row["stage"] or None) for row in _data_rows("snomed_cancer_types.csv")}


@lru_cache(maxsize=1)
def lab_units() -> dict[str, tuple[str, dict[str, float]]]:
    """LOINC code -> (feature, {normalized unit: factor})."""
    table: dict[str, tuple[str, dict[str, float]]] = {}
    for row in _data_rows("lab_units.csv"):
        for loinc in row["loinc"].split(";"):
            table.setdefault(loinc, (row["feature"], {}))[1][normalize_unit(row["unit"])] = float(row["factor"])
    return table


@lru_cache(maxsize=1)
def smoking_answers() -> dict[str, str]:
    return {row["answer"].lower(): row["status"] for row in _data_rows("smoking_status.csv")}


@lru_cache(maxsize=1)
def rxnorm_ingredients() -> dict[str, list[str]]:
    return {row["rxnorm"]: row["ingredients"].split(";") for row in _data_rows("rxnorm_ingredients.csv")}


@lru_cache(maxsize=1)
def antineoplastic_ingredients() -> frozenset[str]:
    return frozenset(row["ingredient"] for row in _data_rows("antineoplastic_ingredients.csv"))


def normalize_unit(unit) -> str:
    return "" if unit is None or pd.isna(unit) else re.sub(r"\s+", "", str(unit)).lower().replace("μ", "µ")


def convert_lab(loinc: str, value, unit) -> tuple[str, float] | None:
    """(feature, value in canonical unit) for a known LOINC + unit; None for unknown units."""
    entry = lab_units().get(loinc)
    if entry is None:
        return None
    feature, factors = entry
    factor = factors.get(normalize_unit(unit))
    number = pd.to_numeric(value, errors="coerce")
    if factor is None or pd.isna(number):
        return None
    return feature, float(number) * factor


_STRENGTH = re.compile(r"\s\d[\d.]*\s*(?:MG|ML|MCG|UNT|%|MEQ|ACTUAT|HR)\b.*$", re.IGNORECASE)


def ingredients_from_description(code: str | None, description: str | None) -> list[str]:
    """Lower-case ingredient names of an RxNorm drug: the data file, else the normalized SCD/SBD name."""
    if code and code in rxnorm_ingredients():
        return rxnorm_ingredients()[code]
    if not description or pd.isna(description):
        return []
    text = re.sub(r"\[[^\]]*\]", "", description)  # brand name in brackets
    text = re.sub(r"^(?:NDA\d+\s+)?(?:[\d.]+\s*(?:ML|ACTUAT|HR)\s+)?", "", text.strip(), flags=re.IGNORECASE)
    names = []
    for part in text.split(" / "):
        name = _STRENGTH.sub("", " " + part.strip()).strip().lower()
        name = re.sub(r"\s+\d.*$", "", name)
        if name:
            names.append(name)
    return names


def _latest(frame: pd.DataFrame, date_column: str) -> pd.DataFrame:
    return frame.sort_values(date_column, kind="stable")


def clinical_features(
    deid_tables: dict[str, pd.DataFrame], note_findings: pd.DataFrame | None = None, *, as_of: dt.date | None = None
) -> pd.DataFrame:
    """One row per patient_key with the FEATURE_COLUMNS plus ``ehr_*`` extras.

    ``as_of`` is on the shifted timeline (compare with shifted dates); without it a
    medication is current when it has no stop date (and, for FHIR, status active).
    ``deid_tables["quarantined"]`` (patient_key per quarantined row), when present, fills
    ``ehr_quarantined_rows``.
    ``note_findings``: rows of ``extract_note_findings`` output with a ``patient_key`` column
    (optional when the tables hold one patient), values possibly stored as text.
    """
    patients = deid_tables.get("patients", pd.DataFrame(columns=["patient_key"]))
    keys = set(patients["patient_key"].dropna())
    for name in ("conditions", "medications", "observations"):
        if name in deid_tables and "patient_key" in deid_tables[name]:
            keys |= set(deid_tables[name]["patient_key"].dropna())
    rows = {key: {"patient_key": key} for key in sorted(keys)}
    _demographics(rows, patients)
    _cancer(rows, deid_tables.get("conditions"))
    _observations(rows, deid_tables.get("observations"))
    _medications(rows, deid_tables.get("medications"), as_of)
    _from_notes(rows, note_findings)
    quarantined = deid_tables.get("quarantined")
    counts = quarantined["patient_key"].value_counts().to_dict() if quarantined is not None and len(quarantined) else {}
    for key, row in rows.items():
        row["ehr_quarantined_rows"] = int(counts.get(key, 0))
    frame = pd.DataFrame(list(rows.values()))
    for column in FEATURE_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["ecog"] = frame["ecog"].astype("Int64")
    frame["prior_lines_of_therapy"] = frame["prior_lines_of_therapy"].fillna(0).astype(int)
    for column in ("age_years", *LAB_FEATURES):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in ("current_medications", "current_medication_rxnorm", "ehr_biomarkers"):
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if isinstance(v, list) else [])
    extras = sorted(c for c in frame.columns if c not in FEATURE_COLUMNS)
    return frame[list(FEATURE_COLUMNS) + extras]


def _demographics(rows: dict, patients: pd.DataFrame) -> None:
    for _index, patient in patients.iterrows():
        row = rows[patient["patient_key"]]
        gender = patient.get("GENDER")
        row["sex"] = gender if gender in ("F", "M") else None
        age = patient.get("AGE_AT_REFERENCE")
        row["age_years"] = None if age is None or pd.isna(age) else float(min(age, AGE_CAP))
        row["ehr_age_source"] = "reference_date" if row["age_years"] is not None else None


def _cancer(rows: dict, conditions: pd.DataFrame | None) -> None:
    if conditions is None or conditions.empty:
        return
    codes = cancer_codes()
    cancers = conditions[conditions["CODE"].astype(str).isin(codes.keys())].sort_values("START", kind="stable")
    for key, group in cancers.groupby("patient_key", sort=False):
        first = group.iloc[0]
        row = rows[key]
        row["cancer_type"] = codes[str(first["CODE"])][0]
        row["diagnosis_date"] = first["START"]
        staged = [codes[str(c)][1] for c in group["CODE"] if codes[str(c)][1]]
        if staged:
            row["stage"], row["ehr_stage_source"] = staged[-1], "condition_code"
        age = first.get("AGE_AT_START")
        if age is not None and not pd.isna(age):
            row["age_years"], row["ehr_age_source"] = float(min(age, AGE_CAP)), "diagnosis"
    for row in rows.values():
        row["age_group"] = age_group(row.get("age_years"))


def _observations(rows: dict, observations: pd.DataFrame | None) -> None:
    for row in rows.values():
        row.setdefault("age_group", age_group(row.get("age_years")))
        row["ehr_lab_unknown_unit_count"] = 0
    if observations is None or observations.empty:
        return
    ordered = _latest(observations, "DATE")
    answers = smoking_answers()
    for _index, obs in ordered.iterrows():
        row = rows.get(obs["patient_key"])
        if row is None:
            continue
        code = str(obs["CODE"])
        if code == ECOG_LOINC:
            value = pd.to_numeric(obs["VALUE"], errors="coerce")
            if not pd.isna(value) and 0 <= value <= 4:
                row["ecog"], row["ehr_ecog_source"] = int(value), "observation"
        elif code == SMOKING_LOINC:
            status = answers.get(str(obs["VALUE"]).strip().lower())
            if status:
                row["smoking_status"], row["ehr_smoking_status_source"] = status, "observation"
        elif code in lab_units():
            converted = convert_lab(code, obs["VALUE"], obs.get("UNITS"))
            if converted is None:
                row["ehr_lab_unknown_unit_count"] += 1
            else:
                row[converted[0]] = converted[1]


def _medications(rows: dict, medications: pd.DataFrame | None, as_of: dt.date | None) -> None:
    for row in rows.values():
        row["current_medications"], row["current_medication_rxnorm"], row["prior_lines_of_therapy"] = [], [], 0
    if medications is None or medications.empty:
        return
    antineoplastic = antineoplastic_ingredients()
    as_of_stamp = pd.Timestamp(as_of, tz="UTC") if as_of else None
    for key, group in medications.sort_values("START", kind="stable").groupby("patient_key", sort=False):
        row = rows[key]
        regimens: list[tuple[frozenset, bool]] = []
        current_names: dict[str, None] = {}
        current_codes: dict[str, None] = {}
        for start, day in group.groupby(group["START"].dt.floor("D"), sort=True):
            ingredients_by_row = [ingredients_from_description(str(c), d) for c, d in zip(day["CODE"], day["DESCRIPTION"])]
            active = [_is_current(r, as_of_stamp) for _i, r in day.iterrows()]
            for ingredients, code, is_active in zip(ingredients_by_row, day["CODE"], active):
                if is_active:
                    current_codes.setdefault(str(code), None)
                    for name in ingredients:
                        current_names.setdefault(name, None)
            cancer_drugs = frozenset(n for names in ingredients_by_row for n in names if n in antineoplastic)
            if cancer_drugs and (not regimens or regimens[-1][0] != cancer_drugs):
                regimens.append((cancer_drugs, any(a for a, names in zip(active, ingredients_by_row) if set(names) & cancer_drugs)))
        row["current_medications"] = sorted(current_names)
        row["current_medication_rxnorm"] = sorted(current_codes)
        # A line of therapy is a change of anticancer regimen; only finished ones are "prior".
        row["prior_lines_of_therapy"] = sum(1 for _drugs, ongoing in regimens if not ongoing)


def _is_current(medication: pd.Series, as_of: pd.Timestamp | None) -> bool:
    status = medication.get("STATUS")
    if isinstance(status, str) and status:
        return status == "active"
    stop, start = medication.get("STOP"), medication.get("START")
    if as_of is None:
        return stop is None or pd.isna(stop)
    return (pd.isna(start) or start <= as_of) and (stop is None or pd.isna(stop) or stop > as_of)


def _from_notes(rows: dict, note_findings: pd.DataFrame | None) -> None:
    if note_findings is None or note_findings.empty:
        return
    kept = note_findings[~note_findings["negated"].astype(bool)]
    date_column = next((c for c in ("date", "date_shifted") if c in kept), None)
    if date_column:
        kept = kept.sort_values(date_column, kind="stable")
    # Per-patient findings (one partition) may come without a patient_key column.
    only_patient = next(iter(rows)) if len(rows) == 1 else None
    for _index, finding in kept.iterrows():
        row = rows.get(finding["patient_key"]) if "patient_key" in finding else rows.get(only_patient)
        if row is None:
            continue
        kind, value = finding["finding"], finding["value"]
        if kind == "ecog":
            # Stored findings may hold the score as text.
            value = pd.to_numeric(value, errors="coerce")
            if pd.isna(value):
                continue
            value = int(value)
        if kind == "biomarker":
            row.setdefault("ehr_biomarkers", [])
            if value not in row["ehr_biomarkers"]:
                row["ehr_biomarkers"].append(value)
            continue
        column = {"stage": "stage", "tnm": "tnm", "ecog": "ecog", "smoking_status": "smoking_status"}.get(kind)
        if column and (row.get(column) is None or row.get(f"ehr_{column}_source") == "note"):
            row[column] = re.sub(r"[ABC]\d?$", "", value) if column == "stage" else value
            row[f"ehr_{column}_source"] = "note"
