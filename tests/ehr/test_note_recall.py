"""Note de-identification on text the recognizers were not written against, clinical words that must
survive, and input that is not a plain UTF-8 note.

Scores come from radplan.ehr.scoring.score_gold_notes on gold spans that radplan.ehr.note_eval_set
places while it writes each note (values from shared/data's Synthea CSV), and on presidio-research's
gold spans (shared/data/notes). benchmarks/bench_notes.py reports the full figures.
"""

from __future__ import annotations

import json

import pytest

from radplan.ehr.identifiers import PatientIdentifiers, name_variants
from radplan.ehr.note_eval_set import generator_notes, independent_notes, presidio_research_notes
from radplan.ehr.scoring import score_gold_notes
from radplan.errors import InvalidNoteError


def _detector(deidentifier):
    return lambda text: [(e["start"], e["end"], e["type"]) for e in deidentifier.deidentify(text, None, None).entities]


def test_gold_spans_hold_the_values_the_note_was_written_with(shared_data):
    records = independent_notes(shared_data / "ehr" / "synthea_csv", count=24) + independent_notes(
        shared_data / "ehr" / "synthea_csv", count=6, held_out=True
    )
    for record in records:
        assert record["spans"], record["text"]
        for span in record["spans"]:
            value = record["text"][span["start"] : span["end"]]
            assert value and value == value.strip() and not any(ch.isdigit() for ch in value if span["type"] == "NAME")


def test_independent_notes_meet_the_recall_and_precision_targets(shared_data, note_deidentifier):
    scores = score_gold_notes(independent_notes(shared_data / "ehr" / "synthea_csv", count=36), _detector(note_deidentifier))
    assert scores["span"]["recall"]["NAME"] >= 0.95
    assert scores["span"]["all_phi_recall"] >= 0.95
    assert scores["span"]["precision_all"] >= 0.70
    assert scores["token"]["all_phi_recall"] >= 0.95


def test_held_out_templates_keep_their_measured_recall(shared_data, note_deidentifier):
    # Templates written late; first measured 0.80 name / 0.86 all-PHI recall, 0.98 precision (60 notes), now
    # 0.904 / 0.957 / 1.000 (bench, 120 notes).
    scores = score_gold_notes(independent_notes(shared_data / "ehr" / "synthea_csv", count=30, held_out=True), _detector(note_deidentifier))
    assert scores["span"]["recall"]["NAME"] >= 0.85
    assert scores["span"]["all_phi_recall"] >= 0.92
    assert scores["span"]["precision_all"] >= 0.90


def test_presidio_research_set_beats_plain_presidio_on_the_same_text(shared_data, note_deidentifier):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from radplan.ehr.notes import DEFAULT_SPACY_MODEL

    records = presidio_research_notes(json.loads((shared_data / "notes" / "presidio_generated_small.json").read_text()))
    ours = score_gold_notes(records, _detector(note_deidentifier))
    nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": DEFAULT_SPACY_MODEL}]})
    presidio = AnalyzerEngine(nlp_engine=nlp.create_engine(), supported_languages=["en"])
    theirs = score_gold_notes(records, lambda text: [(r.start, r.end, r.entity_type) for r in presidio.analyze(text=text, language="en")])
    assert ours["span"]["all_phi_recall"] > theirs["span"]["all_phi_recall"]
    assert ours["span"]["recall"]["NAME"] >= theirs["span"]["recall"]["NAME"]
    assert ours["span"]["precision_all"] > theirs["span"]["precision_all"]
    assert ours["span"]["recall"]["NAME"] >= 0.90  # measured 0.927


def test_no_drop_on_the_generators_notes(note_deidentifier):
    scores = score_gold_notes(generator_notes(patients=2), _detector(note_deidentifier))
    assert scores["span"]["all_phi_recall"] == 1.0 and scores["span"]["precision_all"] >= 0.95


def test_clinical_vocabulary_survives_and_titles_still_mark_names(note_deidentifier):
    text = "Classical Hodgkin lymphoma; Parkinson's disease; Graves' disease; EGFR L858R on osimertinib. Seen by Dr. Graves."
    result = note_deidentifier.deidentify(text, None, None)
    assert result.text.startswith("Classical Hodgkin lymphoma; Parkinson's disease; Graves' disease; EGFR L858R on osimertinib.")
    assert result.text.endswith("Dr. [NAME].")


def test_a_patients_own_name_is_masked_even_when_it_is_clinical_vocabulary(note_deidentifier):
    ids = PatientIdentifiers("p", names=name_variants(None, ["Ada"], "Parkinson", None))
    result = note_deidentifier.deidentify("Ada Parkinson has no Parkinson disease; Parkinson family history negative.", ids, None)
    assert "Parkinson" not in result.text


def test_names_places_and_identifiers_without_a_deny_list(note_deidentifier):
    text = ("PT: OKAFOR, NNEKA   Acct #: 88314902\nhi its antwan emard, call me at +1 508-555-0142\n"
            "Lives in Worcester. Pacemaker serial no. PJN4471920S. Home: 12 Elm St, Springfield, MA 01105")
    result = note_deidentifier.deidentify(text, None, None)
    for value in ("OKAFOR", "NNEKA", "88314902", "antwan", "emard", "508-555-0142", "Worcester", "PJN4471920S", "Elm St", "01105"):
        assert value not in result.text, value


# Bad input: each note is de-identified or refused with a reason, never passed through unscanned.

def test_empty_and_blank_notes(note_deidentifier):
    assert note_deidentifier.deidentify("", None, None).text == ""
    assert note_deidentifier.deidentify(b"  \n", None, None).entities == []


def test_windows_1252_bytes_are_decoded_and_scanned(note_deidentifier):
    raw = "Pt Ren\u00e9e Okafor seen 03/04/2021 \u2013 caf\u00e9 au lait spots.".encode("cp1252")
    result = note_deidentifier.deidentify(raw, None, None)
    assert "Okafor" not in result.text and "03/04/2021" not in result.text and "caf\u00e9" in result.text


@pytest.mark.parametrize(("raw", "reason"), [
    (b"Pt Okafor \x81\x8d seen", "neither UTF-8"),
    (b"%PDF-1.4\x00\x01\x02 Okafor", "control character"),
])
def test_unreadable_bytes_are_refused_with_the_reason(note_deidentifier, raw, reason):
    with pytest.raises(InvalidNoteError, match=reason):
        note_deidentifier.deidentify(raw, None, None)


def test_rtf_is_reduced_to_text_then_scanned(note_deidentifier):
    rtf = (r"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}{\colortbl;\red0\green0\blue0;}"
           r"{\*\generator Msftedit 5.41;}\f0\fs24 Patient: Nneka Okafor\par Seen by Dr. Ren\'e9e Walsh on 03/04/2021.\par "
           r"Ren\u233?e\tab follows.}")
    result = note_deidentifier.deidentify(rtf, None, None)
    assert result.source_format == "rtf"
    assert "\\" not in result.text and "Times New Roman" not in result.text and "Msftedit" not in result.text
    for value in ("Nneka", "Okafor", "Walsh", "03/04/2021"):
        assert value not in result.text, value
    assert result.text.count("\n") >= 2


def test_html_is_reduced_to_text_then_scanned(note_deidentifier):
    html = ("<html><head><title>Note for Nneka Okafor</title><style>p{color:red}</style></head><body>"
            "<p>Seen by Dr.&nbsp;Walsh</p><script>var mrn='12345';</script><p>Patient Nneka Okafor, DOB 01/02/1950</p></body></html>")
    result = note_deidentifier.deidentify(html, None, None)
    assert result.source_format == "html"
    assert "<" not in result.text and "color:red" not in result.text and "var mrn" not in result.text
    for value in ("Walsh", "Okafor", "01/02/1950"):
        assert value not in result.text, value


def test_long_notes_are_scanned_in_chunks_with_input_offsets(shared_data):
    from radplan.ehr.notes import NoteDeidentifier

    records = independent_notes(shared_data / "ehr" / "synthea_csv", count=36)
    text = "\n\n".join(r["text"] for r in records)
    whole = NoteDeidentifier(chunk_chars=10**9).deidentify(text, None, None)
    chunked = NoteDeidentifier(chunk_chars=700).deidentify(text, None, None)
    assert len(text) > 5 * 700
    # Cuts fall at blank lines, so the chunked result holds the same spans as the whole-note scan.
    assert chunked.entities == whole.entities and chunked.text == whole.text


def test_surrogates_are_consistent_per_patient_and_differ_between_patients(note_deidentifier, pseudonymizer):
    from radplan.ehr.surrogates import Surrogates

    text = "PT: OKAFOR, NNEKA. Nneka Okafor lives in Worcester; seen by Dr. Walsh on 03/04/2021."
    first = note_deidentifier.deidentify(text, None, -10, surrogates=Surrogates(pseudonymizer.token, "patient-a"))
    again = note_deidentifier.deidentify(text, None, -10, surrogates=Surrogates(pseudonymizer.token, "patient-a"))
    other = note_deidentifier.deidentify(text, None, -10, surrogates=Surrogates(pseudonymizer.token, "patient-b"))
    assert first.text == again.text != other.text
    for value in ("OKAFOR", "NNEKA", "Okafor", "Worcester", "Walsh", "03/04/2021"):
        assert value not in first.text, value
    assert "[NAME]" not in first.text and "02/22/2021" in first.text  # names read as names; the date is shifted
    surname = first.text.split(",")[0].removeprefix("PT: ")
    assert surname.isupper() and surname.title() in first.text  # one surrogate per name, case kept
