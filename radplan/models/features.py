"""The response model's design matrix: the ``patient_features`` contract table (plus, optionally, one
therapy per patient) turned into numeric columns with fixed encodings (``data/response_features.json``).

A therapy is a regimen: one drug name or several joined with ``+`` ("dabrafenib + trametinib"). Its
attributes are what the model sees of it: whether a drug of the regimen targets an alteration the
patient carries, and which drug classes the regimen contains.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from radplan.errors import RadplanInputError

THERAPY_CLASSES = ("targeted", "immunotherapy", "chemotherapy", "endocrine", "other")
# Established prognostic factors for objective response, fixed before any outcome is seen: baseline tumour
# burden, ECOG performance status, stage, and whether the first-line drug targets the patient's driver.
# (Here rather than in candidates.py so that federated site processes need not import Lightning.)
# With tens of patients, estimating four coefficients generalizes where ~60 free features overfit.
PROGNOSTIC_COVARIATES = ("total_lesion_volume_ml", "ecog", "stage_ordinal", "therapy_targets_driver")
# Tumour volume spans orders of magnitude; response depends on it roughly log-linearly.
LOG_SCALED_COVARIATES = frozenset({"total_lesion_volume_ml"})


@lru_cache(maxsize=1)
def encodings() -> dict[str, Any]:
    """The packaged encoding tables (levels, ordinal maps, therapy targets; see the file's _about)."""
    text = resources.files("radplan.models").joinpath("data/response_features.json").read_text(encoding="utf-8")
    return json.loads(text)


# ---------------------------------------------------------------- design matrix

NUMERIC_COLUMNS = (
    "age_years",
    "ecog",
    "prior_lines_of_therapy",
    "lab_creatinine_mg_dl",
    "lab_bilirubin_mg_dl",
    "lab_alt_u_l",
    "lab_anc_10e9_l",
    "lab_hemoglobin_g_dl",
    "lesion_count",
    "total_lesion_volume_ml",
    "largest_lesion_volume_ml",
    "pgx_DPYD_activity_score",
)
MODALITY_COLUMNS = ("has_imaging", "has_genomics", "has_ehr", "has_notes")
_PDL1 = re.compile(r"PD-?L1\b.*?(\d+(?:\.\d+)?)\s*%", re.IGNORECASE)
_HER2 = re.compile(r"HER2\b.*?\b([0-3])\s*\+", re.IGNORECASE)
_MSI_HIGH = re.compile(r"\bMSI-?H(?:igh)?\b|\bdMMR\b", re.IGNORECASE)


def _series(frame: pd.DataFrame, column: str, default: Any = np.nan) -> pd.Series:
    return frame[column] if column in frame.columns else pd.Series(default, index=frame.index, dtype=object)


def _as_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype(object).where(series.notna(), np.nan), errors="coerce").astype(float)


def _as_flag(series: pd.Series) -> pd.Series:
    """Booleans to 0/1; a missing flag stays NaN (unknown is not 'absent')."""
    return series.astype(object).map(lambda v: np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(bool(v))).astype(float)


def _as_list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def _biomarker_value(mentions: Any, pattern: re.Pattern) -> float:
    values = [float(m.group(1)) for text in _as_list(mentions) if (m := pattern.search(text))]
    return max(values) if values else np.nan


def regimen_drugs(therapy: Any) -> list[str]:
    """The lower-case drug names of a regimen ("Dabrafenib + Trametinib" -> ["dabrafenib", "trametinib"]); [] for none."""
    if therapy is None or (isinstance(therapy, float) and math.isnan(therapy)):
        return []
    return [part.strip().lower() for part in str(therapy).split("+") if part.strip()]


def regimen_name(drugs: Any) -> str:
    """One spelling per regimen: lower-case drug names, sorted, joined by " + "."""
    return " + ".join(sorted({str(d).strip().lower() for d in drugs if str(d).strip()}))


def therapy_targets_driver(patient_features: pd.DataFrame, therapy: pd.Series) -> pd.Series:
    """1.0 where a drug of the regimen is a targeted drug whose biomarker the patient carries (alt_* flags)."""
    targets = encodings()["therapy_targets"]
    flags = patient_features.reindex(columns=encodings()["alteration_flags"]).fillna(False).astype(bool)
    matched = [
        float(any(flags.at[index, flag] for drug in regimen_drugs(regimen) for flag in targets.get(drug, [])))
        for index, regimen in zip(patient_features.index, therapy)
    ]
    return pd.Series(matched, index=patient_features.index)


def drug_class(drug: Any) -> str | None:
    """The class of one drug; None when the encodings do not know the drug."""
    name = str(drug).strip().lower() if drug is not None else ""
    if name in encodings()["therapy_targets"]:
        return "targeted"
    for klass, members in encodings()["therapy_classes"].items():
        if name in members:
            return klass
    return None


def therapy_class(drug: Any) -> str:
    """The class of a single drug, "other" when unknown (kept for callers that show one class)."""
    return drug_class(drug) or "other"


def regimen_classes(therapy: Any) -> set[str]:
    """Every class among the regimen's drugs (an unknown drug counts as "other")."""
    return {drug_class(d) or "other" for d in regimen_drugs(therapy)}


def unknown_drugs(therapy: Any) -> list[str]:
    """Drugs of the regimen the encodings know nothing about: the model cannot describe them."""
    return [d for d in regimen_drugs(therapy) if drug_class(d) is None]


def therapy_profile(patient_features: pd.DataFrame, therapy: pd.Series) -> pd.Series:
    """What the model sees of each patient's regimen, as one label: its drug classes and whether it
    targets the patient's driver ("targeted | targets driver"). Estimates are only as good as the
    number of training patients who received a regimen with the same profile."""
    match = therapy_targets_driver(patient_features, therapy)
    classes = therapy.map(lambda regimen: "+".join(sorted(regimen_classes(regimen))) or "none")
    return classes + match.map(lambda m: " | targets driver" if m else " | no driver target")


def _validated(patient_features: pd.DataFrame) -> pd.DataFrame:
    if "patient_key" not in patient_features.columns:
        raise RadplanInputError("patient_features has no patient_key column")
    keys = patient_features["patient_key"]
    if keys.isna().any() or keys.duplicated().any():
        raise RadplanInputError("patient_features needs one row per patient (patient_key missing or duplicated)")
    return patient_features.set_index("patient_key", drop=False)


def feature_matrix(patient_features: pd.DataFrame, therapy: pd.Series | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Numeric design matrix (index = patient_key, which is never a column) and its column names.

    Columns, in order:
    - ``has_<modality>``: 0/1 missing-modality indicators; a missing modality
      leaves its own features NaN rather than dropping the patient;
    - numeric contract columns as floats (age, ECOG, prior lines, the five
      labs, lesion count/volumes, DPYD activity score), NaN when unknown;
    - ``stage_ordinal`` 1-4 from I-IV;
    - every ``rad_*`` column present (radiomic aggregates), in sorted order;
    - one-hot ``sex_*``, ``cancer_type_*``, ``smoking_status_*`` over fixed
      levels (all zero when unknown, so columns never depend on the cohort);
    - the twelve ``alt_*`` alteration flags as 0/1 and
      ``n_actionable_alterations``;
    - ``pgx_<GENE>_ordinal`` for each PGx gene: CPIC phenotypes ordered by
      activity/function (Poor 0 ... Ultrarapid 4), VKORC1 as the number of
      rs9923231 T alleles; Indeterminate or no call is NaN;
    - from note biomarker mentions: ``pdl1_tps_percent`` (highest PD-L1 %
      mentioned), ``her2_ihc_score`` (0-3), ``msi_high`` (0/1);
    - with ``therapy`` (one regimen per patient, see :func:`regimen_drugs`):
      ``therapy_targets_driver`` (a targeted drug matching an actionable flag)
      and ``therapy_class_{targeted,immunotherapy,chemotherapy,endocrine,other}``,
      1 for each class present in the regimen.
    """
    table = _validated(patient_features)
    enc = encodings()
    columns: dict[str, pd.Series] = {}
    for name in MODALITY_COLUMNS:
        columns[name] = _as_flag(_series(table, name, False)).fillna(0.0)
    for name in NUMERIC_COLUMNS:
        columns[name] = _as_float(_series(table, name))
    columns["stage_ordinal"] = _series(table, "stage").map(lambda v: enc["stage_ordinal"].get(str(v).strip().upper(), np.nan) if isinstance(v, str) else np.nan).astype(float)
    for name in sorted(c for c in table.columns if c.startswith("rad_")):
        columns[name] = _as_float(table[name])
    for variable, levels in enc["categorical_levels"].items():
        values = _series(table, variable).map(lambda v: str(v).strip().lower() if isinstance(v, str) else None)
        for level in levels:
            columns[f"{variable}_{level}"] = (values == level.lower()).astype(float)
    for flag in enc["alteration_flags"]:
        columns[flag] = _as_flag(_series(table, flag))
    columns["n_actionable_alterations"] = _series(table, "actionable_alterations").map(lambda v: float(len(_as_list(v)))).astype(float)
    for gene in enc["pgx_genes"]:
        mapping = enc["vkorc1_t_allele_count"] if gene == "VKORC1" else enc["pgx_phenotype_ordinal"]
        columns[f"pgx_{gene}_ordinal"] = _series(table, f"pgx_{gene}_phenotype").map(lambda v, m=mapping: m.get(v, np.nan) if isinstance(v, str) else np.nan).astype(float)
    mentions = _series(table, "biomarker_mentions", None)
    columns["pdl1_tps_percent"] = mentions.map(lambda v: _biomarker_value(v, _PDL1)).astype(float)
    columns["her2_ihc_score"] = mentions.map(lambda v: _biomarker_value(v, _HER2)).astype(float)
    columns["msi_high"] = mentions.map(lambda v: float(any(_MSI_HIGH.search(t) for t in _as_list(v)))).astype(float)
    if therapy is not None:
        drugs = _aligned(therapy, table, "therapy")
        columns["therapy_targets_driver"] = therapy_targets_driver(table, drugs)
        classes = drugs.map(regimen_classes)
        for klass in THERAPY_CLASSES:
            columns[f"therapy_class_{klass}"] = classes.map(lambda present, k=klass: float(k in present)).astype(float)
    matrix = pd.DataFrame(columns, index=table.index)
    matrix.index.name = "patient_key"
    return matrix, list(matrix.columns)


def feature_groups(feature_names: list[str]) -> dict[str, list[str]]:
    """Attribution players: one-hot columns of one source variable act together, every other column alone."""
    prefixes = [*encodings()["categorical_levels"], "therapy_class"]
    groups: dict[str, list[str]] = {}
    for name in feature_names:
        owner = next((p for p in prefixes if name.startswith(p + "_")), name)
        groups.setdefault(owner, []).append(name)
    return groups


def _aligned(values: pd.Series, table: pd.DataFrame, what: str) -> pd.Series:
    """Align a per-patient series by patient_key index, or by position when it has no key index."""
    if set(table.index).issubset(set(values.index)):
        return values.reindex(table.index)
    if len(values) != len(table):
        raise RadplanInputError(f"{what} has {len(values)} values for {len(table)} patients and is not indexed by patient_key")
    return pd.Series(values.to_numpy(), index=table.index, name=values.name)

