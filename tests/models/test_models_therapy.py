"""Therapy-specific response estimates: candidates from the rule base, scope, a planted therapy effect, the champion rule,
and the library functions the response_model asset calls (labels, regimen) on real Synthea extracts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models_synthetic import response_cohort
from radplan.models.features import regimen_drugs, therapy_profile
from radplan.models.outcomes import first_line_therapy, outcome_labels
from radplan.models.prediction import THERAPY_PREDICTION_COLUMNS, therapy_probabilities, therapy_response_predictions
from radplan.models.therapies import candidate_therapies, candidate_therapy_table
from radplan.models.training import choose_champion, fit_response_model

QUICK = dict(n_splits=5, seed=0, n_bootstrap=200, candidates=("rules_baseline", "prognostic_logistic"))


@pytest.fixture(scope="module")
def planted():
    """400 patients, 30 % EGFR-sensitizing; osimertinib for an EGFR patient adds 3.0 to the response logit."""
    features, labels, therapy, truth = response_cohort(400, seed=5)
    fit = fit_response_model(features, labels, therapy=therapy, true_probabilities=truth, **QUICK)
    return features, labels, therapy, fit


def _truth_logit(features: pd.DataFrame, matched: np.ndarray) -> np.ndarray:
    """The "driver" truth of models_synthetic.response_cohort, written out independently here."""
    ecog = features["ecog"].astype(float).to_numpy()
    volume = features["largest_lesion_volume_ml"].to_numpy()
    return -0.6 + 3.0 * matched - 1.1 * (ecog - 1.5) - 1.0 * (np.log(volume) - 2.5)


def test_planted_therapy_effect_is_recovered(planted):
    features, _, _, fit = planted
    egfr = features[features["alt_egfr_sensitizing"]].reset_index(drop=True)
    on_target = therapy_probabilities(fit["model"], egfr, pd.Series("osimertinib", index=egfr.index))
    on_chemo = therapy_probabilities(fit["model"], egfr, pd.Series("carboplatin", index=egfr.index))
    true_target = 1 / (1 + np.exp(-_truth_logit(egfr, np.ones(len(egfr)))))
    true_chemo = 1 / (1 + np.exp(-_truth_logit(egfr, np.zeros(len(egfr)))))
    # The effect: large and in the right direction for every EGFR patient, and the right size on average.
    assert (on_target > on_chemo).all()
    assert np.mean(on_target - on_chemo) == pytest.approx(np.mean(true_target - true_chemo), abs=0.1)
    assert np.mean(np.abs(on_target - true_target)) < 0.1 and np.mean(np.abs(on_chemo - true_chemo)) < 0.1
    # A drug that targets nothing the patient carries gets no targeted benefit.
    wild_type = features[~features["alt_egfr_sensitizing"]].reset_index(drop=True)
    off_target = therapy_probabilities(fit["model"], wild_type, pd.Series("osimertinib", index=wild_type.index))
    chemo = therapy_probabilities(fit["model"], wild_type, pd.Series("carboplatin", index=wild_type.index))
    assert np.max(np.abs(off_target - chemo)) < 0.05


def test_every_in_scope_row_has_its_own_estimate_and_out_of_scope_rows_say_why(planted):
    features, _, _, fit = planted
    keys = list(features["patient_key"][:3])
    candidates = pd.DataFrame({
        "patient_key": [keys[0], keys[0], keys[1], keys[2], "p-not-in-cohort"],
        "therapy": ["osimertinib", "carboplatin", "sotorasib + panitumumab", "lorlatinib", "osimertinib"],
    })
    features = features.copy()
    features.loc[features["patient_key"] == keys[0], "alt_egfr_sensitizing"] = True
    rows = therapy_response_predictions(fit["model"], features, candidates, model_name="m", model_version="7")
    assert list(rows.columns) == list(THERAPY_PREDICTION_COLUMNS)
    assert len(rows) == len(candidates) and list(rows["therapy"]) == list(candidates["therapy"])
    first, second = rows.iloc[0], rows.iloc[1]
    assert first["in_scope"] and second["in_scope"] and first["probability"] > second["probability"]
    for row in (first, second):
        assert row["ci_low"] <= row["probability"] <= row["ci_high"] and row["scope_note"] is None
        assert json.loads(row["top_attributions"]) and row["model_version"] == "7"
    # panitumumab is unknown to the encodings; no training patient had an ALK inhibitor for an ALK fusion; a patient
    # with no features row cannot be scored.
    for row, words in zip(rows.iloc[2:].itertuples(), ("panitumumab not known", "0 training patients received a regimen like this",
                                                      "no patient features")):
        assert not row.in_scope and np.isnan(row.probability) and np.isnan(row.ci_low) and row.top_attributions == "[]"
        assert words in row.scope_note


def test_missing_inputs_make_an_estimate_indeterminate(planted):
    features, _, _, fit = planted
    features = features.copy()
    key = features["patient_key"].iloc[0]
    features.loc[features["patient_key"] == key, "ecog"] = pd.NA
    rows = therapy_response_predictions(fit["model"], features, pd.DataFrame({"patient_key": [key], "therapy": ["carboplatin"]}),
                                        model_name="m", model_version="1")
    assert not rows["in_scope"].iloc[0] and "ECOG" in rows["scope_note"].iloc[0] and np.isnan(rows["probability"].iloc[0])


def test_without_a_model_every_row_is_out_of_scope():
    features, _, _, _ = response_cohort(5, seed=2)
    candidates = pd.DataFrame({"patient_key": features["patient_key"], "therapy": "osimertinib"})
    rows = therapy_response_predictions(None, features, candidates, model_name="m", model_version=None)
    assert not rows["in_scope"].any() and rows["probability"].isna().all()
    assert rows["scope_note"].str.contains("no response model").all()


def test_champion_is_never_a_candidate_worse_than_the_baseline():
    auc = lambda v: {"auc": {"value": v}}  # noqa: E731
    metrics = {"rules_baseline": auc(0.70), "prognostic_logistic": auc(0.65), "gradient_boosting": auc(0.69),
               "lightning_mlp": auc(0.40), "soft_voting_ensemble": auc(0.55)}
    below = {name: {"value": m["auc"]["value"] - 0.70} for name, m in metrics.items() if name != "rules_baseline"}
    assert choose_champion(metrics, below)[0] == "rules_baseline"
    metrics["lightning_mlp"] = auc(0.72)
    below["lightning_mlp"] = {"value": 0.02}
    assert choose_champion(metrics, below)[0] == "lightning_mlp"


def test_a_fit_on_pure_noise_keeps_the_rules_baseline_or_a_candidate_that_beat_it():
    features, _, therapy, _ = response_cohort(120, seed=9)
    labels = pd.Series(np.random.default_rng(1).integers(0, 2, len(features)), index=features["patient_key"])
    fit = fit_response_model(features, labels, therapy=therapy, **QUICK)
    champion = fit["best_candidate"]
    assert champion == "rules_baseline" or fit["auc_minus_baseline_by_candidate"][champion]["value"] > 0
    assert fit["model"].candidate == champion


def test_support_counts_each_therapy_profile_of_the_training_data(planted):
    features, _, therapy, fit = planted
    profiles = therapy_profile(features.set_index("patient_key", drop=False), therapy)
    assert fit["model"].therapy_support == {str(k): int(v) for k, v in profiles.value_counts().items()}
    assert fit["model"].therapy_support["targeted | targets driver"] == int(((therapy == "osimertinib") & features["alt_egfr_sensitizing"].to_numpy()).sum())


@pytest.mark.parametrize("facts, expected", [
    ({"cancer_type": "nsclc", "alt_egfr_sensitizing": True}, ["osimertinib"]),
    ({"cancer_type": "nsclc", "alt_alk_fusion": True}, ["alectinib", "lorlatinib"]),
    ({"cancer_type": "melanoma", "alt_braf_v600e": True}, ["dabrafenib + trametinib"]),
    ({"cancer_type": "breast", "alt_erbb2": True}, ["trastuzumab + pertuzumab + taxane"]),
    ({"cancer_type": "breast", "alt_pik3ca": True, "alt_erbb2": False}, ["alpelisib + fulvestrant"]),
    ({"cancer_type": "nsclc", "alt_kras_g12c": True, "prior_lines_of_therapy": 0}, []),
    ({"cancer_type": "colorectal", "alt_braf_v600e": False, "alt_kras_g12c": False}, []),
])
def test_candidate_therapies_are_what_the_rule_base_proposes(facts, expected):
    assert candidate_therapies(facts) == expected


def test_candidate_table_has_a_row_per_proposal():
    frame = pd.DataFrame([{"patient_key": "a", "cancer_type": "nsclc", "alt_alk_fusion": True, "biomarker_mentions": np.array([], dtype=object)},
                          {"patient_key": "b", "cancer_type": "melanoma", "alt_braf_v600e": False, "biomarker_mentions": np.array([], dtype=object)}])
    table = candidate_therapy_table(frame)
    assert table.to_dict("records") == [{"patient_key": "a", "therapy": "alectinib"}, {"patient_key": "a", "therapy": "lorlatinib"}]


def test_regimen_from_medications_keeps_every_anticancer_drug_and_nothing_else():
    assert first_line_therapy(["Trametinib", "lisinopril", "dabrafenib"]) == "dabrafenib + trametinib"
    assert first_line_therapy(["alpelisib", "metformin"]) == "alpelisib"
    assert first_line_therapy(["lisinopril"]) is None and first_line_therapy(None) is None
    assert regimen_drugs("Trastuzumab + pertuzumab + taxane") == ["trastuzumab", "pertuzumab", "taxane"]


def test_real_synthea_extract_gives_no_invented_labels_or_regimens(shared_data):
    """Synthea's sample (written by Synthea, not by us) has no RECIST response and no anticancer drug: nothing may be inferred."""
    from radplan.ehr.extracts import read_synthea_csv
    from radplan.ehr.features import ingredients_from_description

    tables, _ = read_synthea_csv(shared_data / "ehr" / "synthea_csv")
    observations = tables["observations"].rename(columns={"PATIENT": "patient_key"})
    assert len(observations) > 100
    assert outcome_labels(observations).empty
    medications = tables["medications"]
    per_patient = medications[["CODE", "DESCRIPTION"]].groupby(medications["PATIENT"]).apply(
        lambda rows: sorted({i for c, d in zip(rows["CODE"], rows["DESCRIPTION"]) for i in ingredients_from_description(str(c), d)}))
    assert per_patient.map(len).sum() > 0  # real ingredients were read ...
    assert per_patient.map(first_line_therapy).isna().all()  # ... and none is an anticancer drug


def test_outcome_labels_take_the_latest_recist_response_and_leave_other_values_unlabelled():
    observations = pd.DataFrame({
        "patient_key": ["a", "a", "b", "c", "d"],
        "CODE": ["112049", "112049", "112049", "112049", "8867-4"],
        "DATE": ["2024-01-01", "2024-03-01", "2024-02-01", "2024-02-01", "2024-02-01"],
        "VALUE": ["Progressive disease", "Partial response", "Stable disease", "not evaluable", "72"],
    })
    labels = outcome_labels(observations).set_index("patient_key")["responded"].to_dict()
    assert labels == {"a": True, "b": False}
