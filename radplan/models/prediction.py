"""Response estimates from a fitted :class:`~radplan.models.training.ResponseModel`: per patient, and per
(patient, candidate therapy) with the scope of each estimate (:mod:`radplan.models.therapies`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from radplan.models.explanation import _top_attributions, explain
from radplan.models.features import _aligned, _validated, feature_matrix, therapy_class
from radplan.models.therapies import MIN_THERAPY_SUPPORT, scope_notes
from radplan.models.training import ResponseModel, single_threaded

THERAPY_PREDICTION_COLUMNS = ("patient_key", "therapy", "probability", "ci_low", "ci_high", "top_attributions",
                              "model_name", "model_version", "in_scope", "scope_note")


@single_threaded
def predict_response(model: ResponseModel, patient_features: pd.DataFrame, *, therapy: pd.Series | None = None, top_k: int = 5,
                     n_permutations: int = 16, seed: int = 0) -> pd.DataFrame:
    """patient_key, probability, ci_low, ci_high (calibration-based 95% interval, see module doc), base_value, top_attributions.

    ``top_attributions`` lists the ``top_k`` feature groups by |Shapley
    contribution| as {feature, value (the patient's own value), contribution}.
    """
    return _predict_and_explain(model, patient_features, therapy, top_k, n_permutations, seed)[0]


def _predict_and_explain(model: ResponseModel, patient_features: pd.DataFrame, therapy: pd.Series | None, top_k: int,
                         n_permutations: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = _validated(patient_features)
    if model.uses_therapy and therapy is None:
        raise ValueError("this model uses therapy features: pass therapy=")
    design, _ = feature_matrix(patient_features, therapy if model.uses_therapy else None)
    probability = model.predict_proba(design)[:, 1]
    ci_low, ci_high = model.interval(probability)
    contributions, base = explain(model, design, n_permutations=n_permutations, seed=seed)
    if model.uses_therapy:
        table = table.assign(therapy_class=_aligned(therapy, table, "therapy").map(therapy_class))
    predictions = pd.DataFrame({
        "patient_key": design.index.to_numpy(),
        "probability": probability,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "base_value": base.to_numpy(),
        "top_attributions": _top_attributions(contributions, table, design, top_k),
    })
    return predictions, contributions



@single_threaded
def therapy_response_predictions(model: ResponseModel | None, patient_features: pd.DataFrame, candidates: pd.DataFrame, *,
                                 model_name: str, model_version: str | None, min_support: int = MIN_THERAPY_SUPPORT,
                                 top_k: int = 5, n_permutations: int = 16, seed: int = 0) -> pd.DataFrame:
    """One row per (patient_key, therapy) of ``candidates`` (:data:`THERAPY_PREDICTION_COLUMNS`).

    In-scope rows carry P(response | patient, therapy) with its calibration-based
    95% interval and the top attributions (JSON); out-of-scope rows have null
    probability and interval, ``[]`` attributions, ``in_scope`` false and a
    ``scope_note`` in plain words. A candidate whose patient has no features row
    is out of scope too.
    """
    table = _validated(patient_features).reset_index(drop=True)
    pairs = candidates[["patient_key", "therapy"]].merge(table, on="patient_key", how="left", indicator=True).reset_index(drop=True)
    notes = pd.Series(None, index=pairs.index, dtype=object)
    known = pairs["_merge"] == "both"
    notes[~known] = "indeterminate: no patient features for this patient"
    if known.any():
        notes[known] = scope_notes(model, pairs[known].drop(columns="_merge"), min_support)
    out = pd.DataFrame({
        "patient_key": pairs["patient_key"].astype(str),
        "therapy": pairs["therapy"].astype(str),
        "probability": np.nan, "ci_low": np.nan, "ci_high": np.nan,
        "top_attributions": "[]",
        "model_name": model_name, "model_version": None if model_version is None else str(model_version),
        "in_scope": notes.isna().to_numpy(),
        "scope_note": notes.to_numpy(),
    })
    scoped = pairs[out["in_scope"].to_numpy()].drop(columns="_merge")
    if len(scoped):
        # One design row per pair: a unique row key lets a patient appear once per candidate therapy.
        keyed = scoped.assign(patient_key=[f"pair{i}" for i in scoped.index])
        predictions, _ = _predict_and_explain(model, keyed, keyed["therapy"].reset_index(drop=True), top_k, n_permutations, seed)
        rows = scoped.index.to_numpy()
        out.loc[rows, "probability"] = predictions["probability"].to_numpy()
        out.loc[rows, "ci_low"] = predictions["ci_low"].to_numpy()
        out.loc[rows, "ci_high"] = predictions["ci_high"].to_numpy()
        out.loc[rows, "top_attributions"] = predictions["top_attributions"].map(lambda a: json.dumps(a, default=float)).to_numpy()
    return out[list(THERAPY_PREDICTION_COLUMNS)].astype({"in_scope": bool})


def therapy_probabilities(model: ResponseModel, patient_features: pd.DataFrame, therapy: pd.Series) -> np.ndarray:
    """P(response) of each patient under the given regimen (no explanations, no scope check): for evaluation."""
    design, _ = feature_matrix(patient_features, therapy)
    return model.predict_proba(design)[:, 1]
