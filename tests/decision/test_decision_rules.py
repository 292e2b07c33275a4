"""Rule base validation and rule evaluation against example patient facts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from radplan.decision.rules import (
    DEFAULT_RULES_PATH,
    FactTypeError,
    RuleBaseError,
    evaluate_rules,
    load_rule_base,
)


def matched(facts, rule_base):
    return {m.rule_id: m for m in evaluate_rules(facts, rule_base) if m.matched}


# ----------------------------------------------------------------------------- validation


def _write_mutated(tmp_path, mutate):
    payload = yaml.safe_load(DEFAULT_RULES_PATH.read_text())
    mutate(payload)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


def _rule(payload, rule_id):
    return next(r for r in payload["rules"] if r["id"] == rule_id)


EGFR = "nsclc_egfr_sensitizing_osimertinib"


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda p: _rule(p, EGFR).update(acton="recommend"), "unknown field"),
        (lambda p: _rule(p, EGFR)["condition"]["all"].append({"fact": "ecog", "below": 2}), "unknown operator 'below'"),
        (lambda p: _rule(p, EGFR)["condition"]["all"].append({"fact": "egfr_status", "eq": "mut"}), "unknown fact 'egfr_status'"),
        (lambda p: _rule(p, EGFR)["condition"]["all"].__setitem__(1, {"fact": "alt_egfr_sensitizing", "is": "yes"}), "bad value"),
        (lambda p: _rule(p, EGFR)["condition"]["all"].append({"fact": "cancer_type", "lte": 2}), "does not apply to str fact"),
        (lambda p: _rule(p, EGFR).update(action="prescribe"), "unknown action"),
        (lambda p: _rule(p, EGFR).update(evidence_level="9Z"), "unknown evidence_level"),
        (lambda p: _rule(p, EGFR).update(version="1"), "version must be an integer"),
        (lambda p: _rule(p, EGFR).update(rationale_template="EGFR in {ecog}"), "placeholder {ecog}"),
        (lambda p: _rule(p, EGFR).pop("guideline"), "missing field"),
        (lambda p: _rule(p, EGFR).update(condition={"fact": "current_medications", "contains_any": "no_such_class"}),
         "unknown drug class"),
    ],
)
def test_invalid_rules_are_rejected_naming_the_rule(tmp_path, mutate, problem):
    path = _write_mutated(tmp_path, mutate)
    with pytest.raises(RuleBaseError) as error:
        load_rule_base(path)
    assert EGFR in str(error.value)
    assert problem in str(error.value)


def test_duplicate_rule_ids_are_rejected(tmp_path):
    def duplicate(payload):
        payload["rules"].append(copy.deepcopy(_rule(payload, EGFR)))

    with pytest.raises(RuleBaseError, match=f"{EGFR}.*duplicate"):
        load_rule_base(_write_mutated(tmp_path, duplicate))


def test_packaged_rule_base_is_versioned_and_cites_sources(rule_base):
    assert rule_base.version and rule_base.released
    assert len(rule_base.sha256) == 64
    categories = {r.category for r in rule_base.rules}
    # drug-drug interactions are not rules: they live in the interaction knowledge base
    assert categories == {"targeted_therapy", "pgx", "follow_up"}
    for rule in rule_base.rules:
        assert rule.guideline.strip() and rule.rationale_template.strip()


# ----------------------------------------------------------------------------- targeted therapy


@pytest.mark.parametrize(
    "facts, rule_id, drug",
    [
        ({"cancer_type": "nsclc", "alt_egfr_sensitizing": True}, EGFR, "osimertinib"),
        ({"cancer_type": "nsclc", "alt_egfr_t790m": True}, "nsclc_egfr_t790m_osimertinib", "osimertinib"),
        ({"cancer_type": "nsclc", "alt_alk_fusion": True}, "nsclc_alk_fusion_alk_inhibitor", "alectinib"),
        ({"cancer_type": "nsclc", "alt_ros1_fusion": True}, "nsclc_ros1_fusion_ros1_inhibitor", "crizotinib"),
        ({"cancer_type": "melanoma", "alt_braf_v600e": True}, "melanoma_braf_v600e_braf_mek", "trametinib"),
        ({"cancer_type": "nsclc", "alt_braf_v600e": True}, "nsclc_braf_v600e_braf_mek", "dabrafenib"),
        ({"cancer_type": "breast", "alt_erbb2": True}, "breast_her2_positive_anti_her2", "trastuzumab"),
        ({"cancer_type": "nsclc", "alt_kras_g12c": True, "prior_lines_of_therapy": 1}, "nsclc_kras_g12c_inhibitor", "sotorasib"),
        ({"cancer_type": "colorectal", "alt_kras_g12c": True, "prior_lines_of_therapy": 2}, "crc_kras_g12c_inhibitor_anti_egfr", "cetuximab"),
        ({"cancer_type": "breast", "alt_brca": True}, "breast_brca_parp_inhibitor", "olaparib"),
        ({"cancer_type": "breast", "alt_pik3ca": True}, "breast_pik3ca_alpelisib", "alpelisib"),
        ({"cancer_type": "nsclc", "alt_met": True}, "nsclc_met_exon14_met_inhibitor", "capmatinib"),
        ({"cancer_type": "nsclc", "alt_ret": True}, "nsclc_ret_fusion_selpercatinib", "selpercatinib"),
        ({"cancer_type": "other", "alt_ntrk": True}, "any_ntrk_fusion_trk_inhibitor", "larotrectinib"),
    ],
)
def test_biomarker_facts_select_the_targeted_therapy(rule_base, facts, rule_id, drug):
    matches = matched(facts, rule_base)
    assert rule_id in matches
    assert drug in matches[rule_id].drugs
    assert matches[rule_id].action in ("recommend", "consider")
    # no other targeted-therapy rule fires on a single alteration
    assert [m for m in matches.values() if m.category == "targeted_therapy"] == [matches[rule_id]]


def test_egfr_match_records_only_the_facts_that_made_it_match(rule_base):
    facts = {"cancer_type": "nsclc", "alt_egfr_sensitizing": True, "ecog": 1, "age_years": 71.0,
             "smoking_status": "never"}
    match = matched(facts, rule_base)[EGFR]
    assert match.therapy == "osimertinib"
    assert match.matched_facts == {"cancer_type": "nsclc", "alt_egfr_sensitizing": True}
    assert "71" not in match.rationale


def test_alteration_in_another_tumour_type_does_not_match(rule_base):
    assert EGFR not in matched({"cancer_type": "breast", "alt_egfr_sensitizing": True}, rule_base)
    assert "nsclc_kras_g12c_inhibitor" not in matched(
        {"cancer_type": "nsclc", "alt_kras_g12c": True, "prior_lines_of_therapy": 0}, rule_base)


def test_her2_from_note_mention_matches_when_no_erbb2_variant(rule_base):
    facts = {"cancer_type": "breast", "alt_erbb2": False, "biomarker_mentions": ["PD-L1 TPS 5%", "HER2 3+"]}
    match = matched(facts, rule_base)["breast_her2_positive_anti_her2"]
    assert match.matched_facts["biomarker_mentions"] == ["her2 3+"]
    assert "alt_erbb2" not in match.matched_facts


# ----------------------------------------------------------------------------- pharmacogenomics


@pytest.mark.parametrize(
    "score, rule_id, action",
    [(0.0, "pgx_dpyd_poor_fluoropyrimidine", "avoid"), (0.5, "pgx_dpyd_poor_fluoropyrimidine", "avoid"),
     (1.0, "pgx_dpyd_intermediate_fluoropyrimidine", "adjust_dose"),
     (1.5, "pgx_dpyd_intermediate_fluoropyrimidine", "adjust_dose"), (2.0, None, None)],
)
def test_dpyd_activity_score_drives_fluoropyrimidine_rules(rule_base, score, rule_id, action):
    dpyd = {k: v for k, v in matched({"pgx_DPYD_activity_score": score}, rule_base).items() if "dpyd" in k}
    if rule_id is None:
        assert dpyd == {}
    else:
        assert list(dpyd) == [rule_id]
        assert dpyd[rule_id].action == action
        assert {"fluorouracil", "capecitabine"} <= set(dpyd[rule_id].drugs)
        assert f"{score:g}" in dpyd[rule_id].rationale


def test_cyp2c19_poor_metabolizer_on_clopidogrel_gets_alternative(rule_base):
    facts = {"current_medications": ["aspirin", "clopidogrel"], "pgx_CYP2C19_phenotype": "Poor Metabolizer"}
    match = matched(facts, rule_base)["pgx_cyp2c19_clopidogrel_alternative"]
    assert match.action == "avoid"
    assert "prasugrel" in match.therapy and "ticagrelor" in match.therapy
    assert match.matched_facts == {"current_medications": ["clopidogrel"], "pgx_CYP2C19_phenotype": "Poor Metabolizer"}
    assert "Poor Metabolizer" in match.rationale
    # same genotype without clopidogrel, or clopidogrel with a normal genotype: no alert
    assert "pgx_cyp2c19_clopidogrel_alternative" not in matched(
        {"current_medications": ["aspirin"], "pgx_CYP2C19_phenotype": "Poor Metabolizer"}, rule_base)
    assert "pgx_cyp2c19_clopidogrel_alternative" not in matched(
        {"current_medications": ["clopidogrel"], "pgx_CYP2C19_phenotype": "Normal Metabolizer"}, rule_base)


@pytest.mark.parametrize(
    "facts, rule_id",
    [
        ({"pgx_TPMT_phenotype": "Possible Intermediate Metabolizer"}, "pgx_tpmt_intermediate_thiopurine"),
        ({"pgx_TPMT_phenotype": "Poor Metabolizer"}, "pgx_tpmt_poor_thiopurine"),
        ({"pgx_NUDT15_phenotype": "Poor Metabolizer"}, "pgx_nudt15_poor_thiopurine"),
        ({"pgx_UGT1A1_phenotype": "Poor Metabolizer"}, "pgx_ugt1a1_poor_irinotecan"),
        ({"current_medications": ["warfarin"], "pgx_VKORC1_phenotype": "rs9923231 T/T"}, "pgx_cyp2c9_vkorc1_warfarin"),
        ({"current_medications": ["warfarin"], "pgx_VKORC1_phenotype": "-1639 GA"}, "pgx_cyp2c9_vkorc1_warfarin"),
        ({"current_medications": ["warfarin"], "pgx_CYP2C9_phenotype": "Poor Metabolizer"}, "pgx_cyp2c9_vkorc1_warfarin"),
        ({"current_medications": ["simvastatin"], "pgx_SLCO1B1_phenotype": "Decreased Function"}, "pgx_slco1b1_decreased_simvastatin"),
        ({"current_medications": ["simvastatin"], "pgx_SLCO1B1_phenotype": "Poor Function"}, "pgx_slco1b1_poor_simvastatin"),
        ({"current_medications": ["tamoxifen"], "pgx_CYP2D6_phenotype": "Poor Metabolizer"}, "pgx_cyp2d6_poor_tamoxifen"),
    ],
)
def test_pgx_phenotypes_trigger_cpic_rules(rule_base, facts, rule_id):
    matches = matched(facts, rule_base)
    assert rule_id in matches
    assert matches[rule_id].evidence_level in ("CPIC-A", "DPWG")


def test_normal_pgx_phenotypes_trigger_nothing(rule_base):
    facts = {f"pgx_{gene}_phenotype": "Normal Metabolizer" for gene in ("CYP2C19", "CYP2C9", "TPMT", "NUDT15", "UGT1A1", "CYP2D6")}
    facts.update(pgx_SLCO1B1_phenotype="Normal Function", pgx_VKORC1_phenotype="-1639 GG",
                 pgx_DPYD_activity_score=2.0, current_medications=["clopidogrel", "warfarin", "simvastatin", "tamoxifen"])
    assert [m for m in matched(facts, rule_base).values() if m.category == "pgx"] == []


# ----------------------------------------------------------------------------- drug classes


def test_drug_class_of_the_interaction_kb_works_in_a_condition(rule_base, tmp_path):
    # contains_any may name a drug class; the members come from interactions.yaml (one list for both)
    def add_rule(payload):
        rule = copy.deepcopy(_rule(payload, EGFR))
        rule.update(id="class_probe", condition={"fact": "current_medications", "contains_any": "strong_cyp3a_inhibitors"},
                    rationale_template="The current medications include {current_medications}.")
        payload["rules"].append(rule)

    probe = load_rule_base(_write_mutated(tmp_path, add_rule))
    match = matched({"current_medications": ["Itraconazole", "metformin"]}, probe)["class_probe"]
    assert match.matched_facts == {"current_medications": ["itraconazole"]}
    assert "class_probe" not in matched({"current_medications": ["metformin"]}, probe)


def test_follow_up_imaging_interval_for_stage_iv_nsclc(rule_base):
    match = matched({"cancer_type": "nsclc", "stage": "IV"}, rule_base)["followup_nsclc_advanced_restaging"]
    assert match.action == "monitor" and "RECIST" in match.guideline
    assert "Stage IV" in match.rationale
    assert "followup_nsclc_advanced_restaging" not in matched({"cancer_type": "nsclc", "stage": "II"}, rule_base)


# ----------------------------------------------------------------------------- missing facts and types


def test_missing_fact_is_reported_not_silently_false(rule_base):
    outcomes = {m.rule_id: m for m in evaluate_rules({"cancer_type": "nsclc", "alt_egfr_sensitizing": None}, rule_base)}
    egfr = outcomes[EGFR]
    assert egfr.status == "could_not_evaluate" and not egfr.matched
    assert egfr.missing_facts == ("alt_egfr_sensitizing",)
    assert egfr.rationale == ""


def test_false_fact_outweighs_missing_fact(rule_base):
    # breast cancer cannot match the NSCLC EGFR rule, whatever the missing EGFR flag would be
    outcomes = {m.rule_id for m in evaluate_rules({"cancer_type": "breast"}, rule_base)}
    assert EGFR not in outcomes


def test_nan_and_numpy_values_from_parquet(rule_base):
    facts = {"cancer_type": "nsclc", "alt_egfr_sensitizing": np.bool_(True), "pgx_DPYD_activity_score": float("nan"),
             "current_medications": np.array(["clopidogrel", "esomeprazole"], dtype=object),
             "pgx_CYP2C19_phenotype": np.str_("Poor Metabolizer")}
    outcomes = {m.rule_id: m for m in evaluate_rules(facts, rule_base)}
    assert outcomes[EGFR].matched
    assert outcomes["pgx_cyp2c19_clopidogrel_alternative"].matched
    assert outcomes["pgx_dpyd_poor_fluoropyrimidine"].status == "could_not_evaluate"


def test_wrongly_typed_fact_is_an_input_error(rule_base):
    with pytest.raises(FactTypeError, match="alt_egfr_sensitizing"):
        evaluate_rules({"cancer_type": "nsclc", "alt_egfr_sensitizing": "true"}, rule_base)


# ----------------------------------------------------------------------------- coverage of the rule base

# One patient per rule that should fire it. A new rule without a witness here fails the coverage test.
RULE_WITNESSES = {
    EGFR: {"cancer_type": "nsclc", "alt_egfr_sensitizing": True},
    "nsclc_egfr_t790m_osimertinib": {"cancer_type": "nsclc", "alt_egfr_t790m": True},
    "nsclc_alk_fusion_alk_inhibitor": {"cancer_type": "nsclc", "alt_alk_fusion": True},
    "nsclc_ros1_fusion_ros1_inhibitor": {"cancer_type": "nsclc", "alt_ros1_fusion": True},
    "melanoma_braf_v600e_braf_mek": {"cancer_type": "melanoma", "alt_braf_v600e": True},
    "nsclc_braf_v600e_braf_mek": {"cancer_type": "nsclc", "alt_braf_v600e": True},
    "breast_her2_positive_anti_her2": {"cancer_type": "breast", "alt_erbb2": True},
    "nsclc_kras_g12c_inhibitor": {"cancer_type": "nsclc", "alt_kras_g12c": True, "prior_lines_of_therapy": 1},
    "crc_kras_g12c_inhibitor_anti_egfr": {"cancer_type": "colorectal", "alt_kras_g12c": True, "prior_lines_of_therapy": 1},
    "breast_brca_parp_inhibitor": {"cancer_type": "breast", "alt_brca": True},
    "breast_pik3ca_alpelisib": {"cancer_type": "breast", "alt_pik3ca": True},
    "nsclc_met_exon14_met_inhibitor": {"cancer_type": "nsclc", "alt_met": True},
    "nsclc_ret_fusion_selpercatinib": {"cancer_type": "nsclc", "alt_ret": True},
    "any_ntrk_fusion_trk_inhibitor": {"cancer_type": "melanoma", "alt_ntrk": True},
    "pgx_dpyd_intermediate_fluoropyrimidine": {"pgx_DPYD_activity_score": 1.0},
    "pgx_dpyd_poor_fluoropyrimidine": {"pgx_DPYD_activity_score": 0.0},
    "pgx_tpmt_intermediate_thiopurine": {"pgx_TPMT_phenotype": "Intermediate Metabolizer"},
    "pgx_tpmt_poor_thiopurine": {"pgx_TPMT_phenotype": "Poor Metabolizer"},
    "pgx_nudt15_intermediate_thiopurine": {"pgx_NUDT15_phenotype": "Intermediate Metabolizer"},
    "pgx_nudt15_poor_thiopurine": {"pgx_NUDT15_phenotype": "Poor Metabolizer"},
    "pgx_ugt1a1_poor_irinotecan": {"pgx_UGT1A1_phenotype": "Poor Metabolizer"},
    "pgx_cyp2c19_clopidogrel_alternative": {"current_medications": ["clopidogrel"], "pgx_CYP2C19_phenotype": "Intermediate Metabolizer"},
    "pgx_cyp2c9_vkorc1_warfarin": {"current_medications": ["warfarin"], "pgx_CYP2C9_phenotype": "Intermediate Metabolizer"},
    "pgx_slco1b1_decreased_simvastatin": {"current_medications": ["simvastatin"], "pgx_SLCO1B1_phenotype": "Possible Decreased Function"},
    "pgx_slco1b1_poor_simvastatin": {"current_medications": ["simvastatin"], "pgx_SLCO1B1_phenotype": "Poor Function"},
    "pgx_cyp2d6_poor_tamoxifen": {"current_medications": ["tamoxifen"], "pgx_CYP2D6_phenotype": "Poor Metabolizer"},
    "followup_nsclc_advanced_restaging": {"cancer_type": "nsclc", "stage": "IVA"},
    "followup_breast_metastatic_restaging": {"cancer_type": "breast", "stage": "IV"},
    "followup_colorectal_metastatic_restaging": {"cancer_type": "colorectal", "stage": "IVB"},
    "followup_melanoma_advanced_restaging": {"cancer_type": "melanoma", "stage": "IVC"},
}


def test_every_rule_in_the_rule_base_has_a_witness(rule_base):
    assert set(RULE_WITNESSES) == {rule.id for rule in rule_base.rules}


@pytest.mark.parametrize("rule_id", sorted(RULE_WITNESSES))
def test_rule_fires_on_its_witness_and_renders_a_rationale(rule_base, rule_id):
    match = matched(RULE_WITNESSES[rule_id], rule_base).get(rule_id)
    assert match is not None, f"{rule_id} did not fire on its witness"
    assert match.rationale and "{" not in match.rationale
    assert set(match.matched_facts) <= set(RULE_WITNESSES[rule_id])
