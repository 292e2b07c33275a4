"""``radplan deid-text`` and ``radplan deid-fhir`` end to end, through the radplan command parser."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil

import pytest

from radplan.ehr.cli import register
from radplan.ehr.extracts import read_fhir_ndjson
from radplan.ehr.scoring import document_text


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="radplan")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_deid_text_cli(fhir_resources, shared_data, tmp_path, pseudonymizer):
    patient = fhir_resources["Patient"][0]
    given = patient.name[0].given[0]
    notes = [
        {"id": "n1", "text": f"{given} {patient.name[0].family} seen 2020-01-15, phone {patient.telecom[0].value}.", "patient_id": patient.id},
        {"id": "n2", "text": "Contact jane.doe@example.org or 192.168.10.4 on March 3, 2019."},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(n) + "\n" for n in notes))
    target = tmp_path / "out.jsonl"
    assert _run(["deid-text", str(source), str(target), "--patients", str(shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson")]) == 0
    out = [json.loads(line) for line in target.read_text().splitlines()]
    assert [o["id"] for o in out] == ["n1", "n2"]
    first, second = out
    assert given not in first["text"] and patient.telecom[0].value not in first["text"]
    shifted = pseudonymizer.shift_date(dt.date(2020, 1, 15), patient.id)
    assert shifted.isoformat() in first["text"]
    for entity in first["entities"]:
        assert notes[0]["text"][entity["start"] : entity["end"]].strip()
    names = [notes[0]["text"][e["start"] : e["end"]] for e in first["entities"] if e["type"] == "NAME"]
    assert any(given in n for n in names)
    # No patient: no date shift is known, so dates are masked.
    assert second["text"] == "Contact [EMAIL] or [IP] on [DATE]."


def test_deid_fhir_cli(shared_data, tmp_path, pseudonymizer):
    out_dir = tmp_path / "deid"
    source = tmp_path / "bulk"
    shutil.copytree(shared_data / "ehr" / "synthea_fhir_bulk", source)
    # Keep the test fast: a few notes are enough to exercise the attachment path.
    for name, step in (("DocumentReference", 25), ("MedicationRequest", 10), ("Condition", 3)):
        lines = (source / f"{name}.ndjson").read_text().splitlines()
        (source / f"{name}.ndjson").write_text("\n".join(lines[::step]) + "\n")
    assert _run(["deid-fhir", str(source), str(out_dir)]) == 0
    raw, _ = read_fhir_ndjson(source)
    deid, quarantined = read_fhir_ndjson(out_dir)  # re-validates every output line with fhir.resources
    assert quarantined == []
    assert {k: len(v) for k, v in deid.items()} == {k: len(v) for k, v in raw.items()}
    blob = "".join(p.read_text() for p in out_dir.glob("*.ndjson"))
    notes = "".join(document_text(d) for d in deid["DocumentReference"])
    for patient in raw["Patient"]:
        canaries = [patient.id, patient.address[0].line[0], patient.telecom[0].value, patient.birthDate.isoformat()]
        canaries += [i.value for i in patient.identifier or []]
        canaries += [g for n in patient.name for g in n.given] + [n.family for n in patient.name]
        for canary in canaries:
            assert canary not in blob and canary not in notes
        key = pseudonymizer.patient_key(patient.id)
        assert any(p.id == key for p in deid["Patient"])
    by_key = {p.id: p for p in deid["Patient"]}
    for patient in raw["Patient"]:
        out = by_key[pseudonymizer.patient_key(patient.id)]
        assert not out.name and not out.telecom and not out.identifier
        assert out.address[0].postalCode == patient.address[0].postalCode[:3]
    condition = raw["Condition"][0]
    patient_id = condition.subject.reference.split("/")[-1]
    out_condition = next(c for c in deid["Condition"] if c.subject.reference == f"Patient/{pseudonymizer.patient_key(patient_id)}")
    shift = pseudonymizer.date_shift_days(patient_id)
    originals = {c.onsetDateTime.date() for c in raw["Condition"] if c.subject.reference.endswith(patient_id) and c.onsetDateTime}
    assert out_condition.onsetDateTime.date() - dt.timedelta(days=shift) in originals


@pytest.mark.slow
def test_radplan_console_entry_point_lists_ehr_commands(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "radplan_cli.main", "deid-text", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--patients" in result.stdout


def test_deid_text_leaves_out_an_unreadable_note_with_the_reason(tmp_path, capsys):
    notes = [
        {"id": "ok", "text": "<html><body><p>Seen by Dr. Walsh on 03/04/2021</p></body></html>"},
        {"id": "binary", "text": "PK\u0003\u0004 Okafor payload"},
    ]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(n) + "\n" for n in notes))
    assert _run(["deid-text", str(source), str(target)]) == 2
    out = [json.loads(line) for line in target.read_text().splitlines()]
    assert [o["id"] for o in out] == ["ok"] and "Walsh" not in out[0]["text"] and "<p>" not in out[0]["text"]
    assert "Okafor" not in target.read_text()
    assert "line 2: note not de-identified, left out: control character U+0003" in capsys.readouterr().err


def test_deid_fhir_reduces_html_notes_to_text_and_quarantines_binary_ones(shared_data, tmp_path):
    import base64

    source, out_dir = tmp_path / "bulk", tmp_path / "deid"
    source.mkdir()
    shutil.copy(shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson", source)
    template = json.loads((shared_data / "ehr" / "synthea_fhir_bulk" / "DocumentReference.ndjson").read_text().splitlines()[0])
    html, binary = json.loads(json.dumps(template)), json.loads(json.dumps(template))
    html["id"], binary["id"] = "html-note", "binary-note"
    html["content"][0]["attachment"].update(contentType="text/html", data=base64.b64encode(
        b"<html><body><p>Seen by Dr. Walsh on 03/04/2021.</p><script>var x='Okafor';</script></body></html>").decode())
    binary["content"][0]["attachment"].update(contentType="text/plain", data=base64.b64encode(b"\x00\x01PK Okafor").decode())
    (source / "DocumentReference.ndjson").write_text(json.dumps(html) + "\n" + json.dumps(binary) + "\n")
    assert _run(["deid-fhir", str(source), str(out_dir)]) == 2  # one note quarantined
    deid, _ = read_fhir_ndjson(out_dir)
    [note] = deid["DocumentReference"]
    text = document_text(note)
    assert note.content[0].attachment.contentType.startswith("text/plain")
    assert "Walsh" not in text and "<p>" not in text and "Okafor" not in text and "03/04/2021" not in text
    assert "Okafor" not in (out_dir / "DocumentReference.ndjson").read_text()
