"""``radplan deid-text`` and ``radplan deid-fhir``: the note and FHIR de-identifiers on files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radplan.errors import InvalidNoteError, RadplanInputError
from radplan.lake import atomic_path


def _deid_text(args: argparse.Namespace) -> int:
    from radplan import progress
    from radplan.ehr.extracts import parse_fhir_line
    from radplan.ehr.identifiers import patient_identifiers
    from radplan.ehr.notes import NoteDeidentifier
    from radplan.ehr.surrogates import Surrogates
    from radplan.pseudonym import Pseudonymizer

    pseudonymizer = Pseudonymizer.from_environment()
    identifiers = {}
    if args.patients:
        with open(args.patients, encoding="utf-8") as patients:
            for line_number, line in enumerate(patients, start=1):
                if not line.strip():
                    continue
                try:
                    patient = parse_fhir_line(line, "Patient")
                except RadplanInputError as error:
                    print(f"{args.patients}: line {line_number}: {error}", file=sys.stderr)
                    return 2
                identifiers[patient.id] = patient_identifiers(patient)
    deidentifier = NoteDeidentifier()
    count = errors = 0
    with open(args.input, encoding="utf-8") as source, atomic_path(args.output) as tmp, open(tmp, "w", encoding="utf-8") as sink, \
            progress.task("de-identifying notes") as bar:
        for line_number, line in enumerate(source, start=1):
            bar.advance()
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"line {line_number}: not a JSON object with a text field; skipped", file=sys.stderr)
                errors += 1
                continue
            patient_id = record.get("patient_id")
            surrogates = Surrogates(pseudonymizer.token, patient_id) if args.surrogates and patient_id else None
            try:
                result = deidentifier.deidentify(
                    text, identifiers.get(patient_id), pseudonymizer.date_shift_days(patient_id) if patient_id else None,
                    surrogates=surrogates,
                )
            except InvalidNoteError as error:
                # Quarantined: reported with its reason, never written out unscanned.
                print(f"line {line_number}: note not de-identified, left out: {error}", file=sys.stderr)
                errors += 1
                continue
            sink.write(json.dumps({"id": record.get("id"), "text": result.text, "entities": result.entities}) + "\n")
            count += 1
    print(json.dumps({"notes": count, "skipped": errors, "spacy": deidentifier.spacy_available}))
    return 0 if errors == 0 else 2


def _deid_fhir(args: argparse.Namespace) -> int:
    from radplan.ehr.fhir_deid import deidentify_fhir_folder
    from radplan.pseudonym import Pseudonymizer

    try:
        summary = deidentify_fhir_folder(Path(args.input_dir), Path(args.output_dir), Pseudonymizer.from_environment())
    except RadplanInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["quarantined"] == 0 else 2


def register(subparsers) -> None:
    text = subparsers.add_parser("deid-text", help="de-identify clinical notes (JSONL of {id, text[, patient_id]})")
    text.add_argument("input", type=Path)
    text.add_argument("output", type=Path)
    text.add_argument("--patients", help="Patient.ndjson whose identifiers become deny lists (matched by patient_id)")
    text.add_argument("--surrogates", action="store_true",
                      help="replace names and places with consistent per-patient surrogates instead of [NAME]/[LOCATION] "
                           "(notes with a patient_id)")
    text.set_defaults(func=_deid_text)
    fhir = subparsers.add_parser("deid-fhir", help="de-identify a FHIR bulk-export folder (NDJSON)")
    fhir.add_argument("input_dir", type=Path)
    fhir.add_argument("output_dir", type=Path)
    fhir.set_defaults(func=_deid_fhir)
