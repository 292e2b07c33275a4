"""The response model's training inputs taken from plain tables: observed outcome labels, the first-line
regimen a patient received, and (synthetic cohorts only) the generator's true response probabilities."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd

from radplan import cohort
from radplan.models.features import regimen_name


def outcome_labels(observations: pd.DataFrame) -> pd.DataFrame:
    """Observed first-line response per patient (patient_key, responded) from de-identified EHR observations.

    The latest RECIST best-overall-response observation of each patient counts;
    a value that is not a RECIST response category leaves the patient unlabelled
    (missing, not "no response").
    """
    if observations is None or observations.empty:
        return pd.DataFrame(columns=["patient_key", "responded"])
    response_rows = observations[observations["CODE"].astype(str) == cohort.RECIST_BEST_RESPONSE_CODE]
    latest = response_rows.sort_values("DATE").groupby("patient_key").tail(1)
    labels = pd.DataFrame({"patient_key": latest["patient_key"].values, "responded": latest["VALUE"].map(cohort.is_responder).values})
    return labels[labels["responded"].notna()].reset_index(drop=True)


def first_line_therapy(current_medications: Any) -> str | None:
    """The anticancer regimen among the patient's current medications ("carboplatin + pembrolizumab + pemetrexed"),
    None when there is no anticancer drug. Non-cancer medications are left out."""
    from radplan.ehr.features import antineoplastic_ingredients

    medications = [] if current_medications is None else [str(m).strip().lower() for m in current_medications]
    drugs = set(medications) & antineoplastic_ingredients()
    return regimen_name(drugs) or None


def synthetic_true_probabilities(truth_patients: Mapping[str, Mapping], patient_key: Callable[[str], str]) -> pd.Series:
    """The generator's true response probability under the therapy each patient received, by patient_key.

    ``truth_patients`` is ``truth.json``'s ``patients`` (keyed by MRN), ``patient_key`` the
    pseudonymiser's MRN -> patient_key. Only a synthetic cohort has this; it feeds the Bayes-optimal AUC.
    """
    return pd.Series({patient_key(mrn): float(p["outcome"]["probability"]) for mrn, p in truth_patients.items()}, dtype=float)


def synthetic_therapy_probabilities(truth_patients: Mapping[str, Mapping], patient_key: Callable[[str], str]) -> pd.DataFrame:
    """(patient_key, therapy, true_probability): the generator's truth under every first-line option it recorded."""
    rows = [
        {"patient_key": patient_key(mrn), "therapy": therapy, "true_probability": float(probability)}
        for mrn, p in truth_patients.items()
        for therapy, probability in p.get("outcome", {}).get("probability_by_therapy", {}).items()
    ]
    return pd.DataFrame(rows, columns=["patient_key", "therapy", "true_probability"])
