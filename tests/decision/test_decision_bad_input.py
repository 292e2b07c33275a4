"""Bad or missing input yields a sentence that says so; nothing crashes; other patients' output does not change."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from radplan.decision import cli
from radplan.decision.export import fhir_bundle, render_report_html
from radplan.decision.recommend import recommend_for_patient

from test_decision_export import assert_clinician_text, visible_text

GOOD = {"patient_key": "p1111111111111111", "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "age_years": 61.0,
        "alt_egfr_sensitizing": True, "actionable_alterations": ["EGFR L858R"], "current_medications": ["warfarin", "ibuprofen"],
        "has_imaging": True, "has_genomics": True, "has_ehr": True}
UNKNOWN_MED = {**GOOD, "patient_key": "p2222222222222222", "current_medications": ["zorblaxin", "Warfarin Sodium"]}
NO_GENOMICS = {"patient_key": "p3333333333333333", "cancer_type": "breast", "stage": "IV", "ecog": 0,
               "has_genomics": False, "has_imaging": False, "has_ehr": True, "current_medications": []}
NO_EHR = {"patient_key": "p4444444444444444", "has_ehr": False, "has_genomics": False, "has_imaging": True}


def report_text(facts, rule_base, predictions=None):
    rows = recommend_for_patient(facts, rule_base, model_predictions=predictions, trials=[], versions={})
    html = render_report_html(facts["patient_key"], facts, rows, key_slice_png=None, attribution_png=None, variants=None,
                              pgx=None, radiomics_highlights=None)
    fhir_bundle(facts["patient_key"], rows, facts)  # validates
    text = visible_text(html)
    assert_clinician_text(text)
    return rows, text


def test_unknown_medication_is_named_and_the_known_ones_still_checked(rule_base):
    rows, text = report_text(UNKNOWN_MED, rule_base)
    assert "Not in the interaction knowledge base, so their interactions were not checked: zorblaxin." in text
    assert "Current medications: zorblaxin, Warfarin Sodium." in text


def test_no_genomics_and_no_imaging_are_said_in_words(rule_base):
    rows, text = report_text(NO_GENOMICS, rule_base)
    assert "No genomic data for this patient" in text and "No imaging for this patient" in text
    assert "key biomarkers: no genomic results" in text
    assert "No therapy is proposed: the rules for this cancer type need results that are missing" in text
    assert "Pharmacogenomic profile" not in text


def test_no_ehr_gives_a_reason_not_a_blank(rule_base):
    rows, text = report_text(NO_EHR, rule_base)
    assert rows.empty
    assert "No cancer diagnosis recorded, stage not recorded, ECOG not recorded" in text
    assert "No therapy is proposed: the EHR holds no cancer diagnosis for this patient" in text


def test_therapy_without_model_scope_says_so(rule_base):
    predictions = pd.DataFrame([{"patient_key": GOOD["patient_key"], "therapy": "pembrolizumab", "probability": 0.4,
                                 "ci_low": 0.3, "ci_high": 0.5, "top_attributions": "[]", "model_name": "m",
                                 "model_version": "1", "in_scope": True, "scope_note": None}])
    rows, text = report_text(GOOD, rule_base, predictions)
    assert "osimertinib" in text and "No estimate: outside the model's scope" in text


def run(argv):
    parser = argparse.ArgumentParser(prog="radplan")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_bad_patients_do_not_change_another_patients_output(tmp_path):
    alone, together = tmp_path / "alone", tmp_path / "together"
    (tmp_path / "one.json").write_text(json.dumps([GOOD]))
    (tmp_path / "all.json").write_text(json.dumps([UNKNOWN_MED, GOOD, NO_GENOMICS, NO_EHR]))
    assert run(["decision-recommend", "--facts", str(tmp_path / "one.json"), "--out", str(alone)]) == 0
    assert run(["decision-recommend", "--facts", str(tmp_path / "all.json"), "--out", str(together)]) == 0
    first = pd.read_parquet(alone / "recommendations.parquet")
    mine = pd.read_parquet(together / "recommendations.parquet")
    mine = mine[mine["patient_key"] == GOOD["patient_key"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, mine)
    assert "warfarin with ibuprofen" in set(first["therapy"])

    def stable(path):  # the generation time is the only thing allowed to differ
        return "\n".join(line for line in path.read_text().splitlines() if "Generated" not in line)

    assert stable(alone / "reports" / f"{GOOD['patient_key']}.html") == stable(together / "reports" / f"{GOOD['patient_key']}.html")
    for key in (UNKNOWN_MED, NO_GENOMICS, NO_EHR):
        assert (together / "reports" / f"{key['patient_key']}.html").exists()
        assert (together / "fhir" / f"{key['patient_key']}.json").exists()
