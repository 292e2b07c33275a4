"""Trial biomarkers where trials write them: arm groups (NCI-MATCH-style baskets), conditions, keywords.

Expected values are read off the record text by hand (the arm labels of NCT02465060 as
ClinicalTrials.gov publishes them), not produced by the extractor.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from radplan.decision.trials import (
    SAMPLE_CATALOG_DIR,
    find_gene_alterations,
    load_trial_catalog,
    match_trials,
    parse_ctgov_json_v2,
    parse_ctgov_xml,
    screen_trial,
)

MATCH_XML = SAMPLE_CATALOG_DIR / "NCT02465060.xml"
ALTERATION_FACTS = ("alt_egfr_sensitizing", "alt_egfr_t790m", "alt_alk_fusion", "alt_ros1_fusion", "alt_braf_v600e",
                    "alt_kras_g12c", "alt_erbb2", "alt_brca", "alt_pik3ca", "alt_met", "alt_ret", "alt_ntrk")
# a melanoma patient whose panel was negative for every alteration radplan records
MELANOMA = {"cancer_type": "melanoma", "age_years": 55.0, "sex": "F", "ecog": 1, "prior_lines_of_therapy": 1,
            **{fact: False for fact in ALTERATION_FACTS}}


@pytest.fixture(scope="module")
def nci_match():
    return parse_ctgov_xml(MATCH_XML)


def arm_named(trial, code):
    return next(a.label for a in trial.arms if a.label.startswith(f"Subprotocol {code} "))


def biomarkers_of(trial, code):
    label = arm_named(trial, code)
    return {(m.gene, m.alteration, m.eligibility) for m in trial.arm_biomarkers if m.arm == label}


def test_nci_match_arm_level_biomarkers_are_found(nci_match):
    assert len(nci_match.arms) == 30
    # every subprotocol assigns patients by at least one biomarker the patient must carry
    assert all(any(m.arm == arm.label and m.eligibility == "inclusion" for m in nci_match.arm_biomarkers)
               for arm in nci_match.arms)
    assert biomarkers_of(nci_match, "H") == {("BRAF", "V600E/R/K/D mutation", "inclusion")}
    assert biomarkers_of(nci_match, "R") == {("BRAF", "fusion", "inclusion"),
                                            ("BRAF", "non-V600 mutation", "inclusion")}
    assert biomarkers_of(nci_match, "F") == {("ALK", "translocation", "inclusion")}
    assert biomarkers_of(nci_match, "C2") == {("MET", "exon 14 deletion", "inclusion")}
    assert biomarkers_of(nci_match, "T") == {("SMO", "mutation", "inclusion"), ("PTCH1", "mutation", "inclusion")}
    assert biomarkers_of(nci_match, "Z1E") == {(g, "fusion", "inclusion") for g in ("NTRK1", "NTRK2", "NTRK3")}
    assert biomarkers_of(nci_match, "Z1D") == {("MLH1", "loss", "inclusion"), ("MSH2", "loss", "inclusion")}
    assert {g for g, _, _ in biomarkers_of(nci_match, "Z1B")} == {"CCND1", "CCND2", "CCND3", "RB1"}
    assert {g for g, _, _ in biomarkers_of(nci_match, "W")} >= {"FGFR1", "FGFR2", "FGFR3"}  # "FGFR1-3 mutation"
    assert biomarkers_of(nci_match, "X") == {("DDR2", "S768R, I638F, or L239R mutation", "inclusion")}
    # "Patients with PIK3CA mutation without RAS mutation or PTEN loss"
    assert biomarkers_of(nci_match, "I") == {("PIK3CA", "mutation", "inclusion"), ("RAS", "mutation", "exclusion"),
                                            ("PTEN", "loss", "exclusion")}
    # HER2 is written "HER2" and recorded as its HGNC symbol
    for code, alteration in (("B", "activating mutation"), ("J", "amplification"), ("Q", "amplification")):
        assert biomarkers_of(nci_match, code) == {("ERBB2", alteration, "inclusion")}
    # the arm's drugs come from the interventions that name it
    assert set(next(a for a in nci_match.arms if a.label == arm_named(nci_match, "H")).interventions) == {
        "Dabrafenib", "Trametinib"}


def test_braf_v600e_patient_matches_arm_h_only(nci_match):
    facts = {**MELANOMA, "alt_braf_v600e": True}
    (match,) = [m for m in match_trials(facts, [nci_match])]
    assert match.arms == (arm_named(nci_match, "H"),)
    assert any("Subprotocol H" in r and "BRAF V600E/R/K/D mutation" in r and "patient present" in r
               for r in match.reasons)
    assert match.as_dict()["arms"] == [arm_named(nci_match, "H")]


@pytest.mark.parametrize("fact, code", [("alt_alk_fusion", "F"), ("alt_met", "C2"), ("alt_ntrk", "Z1E"),
                                        ("alt_egfr_t790m", "E"), ("alt_pik3ca", "I")])
def test_each_alteration_picks_its_own_arm(nci_match, fact, code):
    (match,) = match_trials({**MELANOMA, fact: True}, [nci_match])
    assert match.arms == (arm_named(nci_match, code),)


def test_her2_patient_gets_every_her2_arm_and_no_other(nci_match):
    (match,) = match_trials({**MELANOMA, "alt_erbb2": True}, [nci_match])
    assert set(match.arms) == {arm_named(nci_match, c) for c in ("B", "J", "Q")}


def test_no_carried_biomarker_means_no_arm_and_no_match(nci_match):
    candidate, _, excluded, _ = screen_trial(MELANOMA, nci_match)
    assert not candidate
    assert any("no biomarker-assigned arm fits" in e for e in excluded)


def test_missing_result_is_indeterminate_not_negative(nci_match):
    facts = {**MELANOMA, "alt_braf_v600e": None}
    (match,) = match_trials(facts, [nci_match])
    assert match.arms == ()
    assert any("result missing" in u and "BRAF V600E" in u for u in match.unchecked)


def test_exclusion_biomarker_excludes_the_arm(nci_match):
    # arm I takes PIK3CA-mutant tumours "without RAS mutation": a KRAS G12C carrier has a RAS mutation
    pik3ca = {**MELANOMA, "alt_pik3ca": True}
    (match,) = match_trials(pik3ca, [nci_match])
    assert match.arms == (arm_named(nci_match, "I"),)
    assert any("excludes RAS mutation" in u for u in match.unchecked)  # KRAS G12C negative does not prove RAS wild-type
    candidate, _, excluded, _ = screen_trial({**pik3ca, "alt_kras_g12c": True}, nci_match)
    assert not candidate and excluded
    # the same KRAS G12C carrier with a BRAF V600E still fits arm H, which excludes nothing
    (match,) = match_trials({**pik3ca, "alt_kras_g12c": True, "alt_braf_v600e": True}, [nci_match])
    assert match.arms == (arm_named(nci_match, "H"),)


def _as_api_v2(xml_path):
    """The same record in ClinicalTrials.gov API v2 field names (a conversion written for this test)."""
    root = ET.parse(xml_path).getroot()
    text = lambda el, path: " ".join((el.findtext(path) or "").split())  # noqa: E731
    return {"protocolSection": {
        "identificationModule": {"nctId": text(root, "id_info/nct_id"), "briefTitle": text(root, "brief_title")},
        "statusModule": {"overallStatus": text(root, "overall_status").upper().replace(" ", "_")},
        "designModule": {"phases": ["PHASE2"]},
        "conditionsModule": {"conditions": [c.text for c in root.findall("condition")],
                             "keywords": [k.text for k in root.findall("keyword")]},
        "armsInterventionsModule": {
            "armGroups": [{"label": text(a, "arm_group_label"), "type": "EXPERIMENTAL",
                           "description": text(a, "description")} for a in root.findall("arm_group")],
            "interventions": [{"type": text(i, "intervention_type").upper(), "name": text(i, "intervention_name"),
                               "description": text(i, "description"),
                               "armGroupLabels": [a.text for a in i.findall("arm_group_label")]}
                              for i in root.findall("intervention")]},
        "eligibilityModule": {"eligibilityCriteria": root.findtext("eligibility/criteria/textblock"),
                              "sex": "ALL", "minimumAge": "18 Years"},
    }}


def test_api_v2_json_and_legacy_xml_give_the_same_extraction(tmp_path, nci_match):
    as_json = tmp_path / "NCT02465060.json"
    as_json.write_text(json.dumps(_as_api_v2(MATCH_XML)), encoding="utf-8")
    from_json = parse_ctgov_json_v2(as_json)
    assert from_json.source_format == "ctgov_json_v2" and nci_match.source_format == "ctgov_xml"
    assert from_json.arms == nci_match.arms
    assert from_json.arm_biomarkers == nci_match.arm_biomarkers
    assert from_json.biomarker_mentions == nci_match.biomarker_mentions
    facts = {**MELANOMA, "alt_braf_v600e": True}
    assert [m.arms for m in match_trials(facts, [from_json])] == [m.arms for m in match_trials(facts, [nci_match])]


def test_real_records_without_biomarker_arms_get_none(trial_catalog):
    trials = {t.nct_id: t for t in trial_catalog}
    dupilumab = trials["NCT02210780"]  # API v2 JSON with four arms, none biomarker-assigned
    assert len(dupilumab.arms) >= 2 and dupilumab.arm_biomarkers == ()
    checkmate = trials["NCT01642004"]  # legacy XML, nivolumab vs docetaxel
    assert checkmate.arms and checkmate.arm_biomarkers == ()


def test_her2_written_only_in_the_conditions_is_a_trial_level_requirement(tmp_path):
    record = {"protocolSection": {
        "identificationModule": {"nctId": "NCT00000001", "briefTitle": "A HER2 study"},
        "statusModule": {"overallStatus": "RECRUITING"},
        "conditionsModule": {"conditions": ["HER2-positive Breast Cancer"], "keywords": ["KRAS wild-type"]},
        "eligibilityModule": {"eligibilityCriteria": "Inclusion Criteria:\n- Age 18 or over", "sex": "ALL"},
    }}
    path = tmp_path / "NCT00000001.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    trial = parse_ctgov_json_v2(path)
    mentions = {(m.gene, m.alteration, m.eligibility, m.source) for m in trial.biomarker_mentions}
    assert mentions == {("ERBB2", "positive", "inclusion", "condition"), ("KRAS", "wild-type", "exclusion", "keyword")}
    breast = {"cancer_type": "breast", "age_years": 50.0, "sex": "F"}
    assert [m.nct_id for m in match_trials({**breast, "alt_erbb2": True}, [trial])] == ["NCT00000001"]
    assert match_trials({**breast, "alt_erbb2": False}, [trial]) == []


@pytest.mark.parametrize("text, expected", [
    ("EGFR TKI-naive", []),  # a gene named without an alteration is no biomarker statement
    ("Anti-HER2 monoclonal antibody", []),  # a drug name
    ("EGFR-mutant and ALK-negative", [("EGFR", "mutant", False), ("ALK", "negative", True)]),
    ("no known BRAF V600E mutation", [("BRAF", "V600E mutation", True)]),
    # a negation word carries over "or"; a negative result of one gene does not negate the next
    ("without KRAS or NRAS mutation", [("KRAS", "mutation", True), ("NRAS", "mutation", True)]),
    ("ALK-negative or EGFR mutation", [("ALK", "negative", True), ("EGFR", "mutation", False)]),
])
def test_gene_alteration_statements(text, expected):
    assert [(f.gene, f.alteration, f.negated) for f in find_gene_alterations(text)] == expected


def test_catalogue_falls_back_to_the_shipped_sample(shared_data):
    sample = {t.nct_id for t in load_trial_catalog([])}
    assert "NCT02465060" in sample and len(sample) >= 3
    assert (SAMPLE_CATALOG_DIR / "README.md").is_file()
    # a configured folder is read as given, the sample is not mixed in
    assert "NCT02465060" not in {t.nct_id for t in load_trial_catalog([shared_data / "trials"])}


def test_recommendation_row_names_the_arm(rule_base):
    from radplan.decision.recommend import RECOMMENDATION_COLUMNS, recommend_for_patient

    facts = {**MELANOMA, "patient_key": "p-arm", "alt_braf_v600e": True}
    table = recommend_for_patient(facts, rule_base, model_predictions=None, trials=load_trial_catalog([]),
                                  versions={"trial_catalog_version": "sample"})
    assert list(table.columns) == list(RECOMMENDATION_COLUMNS)
    row = table[table["therapy"].str.startswith("Clinical trial NCT02465060")].iloc[0]
    assert "Subprotocol H (BRAF V600E/R/K/D mutation)" in row["rationale"]
    (matched,) = [t for t in json.loads(row["matched_trials"]) if t["nct_id"] == "NCT02465060"]
    assert matched["arms"] == ["Subprotocol H (BRAF V600E/R/K/D mutation)"]
