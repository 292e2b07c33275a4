"""Per-patient treatment recommendations with traceable rationale and lineage.

Inputs: one patient's facts (a ``patient_features`` row), the rule base, the
response model's predictions and the trial catalogue. Output: one row per
candidate therapy (see ``data/recommendation_columns.yaml`` for every column).

Ranking (documented, deterministic):

1. alerts first: ``avoid``, then ``adjust_dose`` (contraindications and PGx /
   interaction dose changes must be seen before anything else). An alert is
   raised only for a drug in play: a current medication or a drug of this
   patient's candidate therapies. Pharmacogenomic results for other drugs go to
   the pharmacogenomic profile (``pgx_profile``), never into this table;
2. then ``recommend``, then ``consider`` (rule-based), then clinical-trial
   pre-screen matches (``consider``, evidence ``TRIAL``);
3. then ``monitor`` (interaction monitoring, follow-up imaging);
4. within a group: evidence tier (rule-base rank), then model response
   probability (higher first, missing last), then the trial matcher's order
   (open trials first), then therapy name.

Drug-drug interactions come from the interaction knowledge base
(``interactions.py``), checked over current medications plus candidate drugs.

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

from radplan.decision.interactions import InteractionKnowledgeBase, check_interactions, load_interaction_kb, normalise_drug_name
from radplan.decision.rules import RuleBase, RuleMatch, evaluate_rules
from radplan.decision.trials import Trial, TrialMatch, match_trials
from radplan.errors import RadplanInputError

ACTION_GROUP = {"avoid": 0, "adjust_dose": 1, "recommend": 2, "consider": 3, "monitor": 5}
TRIAL_GROUP = 4
ALERT_ACTIONS = ("avoid", "adjust_dose")
TREATMENT_ACTIONS = ("recommend", "consider")
# model_predictions columns (the response model's output contract). Therapy-specific rows add ``therapy``
# (lower-case generic name as the rule base proposes it), ``in_scope`` and ``scope_note``; patient-level rows
# (no therapy column, or a null therapy) are still accepted.
PREDICTION_COLUMNS = ("patient_key", "therapy", "probability", "ci_low", "ci_high", "top_attributions", "model_name",
                      "model_version", "in_scope", "scope_note")
OUT_OF_SCOPE = "outside the model's scope"

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
    """The model row for a treatment candidate and its scope: ``therapy``, ``patient`` or ``outside``.

    A therapy-specific row (matched on the therapy or one of its drugs) wins; a patient-level row (no
    therapy) is the fallback. A treatment candidate with neither, or with a row marked out of scope,
    is ``outside`` the model's scope: the row says so in words instead of showing no number silently.
    """
    if candidate.trial is not None or candidate.action not in TREATMENT_ACTIONS:
        return None, None
    if predictions is None or predictions.empty:
        return None, None
    rows = predictions[predictions["patient_key"] == patient_key]
    if rows.empty:
        return None, OUT_OF_SCOPE_KEY
    if "therapy" in rows.columns:
        names = [candidate.therapy.casefold(), *candidate.drugs]
        therapy_text = rows["therapy"].map(lambda v: None if _missing(v) else str(v).casefold())
        for name in names:
            hit = rows[therapy_text == name]
            if not hit.empty:
                row = hit.iloc[0].to_dict()
                if not _in_scope(row):
                    return row, OUT_OF_SCOPE_KEY
                return row, "therapy"
        patient_level = rows[therapy_text.isna()]
        if patient_level.empty:
            return None, OUT_OF_SCOPE_KEY
        rows = patient_level
    row = rows.iloc[0].to_dict()
    return (row, "patient") if _in_scope(row) else (row, OUT_OF_SCOPE_KEY)


OUT_OF_SCOPE_KEY = "outside"


def _in_scope(row: Mapping[str, Any]) -> bool:
    flag = row.get("in_scope")
    if not _missing(flag) and not bool(flag):
        return False
    return not _missing(row.get("probability"))


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
    interaction_kb: InteractionKnowledgeBase | None = None,
) -> pd.DataFrame:
    """Rank candidate therapies for one patient (columns: ``RECOMMENDATION_COLUMNS``).

    ``model_predictions``: rows of ``PREDICTION_COLUMNS`` (+ optional ``therapy``
    for therapy-specific predictions); ``top_attributions`` is a JSON string or a
    list of ``{"feature", "attribution"}``. ``versions``: lineage, e.g.
    ``{"knowledge_base_version", "model_name", "model_version", "trial_catalog_version"}``.
    ``interaction_kb``: the drug-drug interaction knowledge base (the packaged
    one when None). A patient with no matching rule, interaction or trial gets
    an empty table (the report still says why).
    """
    patient_key = facts.get("patient_key")
    if _missing(patient_key) or not str(patient_key):
        raise MissingPatientKeyError("facts have no patient_key")
    patient_key = str(patient_key)
    model_predictions = _normalise_predictions(model_predictions)

    interaction_kb = interaction_kb or load_interaction_kb()
    facts = with_normalised_medications(facts, interaction_kb)
    outcomes = evaluate_rules(facts, rule_base)
    matched = [m for m in outcomes if m.matched]
    not_evaluated = [{"rule_id": m.rule_id, "title": m.title, "missing_facts": list(m.missing_facts)}
                     for m in outcomes if not m.matched]
    current = list(facts.get("current_medications") or [])
    candidate_drugs = candidate_drugs_of(matched)
    in_play = set(current) | set(candidate_drugs)
    # Alert relevance: a pharmacogenomic alert for a drug nobody takes or offers is profile material, not an alert.
    matched = [m for m in matched if m.category != "pgx" or set(m.drugs) & in_play]
    check = check_interactions(current, candidate_drugs, interaction_kb)
    unranked = sorted({h.interaction.evidence for h in check.hits} - set(rule_base.evidence_levels))
    if unranked:
        raise ValueError(f"interaction knowledge base {interaction_kb.version} uses evidence level(s) {unranked} "
                         f"that rule base {rule_base.version} does not rank")
    matched += [_interaction_match(hit, current) for hit in check.hits]

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
                                  "rule_base_sha256": rule_base.sha256,
                                  "interaction_kb_version": interaction_kb.version,
                                  "interaction_kb_sha256": interaction_kb.sha256}),
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
            model_name = prediction.get("model_name") or model_name
            model_version = prediction.get("model_version") or model_version
        if scope in ("therapy", "patient"):
            probability = _float_or_none(prediction.get("probability"))
            ci_low = _float_or_none(prediction.get("ci_low"))
            ci_high = _float_or_none(prediction.get("ci_high"))
            attributions = _parse_json(prediction.get("top_attributions"), default=None)
            interval = f" (95% interval {ci_low:.2f}-{ci_high:.2f})" if ci_low is not None and ci_high is not None else ""
            what = "this therapy" if scope == "therapy" else "treatment (patient-level, not therapy-specific)"
            sentence = (f"The response model estimates a probability of response to "
                        f"{what} of {probability:.2f}{interval}.")
            sentences[sentence] = {"model_probability": probability, "model_ci_low": ci_low, "model_ci_high": ci_high}
        elif scope == OUT_OF_SCOPE_KEY:
            note = None if prediction is None or _missing(prediction.get("scope_note")) else str(prediction["scope_note"]).strip()
            sentence = f"No response estimate: this therapy is {OUT_OF_SCOPE}" + (f" ({note.rstrip('.')})." if note else ".")
            sentences[sentence] = {"model_scope": OUT_OF_SCOPE}
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
            "interactions": _json(_related(matched, candidate.drugs, "interaction")
                                  if candidate.category != "interaction" else []),
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


def with_normalised_medications(facts: Mapping[str, Any], kb: InteractionKnowledgeBase) -> dict[str, Any]:
    """Facts with current medications as knowledge-base names ("warfarin sodium" -> "warfarin").

    A medication the knowledge base does not know keeps its EHR name (lower case): the rules can still
    match it literally, and ``check_interactions`` reports it as not checked.
    """
    out = dict(facts)
    medications = facts.get("current_medications")
    if medications is None or isinstance(medications, (str, float)):
        return out
    names: dict[str, None] = {}
    for medication in medications:
        names.setdefault(normalise_drug_name(medication, kb) or str(medication).casefold(), None)
    out["current_medications"] = list(names)
    return out


def candidate_drugs_of(matches: Iterable[RuleMatch]) -> list[str]:
    """Drugs of the therapies the rule base proposes for the patient (recommend / consider rows)."""
    return list(dict.fromkeys(d for m in matches if m.action in TREATMENT_ACTIONS for d in m.drugs))


def drugs_in_play(facts: Mapping[str, Any], recommendations: pd.DataFrame, kb: InteractionKnowledgeBase | None = None) -> set[str]:
    """Current medications plus the drugs of the proposed therapies in a recommendation table."""
    kb = kb or load_interaction_kb()
    current = with_normalised_medications(facts, kb).get("current_medications") or []
    proposed = recommendations[recommendations["action"].isin(TREATMENT_ACTIONS)] if len(recommendations) else recommendations
    drugs = {d for text in proposed.get("drugs", []) for d in json.loads(text)} if len(proposed) else set()
    return set(current) | drugs


def _interaction_match(hit, current: list[str]) -> RuleMatch:
    entry = hit.interaction
    used = {"current_medications": [d for d in hit.drugs if d in current]}
    candidates = [d for d in hit.drugs if d not in current]
    if candidates:
        used["candidate_drugs"] = candidates
    return RuleMatch(
        rule_id=entry.id, rule_version=entry.version, action=entry.action,
        therapy=f"{hit.drug_a} with {hit.drug_b}", evidence_level=entry.evidence, guideline=entry.source,
        matched_facts=used, rationale=hit.sentence(), category="interaction", drugs=hit.drugs,
        title=f"{entry.a_label} with {entry.b_label} ({entry.severity})",
    )


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

