"""ClinicalTrials.gov parsing (legacy XML and API v2 JSON) and patient-to-trial matching."""

from __future__ import annotations

import pytest

from radplan.decision.trials import (
    InvalidTrialRecordError,
    load_trial_catalog,
    match_trials,
    parse_age_years,
    split_eligibility,
)


def by_id(catalog):
    return {t.nct_id: t for t in catalog}


def test_every_shared_record_parses(shared_data, trial_catalog):
    files = sorted((shared_data / "trials").rglob("*.*"))
    assert {t.nct_id for t in trial_catalog} == {f.stem for f in files}
    formats = [t.source_format for t in trial_catalog]
    assert formats.count("ctgov_xml") == 5 and formats.count("ctgov_json_v2") == 3
    for trial in trial_catalog:
        assert trial.title and trial.overall_status and trial.conditions and trial.interventions
        assert trial.inclusion_criteria and trial.exclusion_criteria, trial.nct_id


def test_fields_from_both_formats(trial_catalog):
    trials = by_id(trial_catalog)
    cf = trials["NCT00763412"]  # API v2 JSON
    assert (cf.min_age_years, cf.max_age_years, cf.sex) == (12.0, 24.0, "ALL")
    assert cf.overall_status == "Completed" and "repaglinide" in cf.interventions
    assert trials["NCT02210780"].phase == "Phase 2"
    checkmate = trials["NCT01642004"]  # legacy XML
    assert checkmate.phase == "Phase 3"
    assert checkmate.conditions == ("Squamous Cell Non-small Cell Lung Cancer",)
    assert {"Nivolumab", "Docetaxel"} <= set(checkmate.interventions)
    assert checkmate.min_age_years == 18.0 and checkmate.max_age_years is None
    assert checkmate.ecog_max == 1 and checkmate.requires_prior_therapy
    assert any("Prior treatment with Docetaxel" in c for c in checkmate.exclusion_criteria)
    assert not any("Docetaxel" in c for c in checkmate.inclusion_criteria)


def test_biomarker_mentions_keep_inclusion_exclusion_and_negation(trial_catalog):
    trials = by_id(trial_catalog)
    ds1205 = {(m.biomarker, m.requirement) for m in trials["NCT03599518"].biomarker_mentions}
    assert ("EGFR sensitizing mutation", "required") in ds1205
    assert ("EGFR T790M", "required_absent") in ds1205  # "Demonstrates absence of EGFR T790M mutation"
    assert {("ALK fusion", "excluded"), ("ROS1 fusion", "excluded"), ("RET fusion", "excluded")} <= ds1205
    olaparib = {(m.biomarker, m.requirement) for m in trials["NCT02679963"].biomarker_mentions}
    assert olaparib == {("EGFR sensitizing mutation", "required_absent"), ("ALK fusion", "required_absent")}
    tnbc = {(m.biomarker, m.requirement) for m in trials["NCT03424005"].biomarker_mentions}
    assert ("HER2/ERBB2", "required_absent") in tnbc
    assert trials["NCT03424005"].ecog_max == 1
    assert trials["NCT01065844"].ecog_max == 2  # "ECOG performance status 0-2"


NSCLC = {"cancer_type": "nsclc", "age_years": 63.0, "sex": "M", "ecog": 1, "prior_lines_of_therapy": 1}


def test_egfr_mutant_nsclc_matches_the_egfr_trial(trial_catalog):
    facts = {**NSCLC, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False, "alt_alk_fusion": False}
    matches = {m.nct_id: m for m in match_trials(facts, trial_catalog)}
    assert "NCT03599518" in matches
    reasons = " ".join(matches["NCT03599518"].reasons)
    assert "requires EGFR sensitizing mutation: patient present" in reasons
    assert "requires absence of EGFR T790M: patient absent" in reasons
    assert any("ROS1" in u for u in matches["NCT03599518"].unchecked)  # alt_ros1_fusion not given
    assert "NCT02679963" not in matches  # requires absence of EGFR-sensitising mutation
    assert "NCT03424005" not in matches and "NCT00763412" not in matches


def test_egfr_negative_nsclc_matches_the_other_lung_trials(trial_catalog):
    facts = {**NSCLC, "alt_egfr_sensitizing": False, "alt_alk_fusion": False}
    matches = {m.nct_id: m for m in match_trials(facts, trial_catalog)}
    assert set(matches) == {"NCT01642004", "NCT02679963"}
    assert "squamous histology (no histology fact)" in matches["NCT01642004"].unchecked
    assert any("prior systemic therapy" in r for r in matches["NCT01642004"].reasons)
    # open (recruiting) trials come first
    assert [m.nct_id for m in match_trials(facts, trial_catalog)][0] == "NCT02679963"


def test_checkmate017_needs_prior_platinum(trial_catalog):
    facts = {**NSCLC, "prior_lines_of_therapy": 0, "alt_egfr_sensitizing": False}
    assert "NCT01642004" not in {m.nct_id for m in match_trials(facts, trial_catalog)}


def test_tnbc_trial_depends_on_her2(trial_catalog):
    breast = {"cancer_type": "breast", "age_years": 48.0, "sex": "F", "ecog": 0, "prior_lines_of_therapy": 1}
    her2_negative = {m.nct_id: m for m in match_trials({**breast, "alt_erbb2": False}, trial_catalog)}
    assert set(her2_negative) == {"NCT03424005"}
    assert any("ER/PR" in u for u in her2_negative["NCT03424005"].unchecked)
    assert match_trials({**breast, "alt_erbb2": True}, trial_catalog) == []


@pytest.mark.parametrize("change", [{"age_years": 17.0}, {"ecog": 2}, {"cancer_type": "melanoma"}, {"cancer_type": None}])
def test_age_ecog_and_condition_exclude(trial_catalog, change):
    facts = {**NSCLC, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False, **change}
    assert "NCT03599518" not in {m.nct_id for m in match_trials(facts, trial_catalog)}


def test_unknown_biomarker_is_listed_as_unchecked(trial_catalog):
    matches = {m.nct_id: m for m in match_trials(dict(NSCLC), trial_catalog)}
    assert "NCT03599518" in matches
    assert "requires EGFR sensitizing mutation (result missing)" in matches["NCT03599518"].unchecked


def test_age_units_and_limits():
    assert parse_age_years("18 Years") == 18.0
    assert parse_age_years("6 Months") == 0.5
    assert parse_age_years("N/A") is None and parse_age_years(None) is None
    with pytest.raises(InvalidTrialRecordError):
        parse_age_years("eighteen")


def test_eligibility_split_with_key_headers_and_bullets():
    text = ("Key Inclusion Criteria:\n\n1. Adults 18 to 64 years\n2. EGFR mutation\n   confirmed\n\n"
            "Key Exclusion Criteria:\n\n* Prior osimertinib\n* ALK fusion")
    inclusion, exclusion = split_eligibility(text)
    assert inclusion == ("Adults 18 to 64 years", "EGFR mutation confirmed")
    assert exclusion == ("Prior osimertinib", "ALK fusion")


def test_unreadable_records_raise_input_errors(tmp_path):
    broken = tmp_path / "NCT00000001.xml"
    broken.write_text("<clinical_study><id_info>")
    with pytest.raises(InvalidTrialRecordError, match="NCT00000001.xml"):
        load_trial_catalog([broken])
    not_v2 = tmp_path / "NCT00000002.json"
    not_v2.write_text('{"study": {}}')
    with pytest.raises(InvalidTrialRecordError, match="API v2"):
        load_trial_catalog([not_v2])
    (tmp_path / "README.md").write_text("not a record")
    assert load_trial_catalog([tmp_path / "README.md"]) == []
