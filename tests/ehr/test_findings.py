"""Rule-based note findings, negation included."""

from __future__ import annotations

import pytest

from radplan.ehr.findings import extract_note_findings


def _biomarkers(text):
    return {(f["gene"], f["alteration"], f["negated"]) for f in extract_note_findings(text) if f["finding"] == "biomarker"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("EGFR exon 19 deletion detected.", {("EGFR", "exon 19 deletion", False)}),
        ("Negative for ALK rearrangement.", {("ALK", "rearrangement", True)}),
        ("No EGFR mutation was found.", {("EGFR", "mutation", True)}),
        ("Tumor without ROS1 fusion.", {("ROS1", "fusion", True)}),
        ("KRAS G12C present; BRAF V600E.", {("KRAS", "G12C", False), ("BRAF", "V600E", False)}),
        ("HER2 3+ by IHC.", {("HER2", "3+", False)}),
        ("HER2 negative.", {("HER2", "negative", True)}),
        ("PD-L1 TPS 60%.", {("PD-L1", "TPS 60%", False)}),
        ("ALK rearrangement not detected.", {("ALK", "rearrangement", True)}),
    ],
)
def test_biomarkers_with_negation(text, expected):
    assert _biomarkers(text) == expected


def test_negation_does_not_cross_sentences():
    found = _biomarkers("EGFR exon 19 deletion detected. Negative for ALK rearrangement.")
    assert found == {("EGFR", "exon 19 deletion", False), ("ALK", "rearrangement", True)}


def test_stage_tnm_ecog_smoking():
    findings = extract_note_findings("Stage IIIA NSCLC, cT2a N2 M0. ECOG performance status of 1. Former smoker, 30 pack-years.")
    by_kind = {f["finding"]: f["value"] for f in findings}
    assert by_kind == {"stage": "IIIA", "tnm": "cT2aN2M0", "ecog": 1, "smoking_status": "former"}
    text = "Stage IIIA NSCLC"
    stage = next(f for f in findings if f["finding"] == "stage")
    assert text[stage["span"][0] : stage["span"][1]] == "Stage IIIA"


def test_synthea_note_smoking_history(fhir_resources):
    from radplan.ehr.scoring import document_text

    texts = [document_text(d) for d in fhir_resources["DocumentReference"][:40]]
    statuses = {f["value"] for t in texts for f in extract_note_findings(t) if f["finding"] == "smoking_status"}
    assert "former" in statuses  # "Patient quit smoking at age 20."
