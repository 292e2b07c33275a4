"""Per-patient treatment recommendations with traceable rationale and lineage.

Inputs: one patient's facts (a ``patient_features`` row), the rule base, the
response model's predictions and the trial catalogue. Output: one row per
candidate therapy (see ``data/recommendation_columns.yaml`` for every column).

Ranking (documented, deterministic):

1. alerts first: ``avoid``, then ``adjust_dose`` (contraindications and PGx /
   interaction dose changes must be seen before anything else);
2. then ``recommend``, then ``consider`` (rule-based), then clinical-trial
   pre-screen matches (``consider``, evidence ``TRIAL``);
3. then ``monitor`` (interaction monitoring, follow-up imaging);
4. within a group: evidence tier (rule-base rank), then model response
   probability (higher first, missing last), then the trial matcher's order
   (open trials first), then therapy name.

Every rationale sentence is rendered from a template with the facts that made
its rule match; ``rationale_facts`` maps each sentence to those facts (or to
the model output / trial screen it came from).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

from radplan.decision.rules import RuleBase, RuleMatch, evaluate_rules
from radplan.decision.trials import Trial, TrialMatch, match_trials
from radplan.errors import RadplanInputError

ACTION_GROUP = {"avoid": 0, "adjust_dose": 1, "recommend": 2, "consider": 3, "monitor": 5}
TRIAL_GROUP = 4
ALERT_ACTIONS = ("avoid", "adjust_dose")
# model_predictions columns (the response model's output contract)
PREDICTION_COLUMNS = ("patient_key", "probability", "ci_low", "ci_high", "top_attributions", "model_name", "model_version")

PREDICTION_ALIASES = {
    "probability": ("response_probability", "p_response", "prob"),
    "ci_low": ("probability_ci_low", "ci_lower", "lower"),
    "ci_high": ("probability_ci_high", "ci_upper", "upper"),
}

RECOMMENDATION_COLUMNS = (
    "patient_key", "recommendation_id", "rank", "therapy", "drugs", "action", "category", "is_alert",
    "rule_ids", "rule_versions", "evidence_level", "guideline", "model_probability", "model_ci_low",
    "model_ci_high", "model_scope", "top_attributions", "pgx_adjustments", "interactions", "matched_trials",
    "stratum", "rationale", "rationale_facts", "rules_not_evaluated", "rule_base_version",
    "knowledge_base_version", "model_name", "model_version", "source_versions",
)


class MissingPatientKeyError(RadplanInputError):
    stage = "decision-facts"


@dataclass
class _Candidate:
    therapy: str
    action: str
    category: str
    drugs: tuple[str, ...]
    matches: list[RuleMatch]
    trial: TrialMatch | None = None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _prediction_for(patient_key: str, candidate: _Candidate, predictions: pd.DataFrame | None) -> tuple[dict | None, str | None]:
    """The model row for this candidate: therapy-specific when the table has a therapy column."""
    if (predictions is None or predictions.empty or candidate.trial is not None
            or candidate.action not in ("recommend", "consider")):
        return None, None
    rows = predictions[predictions["patient_key"] == patient_key]
    if rows.empty:
        return None, None
    if "therapy" in rows.columns:
        names = {candidate.therapy.casefold(), *candidate.drugs}
        therapy_rows = rows[rows["therapy"].astype(str).str.casefold().isin(names)]
        return (therapy_rows.iloc[0].to_dict(), "therapy") if not therapy_rows.empty else (None, None)
    return rows.iloc[0].to_dict(), "patient"


def _related(matches: Iterable[RuleMatch], drugs: tuple[str, ...], category: str) -> list[dict]:
    return [
        {"rule_id": m.rule_id, "rule_version": m.rule_version, "action": m.action, "therapy": m.therapy,
         "rationale": m.rationale}
        for m in matches if m.category == category and set(m.drugs) & set(drugs)
    ]


def _recommendation_id(patient_key: str, rule_base_version: str, candidate: _Candidate) -> str:
    rule_ids = sorted(m.rule_id for m in candidate.matches)
    trial = candidate.trial.nct_id if candidate.trial else ""
    basis = "\x00".join([patient_key, rule_base_version, candidate.therapy.casefold(), candidate.action, *rule_ids, trial])
    return "r" + hashlib.sha256(basis.encode()).hexdigest()[:16]


def recommend_for_patient(
    facts: Mapping[str, Any],
    rule_base: RuleBase,
    *,
    model_predictions: pd.DataFrame | None,
    trials: list[Trial],
    versions: dict,
) -> pd.DataFrame:
    """Rank candidate therapies for one patient (columns: ``RECOMMENDATION_COLUMNS``).

    ``model_predictions``: rows of ``PREDICTION_COLUMNS`` (+ optional ``therapy``
    for therapy-specific predictions); ``top_attributions`` is a JSON string or a
    list of ``{"feature", "attribution"}``. ``versions``: lineage, e.g.
    ``{"knowledge_base_version", "model_name", "model_version", "trial_catalog_version"}``.
    A patient with no matching rule and no trial gets an empty table (the
    rules that could not be evaluated are still reported by the report).
    """
    patient_key = facts.get("patient_key")
    if _missing(patient_key) or not str(patient_key):
        raise MissingPatientKeyError("facts have no patient_key")
    patient_key = str(patient_key)
    model_predictions = _normalise_predictions(model_predictions)

    outcomes = evaluate_rules(facts, rule_base)
    matched = [m for m in outcomes if m.matched]
    not_evaluated = [{"rule_id": m.rule_id, "title": m.title, "missing_facts": list(m.missing_facts)}
                     for m in outcomes if not m.matched]

    candidates: dict[tuple[str, str], _Candidate] = {}
    for match in matched:
        key = (match.therapy.casefold(), match.action)
        if key in candidates:
            candidates[key].matches.append(match)
        else:
            candidates[key] = _Candidate(match.therapy, match.action, match.category, match.drugs, [match])
    trial_matches = match_trials(facts, trials)
    for trial in trial_matches:
        therapy = f"Clinical trial {trial.nct_id}: {trial.title}"
        candidates[(therapy.casefold(), "consider")] = _Candidate(therapy, "consider", "trial", (), [], trial)
    trial_order = {t.nct_id: i for i, t in enumerate(trial_matches)}

    lineage = {
        "rule_base_version": rule_base.version,
        "knowledge_base_version": versions.get("knowledge_base_version"),
        "source_versions": _json({**_as_dict(_parse_json(facts.get("source_versions"), {})), **versions,
                                  "rule_base_sha256": rule_base.sha256}),
    }
    rows: list[dict[str, Any]] = []
    for candidate in candidates.values():
        prediction, scope = _prediction_for(patient_key, candidate, model_predictions)
        sentences: dict[str, dict[str, Any]] = {}
        for match in candidate.matches:
            sentences[match.rationale] = {k: _plain_fact(v) for k, v in match.matched_facts.items()}
        if candidate.trial is not None:
            trial = candidate.trial
            sentence = (f"The patient passed the pre-screen for {trial.nct_id} ({trial.phase}, {trial.overall_status.lower()}): "
                        + "; ".join(trial.reasons) + ".")
            if trial.unchecked:
                sentence += " Not checked: " + "; ".join(trial.unchecked) + "."
            sentences[sentence] = {"trial_screen": {"nct_id": trial.nct_id, "reasons": list(trial.reasons),
                                                    "unchecked": list(trial.unchecked)}}
        probability = ci_low = ci_high = None
        attributions: Any = None
        model_name = versions.get("model_name")
        model_version = versions.get("model_version")
        if prediction is not None:
            probability = _float_or_none(prediction.get("probability"))
            ci_low = _float_or_none(prediction.get("ci_low"))
            ci_high = _float_or_none(prediction.get("ci_high"))
            attributions = _parse_json(prediction.get("top_attributions"), default=None)
            model_name = prediction.get("model_name") or model_name
            model_version = prediction.get("model_version") or model_version
            if probability is not None:
                interval = f" (95% interval {ci_low:.2f}-{ci_high:.2f})" if ci_low is not None and ci_high is not None else ""
                what = "this therapy" if scope == "therapy" else "treatment (patient-level, not therapy-specific)"
                sentence = (f"The response model {model_name} {model_version} estimates a probability of response to "
                            f"{what} of {probability:.2f}{interval}.")
                sentences[sentence] = {"model_probability": probability, "model_ci_low": ci_low, "model_ci_high": ci_high}
        evidence = _candidate_evidence(candidate, rule_base)
        rows.append({
            "patient_key": patient_key,
            "recommendation_id": _recommendation_id(patient_key, rule_base.version, candidate),
            "therapy": candidate.therapy,
            "drugs": _json(list(candidate.drugs)),
            "action": candidate.action,
            "category": candidate.category,
            "is_alert": candidate.action in ALERT_ACTIONS,
            "rule_ids": _json(sorted(m.rule_id for m in candidate.matches)),
            "rule_versions": _json({m.rule_id: m.rule_version for m in candidate.matches}),
            "evidence_level": evidence,
            "guideline": " | ".join(dict.fromkeys(m.guideline for m in candidate.matches))
            or "ClinicalTrials.gov record " + (candidate.trial.nct_id if candidate.trial else ""),
            "model_probability": probability,
            "model_ci_low": ci_low,
            "model_ci_high": ci_high,
            "model_scope": scope,
            "top_attributions": _json(attributions) if attributions is not None else None,
            "pgx_adjustments": _json(_related(matched, candidate.drugs, "pgx")),
            "interactions": _json(_related(matched, candidate.drugs, "interaction")),
            "matched_trials": _json([t.as_dict() for t in trial_matches if candidate.trial is t
                                     or _trial_uses(t, trials, candidate.drugs)]),
            "stratum": None if _missing(facts.get("stratum")) else int(facts["stratum"]),
            "rationale": " ".join(sentences),
            # insertion order = sentence order in ``rationale``
            "rationale_facts": json.dumps(sentences, default=_json_default, ensure_ascii=False),
            "rules_not_evaluated": _json(not_evaluated),
            "model_name": model_name,
            "model_version": model_version,
            "_group": TRIAL_GROUP if candidate.trial else ACTION_GROUP[candidate.action],
            "_evidence_rank": rule_base.evidence_rank(evidence),
            "_trial_order": trial_order[candidate.trial.nct_id] if candidate.trial else 0,
            **lineage,
        })
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in RECOMMENDATION_COLUMNS})
    table = pd.DataFrame(rows)
    table["_probability_sort"] = -table["model_probability"].astype(float).fillna(-1.0)
    table = table.sort_values(["_group", "_evidence_rank", "_probability_sort", "_trial_order", "therapy"], kind="stable")
    table["rank"] = range(1, len(table) + 1)
    table = table[list(RECOMMENDATION_COLUMNS)].reset_index(drop=True)
    return table.astype({c: _dtype(c) for c in RECOMMENDATION_COLUMNS})


def _normalise_predictions(predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    """Accept the documented columns or their common aliases (response_probability, probability_ci_low, ...)."""
    if predictions is None or predictions.empty:
        return None
    renamed = predictions.rename(columns={old: new for new, olds in PREDICTION_ALIASES.items() for old in olds
                                          if old in predictions.columns and new not in predictions.columns})
    absent = [c for c in ("patient_key", "probability") if c not in renamed.columns]
    if absent:
        raise ValueError(f"model_predictions lacks column(s) {absent}")
    return renamed


def _candidate_evidence(candidate: _Candidate, rule_base: RuleBase) -> str:
    if candidate.trial is not None:
        return "TRIAL"
    return min((m.evidence_level for m in candidate.matches), key=rule_base.evidence_rank)


def _trial_uses(trial: TrialMatch, catalogue: list[Trial], drugs: tuple[str, ...]) -> bool:
    record = next((t for t in catalogue if t.nct_id == trial.nct_id), None)
    if record is None or not drugs:
        return False
    interventions = " ".join(record.interventions).casefold()
    return any(drug in interventions for drug in drugs)


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {"upstream": value}


def _plain_fact(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _float_or_none(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def _parse_json(value: Any, default: Any = None) -> Any:
    """JSON text -> object; other values pass through; missing -> ``default``."""
    if _missing(value):
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return {"unparsed": value}
    return value


def _dtype(column: str) -> str:
    if column in ("model_probability", "model_ci_low", "model_ci_high"):
        return "float64"
    if column in ("rank", "stratum"):
        return "Int64"
    if column == "is_alert":
        return "bool"
    return "object"

