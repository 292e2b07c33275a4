"""Per-patient recommendation table: ranking, rationale traceability, model and trial columns, lineage."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from radplan.decision.recommend import RECOMMENDATION_COLUMNS, MissingPatientKeyError, recommend_for_patient

KEY = "p0123456789abcdef"
ATTRIBUTIONS = [{"feature": "alt_egfr_sensitizing", "attribution": 0.31}, {"feature": "ecog", "attribution": -0.08}]
VERSIONS = {"knowledge_base_version": "kb-2026.10", "model_name": "radplan-response", "model_version": "4"}


def nsclc_facts(**extra):
    facts = {
        "patient_key": KEY, "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "age_years": 66.0, "sex": "F",
        "prior_lines_of_therapy": 0, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False, "alt_alk_fusion": False,
        "current_medications": ["clopidogrel", "omeprazole"], "pgx_CYP2C19_phenotype": "Poor Metabolizer",
        "pgx_DPYD_activity_score": 1.0, "stratum": 3, "source_versions": json.dumps({"patient_features": "run-17"}),
    }
    facts.update(extra)
    return facts


def predictions(**extra):
    row = {"patient_key": KEY, "probability": 0.72, "ci_low": 0.58, "ci_high": 0.83,
           "top_attributions": json.dumps(ATTRIBUTIONS), "model_name": "radplan-response", "model_version": "4"}
    row.update(extra)
    return pd.DataFrame([row])


@pytest.fixture()
def table(rule_base, trial_catalog):
    return recommend_for_patient(nsclc_facts(), rule_base, model_predictions=predictions(), trials=trial_catalog,
                                 versions=VERSIONS)


def test_columns_and_one_row_per_candidate(table):
    assert tuple(table.columns) == RECOMMENDATION_COLUMNS
    assert table["recommendation_id"].is_unique
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert set(table["patient_key"]) == {KEY}


def test_ranking_puts_alerts_first_and_monitoring_last(table):
    order = list(zip(table["action"], table["category"]))
    groups = [{"avoid": 0, "adjust_dose": 1, "recommend": 2, "consider": 3 if c != "trial" else 4, "monitor": 5}[a]
              for a, c in order]
    assert groups == sorted(groups)
    assert table.iloc[0]["is_alert"] and table.iloc[0]["action"] == "avoid"
    # the CPIC-A genotype alert ranks above the label interaction alert (evidence tier)
    assert json.loads(table.iloc[0]["rule_ids"]) == ["pgx_cyp2c19_clopidogrel_alternative"]
    osimertinib = table[table["therapy"] == "osimertinib"].iloc[0]
    assert osimertinib["action"] == "recommend" and osimertinib["evidence_level"] == "1"
    assert table.iloc[-1]["category"] == "follow_up"


def test_rationale_sentences_are_traceable_to_facts(table):
    facts = nsclc_facts()
    for row in table.itertuples():
        sentences = json.loads(row.rationale_facts)
        assert row.rationale == " ".join(sentences)
        for sentence, used in sentences.items():
            assert sentence in row.rationale and used
            for name, value in used.items():
                if name in facts:
                    if isinstance(value, list):
                        assert set(value) <= set(facts[name])
                    else:
                        assert value == facts[name]
                else:
                    assert name in ("model_probability", "model_ci_low", "model_ci_high", "trial_screen", "candidate_drugs")


def test_model_columns_only_on_treatment_rows(table):
    osimertinib = table[table["therapy"] == "osimertinib"].iloc[0]
    assert osimertinib["model_probability"] == pytest.approx(0.72)
    assert (osimertinib["model_ci_low"], osimertinib["model_ci_high"]) == (pytest.approx(0.58), pytest.approx(0.83))
    assert osimertinib["model_scope"] == "patient"
    assert json.loads(osimertinib["top_attributions"]) == ATTRIBUTIONS
    assert "0.72" in osimertinib["rationale"]
    others = table[table["therapy"] != "osimertinib"]
    assert others["model_probability"].isna().all()


def test_therapy_specific_predictions(rule_base, trial_catalog):
    preds = pd.concat([predictions(therapy="osimertinib", probability=0.8), predictions(therapy="docetaxel", probability=0.2)])
    table = recommend_for_patient(nsclc_facts(), rule_base, model_predictions=preds, trials=trial_catalog, versions=VERSIONS)
    osimertinib = table[table["therapy"] == "osimertinib"].iloc[0]
    assert osimertinib["model_probability"] == pytest.approx(0.8) and osimertinib["model_scope"] == "therapy"


def test_prediction_column_aliases(rule_base, trial_catalog):
    preds = predictions().rename(columns={"probability": "response_probability", "ci_low": "ci_lower", "ci_high": "ci_upper"})
    table = recommend_for_patient(nsclc_facts(), rule_base, model_predictions=preds, trials=trial_catalog, versions=VERSIONS)
    assert table["model_probability"].max() == pytest.approx(0.72)


def test_trials_and_interactions_are_attached(rule_base, trial_catalog):
    facts = nsclc_facts(cancer_type="colorectal", alt_egfr_sensitizing=False, alt_kras_g12c=True,
                        prior_lines_of_therapy=1, pgx_DPYD_activity_score=0.5,
                        current_medications=["clopidogrel", "omeprazole", "capecitabine"])
    table = recommend_for_patient(facts, rule_base, model_predictions=None, trials=trial_catalog, versions=VERSIONS)
    kras = table[table["rule_ids"].str.contains("crc_kras_g12c_inhibitor_anti_egfr")].iloc[0]
    interactions = json.loads(kras["interactions"])
    # sotorasib (proposed) with omeprazole (taken): found by the interaction knowledge base
    assert [i["rule_id"] for i in interactions] == ["ddi_sotorasib_acid_reducing_agent"]
    interaction_row = table[table["rule_ids"].str.contains("ddi_sotorasib_acid_reducing_agent")].iloc[0]
    assert interaction_row["therapy"] == "sotorasib with omeprazole" and interaction_row["is_alert"]
    fluoropyrimidine = table[table["rule_ids"].str.contains("pgx_dpyd_poor")].iloc[0]
    assert fluoropyrimidine["action"] == "avoid" and fluoropyrimidine["rank"] <= 3
    assert json.loads(fluoropyrimidine["pgx_adjustments"])[0]["rule_id"] == "pgx_dpyd_poor_fluoropyrimidine"
    lung = recommend_for_patient(nsclc_facts(), rule_base, model_predictions=None, trials=trial_catalog, versions=VERSIONS)
    trial_rows = lung[lung["category"] == "trial"]
    assert list(trial_rows["therapy"].str.extract(r"(NCT\d+)")[0]) == ["NCT03599518"]
    assert json.loads(trial_rows.iloc[0]["matched_trials"])[0]["nct_id"] == "NCT03599518"


def test_rules_not_evaluated_are_carried(rule_base, trial_catalog):
    facts = nsclc_facts()
    table = recommend_for_patient(facts, rule_base, model_predictions=None, trials=trial_catalog, versions=VERSIONS)
    not_evaluated = {item["rule_id"]: item["missing_facts"] for item in json.loads(table.iloc[0]["rules_not_evaluated"])}
    assert not_evaluated["nsclc_ros1_fusion_ros1_inhibitor"] == ["alt_ros1_fusion"]
    assert "nsclc_egfr_sensitizing_osimertinib" not in not_evaluated


def test_ids_are_deterministic_and_patient_specific(rule_base, trial_catalog, table):
    again = recommend_for_patient(nsclc_facts(), rule_base, model_predictions=predictions(), trials=trial_catalog,
                                  versions=VERSIONS)
    assert list(again["recommendation_id"]) == list(table["recommendation_id"])
    other = recommend_for_patient(nsclc_facts(patient_key="pfedcba9876543210"), rule_base, model_predictions=None,
                                  trials=trial_catalog, versions=VERSIONS)
    assert not set(other["recommendation_id"]) & set(table["recommendation_id"])


def test_lineage_columns(rule_base, table):
    row = table.iloc[0]
    assert row["rule_base_version"] == rule_base.version
    assert row["knowledge_base_version"] == "kb-2026.10"
    sources = json.loads(row["source_versions"])
    assert sources["patient_features"] == "run-17" and sources["rule_base_sha256"] == rule_base.sha256
    assert row["stratum"] == 3


def test_patient_without_matches_gets_an_empty_typed_table(rule_base):
    table = recommend_for_patient({"patient_key": KEY, "cancer_type": "other", "alt_ntrk": False}, rule_base,
                                  model_predictions=None, trials=[], versions={})
    assert table.empty and tuple(table.columns) == RECOMMENDATION_COLUMNS


def test_missing_patient_key_is_an_input_error(rule_base):
    with pytest.raises(MissingPatientKeyError):
        recommend_for_patient({"cancer_type": "nsclc"}, rule_base, model_predictions=None, trials=[], versions={})


def test_therapy_rows_outside_the_model_scope_say_so(rule_base, trial_catalog):
    # New contract: one row per (patient, therapy) with in_scope / scope_note; a therapy without a row is out of scope.
    facts = nsclc_facts(alt_ros1_fusion=True, current_medications=[])
    preds = pd.DataFrame([
        predictions(therapy="osimertinib", probability=0.81, in_scope=True, scope_note=None).iloc[0].to_dict(),
        predictions(therapy="crizotinib", probability=None, ci_low=None, ci_high=None, in_scope=False,
                    scope_note="no ROS1-positive patients in the training data").iloc[0].to_dict(),
    ])
    table = recommend_for_patient(facts, rule_base, model_predictions=preds, trials=[], versions=VERSIONS)
    osimertinib = table[table["therapy"] == "osimertinib"].iloc[0]
    assert osimertinib["model_probability"] == pytest.approx(0.81) and osimertinib["model_scope"] == "therapy"
    ros1 = table[table["therapy"] == "crizotinib or entrectinib"].iloc[0]
    assert pd.isna(ros1["model_probability"]) and ros1["model_scope"] == "outside"
    assert "outside the model's scope (no ROS1-positive patients in the training data)" in ros1["rationale"]
    # a patient with no prediction rows at all: every treatment row says it in words
    none = recommend_for_patient(facts, rule_base, model_predictions=preds.assign(patient_key="pffffffffffffffff"),
                                 trials=[], versions=VERSIONS)
    treatment = none[none["action"].isin(["recommend", "consider"])]
    assert (treatment["model_scope"] == "outside").all()
    assert treatment["rationale"].str.contains("outside the model's scope").all()
    # old patient-level rows are still accepted
    old = recommend_for_patient(facts, rule_base, model_predictions=predictions(), trials=[], versions=VERSIONS)
    assert set(old.loc[old["action"] == "recommend", "model_scope"]) == {"patient"}
