"""Which therapies a patient's response estimates are for, and whether the model can speak for each.

Candidates are the regimens the decision rule base can propose for the patient (its ``recommend`` and
``consider`` rules that match the patient's facts). A rule naming alternatives ("alectinib or
lorlatinib") gives one candidate per alternative; a combination ("dabrafenib + trametinib") stays one
candidate. Names are lower-case, as the rule base writes them.

Scope: the response model is conditional on therapy attributes (drug classes, whether a drug targets
the patient's driver; see :func:`radplan.models.features.therapy_profile`). An estimate for a
(patient, therapy) pair is given only when every drug of the regimen is known to the encodings, enough
training patients received a regimen with the same profile (:data:`MIN_THERAPY_SUPPORT`), and the
patient has the inputs the estimate rests on (:data:`REQUIRED_INPUTS`). Otherwise the probability is
null and ``scope_note`` says why in words. Drugs with the same profile are assumed to act alike: the
model cannot tell alectinib from lorlatinib.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from radplan.models.features import regimen_drugs, therapy_profile, unknown_drugs

PROPOSING_ACTIONS = ("recommend", "consider")
# Fewer training patients than this on a regimen profile and the model's therapy effect is a guess.
MIN_THERAPY_SUPPORT = 10
# Contract columns without which an estimate would rest on imputed values (plain-word name for the note).
REQUIRED_INPUTS = {"ecog": "ECOG performance status", "total_lesion_volume_ml": "tumour volume from imaging", "stage": "stage"}


def candidate_therapies(facts: Mapping[str, Any], rule_base=None) -> list[str]:
    """The lower-case regimens the rule base proposes for one patient's facts (a patient_features row)."""
    from radplan.decision.rules import evaluate_rules, load_rule_base

    rule_base = rule_base if rule_base is not None else load_rule_base()
    found: list[str] = []
    for match in evaluate_rules(facts, rule_base):
        if not match.matched or match.action not in PROPOSING_ACTIONS:
            continue
        for alternative in match.therapy.lower().split(" or "):
            regimen = " + ".join(regimen_drugs(alternative))
            if regimen and regimen not in found:
                found.append(regimen)
    return found


def candidate_therapy_table(patient_features: pd.DataFrame, rule_base=None) -> pd.DataFrame:
    """(patient_key, therapy) for every patient's candidates; a patient with none has no row."""
    from radplan.decision.rules import load_rule_base

    rule_base = rule_base if rule_base is not None else load_rule_base()
    rows = []
    for record in patient_features.to_dict("records"):
        facts = {k: (v.tolist() if hasattr(v, "tolist") and not isinstance(v, str) else v) for k, v in record.items()}
        rows += [{"patient_key": record["patient_key"], "therapy": t} for t in candidate_therapies(facts, rule_base)]
    return pd.DataFrame(rows, columns=["patient_key", "therapy"])


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def scope_notes(model, pairs: pd.DataFrame, min_support: int = MIN_THERAPY_SUPPORT) -> pd.Series:
    """Per (patient, therapy) row of ``pairs`` (patient_features columns plus ``therapy``): None when in scope,
    else the reason in plain words."""
    if model is None:
        return pd.Series("no response model is trained yet", index=pairs.index)
    if not model.uses_therapy:
        return pd.Series("the response model in use is not conditioned on therapy", index=pairs.index)
    support = model.therapy_support or {}
    profiles = therapy_profile(pairs, pairs["therapy"])
    notes = []
    for (index, row), profile in zip(pairs.iterrows(), profiles):
        unknown = unknown_drugs(row["therapy"])
        absent = [label for column, label in REQUIRED_INPUTS.items() if _missing(row.get(column))]
        if unknown:
            notes.append(f"outside model scope: {', '.join(unknown)} not known to the model's drug encodings")
        elif support.get(profile, 0) < min_support:
            notes.append(f"outside model scope: {support.get(profile, 0)} training patients received a regimen like this "
                         f"({profile}); at least {min_support} are needed")
        elif absent:
            notes.append(f"indeterminate: missing {', '.join(absent)}")
        else:
            notes.append(None)
    return pd.Series(notes, index=pairs.index, dtype=object)
