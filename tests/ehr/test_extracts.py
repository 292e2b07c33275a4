"""Ingest of the real Synthea CSV and FHIR bulk samples, and quarantine of bad input."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from radplan.ehr.extracts import SYNTHEA_TABLES, accepted_patient_ids, fhir_to_tables, read_fhir_ndjson, read_synthea_csv


def _data_lines(path) -> int:
    return sum(1 for line in path.read_bytes().splitlines()[1:] if line.strip())


def test_synthea_csv_reads_every_row_typed(shared_data):
    folder = shared_data / "ehr" / "synthea_csv"
    tables, quarantined = read_synthea_csv(folder)
    assert quarantined == []
    for table in SYNTHEA_TABLES:
        assert len(tables[table]) == _data_lines(folder / f"{table}.csv"), table
    assert pd.api.types.is_datetime64_any_dtype(tables["patients"]["BIRTHDATE"])
    assert str(tables["encounters"]["START"].dt.tz) == "UTC"
    assert tables["medications"]["DISPENSES"].dtype == "Int64"
    # Codes stay exact strings (SNOMED ids exceed float precision).
    assert tables["procedures"]["CODE"].str.fullmatch(r"\d+").all()
    assert "428211000124100" in set(tables["procedures"]["CODE"])
    # Leading zeros of ZIP codes survive.
    assert tables["patients"]["ZIP"].dropna().str.len().eq(5).all()


def test_patient_filter_and_small_chunks_give_the_same_rows(shared_data):
    folder = shared_data / "ehr" / "synthea_csv"
    full, _ = read_synthea_csv(folder)
    some = set(full["patients"]["Id"][:3])
    filtered, _ = read_synthea_csv(folder, patient_ids=some, chunksize=64)
    assert set(filtered["patients"]["Id"]) == some
    expected = full["observations"][full["observations"]["PATIENT"].isin(some)].reset_index(drop=True)
    pd.testing.assert_frame_equal(filtered["observations"], expected)


def test_malformed_csv_rows_are_quarantined_and_the_rest_kept(shared_data, tmp_path):
    source = shared_data / "ehr" / "synthea_csv"
    folder = tmp_path / "csv"
    folder.mkdir()
    for table in ("patients", "conditions"):
        shutil.copy(source / f"{table}.csv", folder / f"{table}.csv")
    lines = (folder / "conditions.csv").read_bytes().splitlines(keepends=True)
    good = lines[1].decode()
    fields = good.rstrip("\n").split(",")
    bad_date = ",".join(["2023-13-45"] + fields[1:]) + "\n"
    missing_key = ",".join(fields[:2] + [""] + fields[3:]) + "\n"
    too_few = ",".join(fields[:3]) + "\n"
    bad_encoding = good.replace("Acute", "Acut\udce9", 1).encode("utf-8", "surrogateescape")
    (folder / "conditions.csv").write_bytes(
        b"".join(lines) + bad_date.encode() + missing_key.encode() + too_few.encode() + bad_encoding
    )
    quarantine = tmp_path / "quarantine"
    tables, quarantined = read_synthea_csv(folder, quarantine_dir=quarantine)
    assert len(tables["conditions"]) == len(lines) - 1
    reasons = {record["line"]: record["reason"] for record in quarantined}
    first_bad = len(lines) + 1
    assert set(reasons) == {first_bad, first_bad + 1, first_bad + 2, first_bad + 3}
    assert "date" in reasons[first_bad]
    assert "PATIENT" in reasons[first_bad + 1]
    assert "columns" in reasons[first_bad + 2]
    assert "UTF-8" in reasons[first_bad + 3]
    rejected = [json.loads(line) for line in (quarantine / "synthea_conditions.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 4 and all("raw" in r for r in rejected)
    # The returned records are PHI-free: no raw line content.
    assert all(set(record) == {"table", "line", "reason"} for record in quarantined)
    # Per-patient counts for the features, where the patient can still be told.
    from radplan.ehr.deid import quarantined_rows_table
    from radplan.ehr.features import clinical_features
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    pseudonymizer = Pseudonymizer(DEMO_KEY)
    counts = quarantined_rows_table(quarantine, pseudonymizer)
    patient_key = pseudonymizer.patient_key(fields[2])
    assert len(counts) == 4
    assert (counts["patient_key"] == patient_key).sum() == 2  # bad date + bad encoding rows
    features = clinical_features({"patients": pd.DataFrame({"patient_key": [patient_key]}), "quarantined": counts})
    assert features.set_index("patient_key").loc[patient_key, "ehr_quarantined_rows"] == 2


def test_fhir_bulk_validates_and_converts(fhir_resources):
    assert {k: len(v) for k, v in fhir_resources.items()} == {
        "Condition": 190, "Device": 8, "DocumentReference": 247, "Immunization": 74, "MedicationRequest": 556, "Patient": 6,
    }
    tables = fhir_to_tables(fhir_resources)
    assert len(tables["notes"]) == 247
    assert tables["notes"]["text"].str.len().gt(100).all()
    assert set(tables["conditions"]["PATIENT"]) <= set(tables["patients"]["Id"])
    assert {"START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"} <= set(tables["conditions"].columns)
    assert "254637007" in set(tables["conditions"]["CODE"])


def test_invalid_fhir_lines_are_quarantined_with_line_numbers(shared_data, tmp_path):
    lines = (shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson").read_text().splitlines()
    broken = json.loads(lines[1])
    broken["birthDate"] = "21/05/1927"
    wrong_type = json.loads(lines[2])
    wrong_type["gender"] = {"not": "a code"}
    content = [lines[0], json.dumps(broken), json.dumps(wrong_type), "{not json", '{"resourceType": "Condition"}', *lines[3:]]
    (tmp_path / "Patient.ndjson").write_text("\n".join(content) + "\n")
    resources, quarantined = read_fhir_ndjson(tmp_path, quarantine_dir=tmp_path / "q")
    assert len(resources["Patient"]) == len(lines) - 2
    assert [r["line"] for r in quarantined] == [2, 3, 4, 5]
    assert "birthDate" in quarantined[0]["reason"] and "1927" not in quarantined[0]["reason"]
    assert "not JSON" in quarantined[2]["reason"]
    assert "Condition" in quarantined[3]["reason"]
    assert (tmp_path / "q" / "fhir_Patient.rejected.jsonl").is_file()


@pytest.mark.parametrize("missing_column_table", ["conditions"])
def test_missing_required_column_is_a_clear_error(tmp_path, missing_column_table):
    from radplan.errors import InvalidEhrRecordError

    (tmp_path / f"{missing_column_table}.csv").write_text("START,STOP,ENCOUNTER,CODE\n2020-01-01,,e,1\n")
    with pytest.raises(InvalidEhrRecordError, match="PATIENT"):
        read_synthea_csv(tmp_path)


def test_only_accepted_patient_rows_and_lines_name_patients(shared_data, tmp_path):
    csv_dir, fhir_dir = tmp_path / "csv", tmp_path / "fhir"
    csv_dir.mkdir()
    fhir_dir.mkdir()
    rows = (shared_data / "ehr" / "synthea_csv" / "patients.csv").read_text(encoding="utf-8").splitlines()
    header, first = rows[0], rows[1].split(",")
    columns = header.split(",")
    bad_date = list(first)
    bad_date[columns.index("Id")] = "csv-new-patient-bad-date"
    bad_date[columns.index("BIRTHDATE")] = "not a date"
    (csv_dir / "patients.csv").write_text("\n".join([header, rows[1], ",".join(bad_date)]) + "\n", encoding="utf-8")

    lines = (shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson").read_text().splitlines()
    broken = json.loads(lines[1])
    broken["id"], broken["birthDate"] = "fhir-new-patient-bad-date", "21/05/1927"
    (fhir_dir / "Patient.ndjson").write_text("\n".join([lines[0], json.dumps(broken), ""]) + "\n")

    # The ingest quarantines both malformed records; the inventory must not register their patients.
    tables, quarantined = read_synthea_csv(csv_dir, patient_ids=None)
    assert len(tables["patients"]) == 1 and len(quarantined) == 1
    assert accepted_patient_ids(csv_dir, fhir_dir) == {first[columns.index("Id")], json.loads(lines[0])["id"]}


def _registered_ids(shared_data) -> tuple[list[str], list[str]]:
    csv_ids = pd.read_csv(shared_data / "ehr" / "synthea_csv" / "patients.csv", dtype=str)["Id"].tolist()
    fhir_lines = (shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson").read_text().splitlines()
    return csv_ids, [json.loads(line)["id"] for line in fhir_lines]


def test_a_patient_scoped_read_gives_that_patients_rows_of_the_real_extracts(shared_data):
    """The per-patient read (what ehr_extracts does) equals reading everything and keeping the patient's rows."""
    from radplan.ehr.extracts import PatientScope

    csv_ids, fhir_ids = _registered_ids(shared_data)
    registered = set(csv_ids) | set(fhir_ids)
    full_csv, _ = read_synthea_csv(shared_data / "ehr" / "synthea_csv")
    full_fhir = fhir_to_tables(read_fhir_ndjson(shared_data / "ehr" / "synthea_fhir_bulk")[0])
    compared = 0
    for patient in (csv_ids[0], csv_ids[-1], fhir_ids[0], fhir_ids[-1]):
        scope = PatientScope(frozenset({patient}), "p0", frozenset(registered - {patient}))
        scoped_csv, _ = read_synthea_csv(shared_data / "ehr" / "synthea_csv", scope=scope)
        for table, frame in full_csv.items():
            expected = frame[frame["Id" if table == "patients" else "PATIENT"] == patient].reset_index(drop=True)
            pd.testing.assert_frame_equal(scoped_csv[table], expected)
            compared += len(expected)
        scoped_fhir = fhir_to_tables(read_fhir_ndjson(shared_data / "ehr" / "synthea_fhir_bulk", scope=scope)[0])
        for table, frame in full_fhir.items():
            column = next(name for name in ("PATIENT", "patient", "Id") if name in frame.columns)
            expected = frame[frame[column] == patient].reset_index(drop=True)
            got = scoped_fhir[table][scoped_fhir[table][column] == patient].reset_index(drop=True)
            pd.testing.assert_frame_equal(got, expected)
            compared += len(expected)
    assert compared > 500  # the four patients have rows in both extracts' tables


def test_a_patient_scoped_read_validates_only_its_lines_and_nothing_rejected_is_lost(shared_data, tmp_path, monkeypatch):
    """Two registered patients, an orphan (an id no registered patient has) and a line with no patient, each with a bad
    record: each patient's read validates its own lines and the unowned ones, never the other patient's, and the
    quarantine files of the two runs hold every rejected line exactly once."""
    from radplan.ehr import extracts
    from radplan.ehr.extracts import PatientScope

    source = (shared_data / "ehr" / "synthea_fhir_bulk" / "Condition.ndjson").read_text().splitlines()
    by_patient: dict[str, list[dict]] = {}
    for line in source:
        resource = json.loads(line)
        by_patient.setdefault(resource["subject"]["reference"].split("/", 1)[1], []).append(resource)
    first, second = sorted(by_patient, key=lambda p: -len(by_patient[p]))[:2]

    def bad(resource: dict, subject: str) -> str:
        return json.dumps({**resource, "subject": {"reference": f"Patient/{subject}"}, "onsetDateTime": "yesterday"})

    template = by_patient[first][0]
    lines = [json.dumps(r) for p in (first, second) for r in by_patient[p]]
    lines += [bad(template, first), bad(template, second), bad(template, "orphan-patient"), "{not json"]
    folder = tmp_path / "fhir"
    folder.mkdir()
    (folder / "Condition.ndjson").write_text("\n".join(lines) + "\n")
    everything, all_rejected = read_fhir_ndjson(folder)
    assert len(all_rejected) == 4

    validated: list[str] = []
    real_parse = extracts.parse_fhir_line
    monkeypatch.setattr(extracts, "parse_fhir_line", lambda line, *a: validated.append(line) or real_parse(line, *a))
    quarantine = tmp_path / "q"
    reports = {}
    for label, patient, other in (("pa", first, second), ("pb", second, first)):
        validated.clear()
        resources, rejected = read_fhir_ndjson(folder, quarantine_dir=quarantine,
                                               scope=PatientScope(frozenset({patient}), label, frozenset({other})))
        reports[label] = rejected
        # Its own lines and the two unowned ones are validated; none of the other patient's.
        assert len(validated) == len(by_patient[patient]) + 1 + 2
        assert not any(f"Patient/{other}" in line for line in validated)
        assert {r.id for r in resources["Condition"]} == {r["id"] for r in by_patient[patient]}
    # Each run reports its own bad record and the two unowned ones.
    assert all(len(rejected) == 3 for rejected in reports.values())
    written = {path.name: [json.loads(line) for line in path.read_text().splitlines()] for path in quarantine.glob("*.rejected.jsonl")}
    assert sorted(written) == ["fhir_Condition.pa.rejected.jsonl", "fhir_Condition.pb.rejected.jsonl", "fhir_Condition.rejected.jsonl"]
    assert [r["patient_id"] for r in written["fhir_Condition.pa.rejected.jsonl"]] == [first]
    assert [r["patient_id"] for r in written["fhir_Condition.pb.rejected.jsonl"]] == [second]
    assert sorted(r["line"] for records in written.values() for r in records) == [r["line"] for r in all_rejected]
    assert len(everything["Condition"]) == len(by_patient[first]) + len(by_patient[second])


def test_a_patient_scoped_csv_read_types_only_its_rows_and_quarantines_per_patient(shared_data, tmp_path):
    from radplan.ehr.extracts import PatientScope

    source = shared_data / "ehr" / "synthea_csv" / "conditions.csv"
    header, *rows = source.read_text().splitlines()
    patient_column = header.split(",").index("PATIENT")
    patients = sorted({row.split(",")[patient_column] for row in rows})
    first, second = patients[:2]

    def bad_date(patient: str) -> str:
        fields = rows[0].split(",")
        fields[0], fields[patient_column] = "2023-13-45", patient
        return ",".join(fields)

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "conditions.csv").write_text("\n".join([header, *rows, bad_date(first), bad_date(second), bad_date("orphan"), "a,b"]) + "\n")
    quarantine = tmp_path / "q"
    registered = frozenset(patients)
    tables, rejected = read_synthea_csv(folder, quarantine_dir=quarantine,
                                        scope=PatientScope(frozenset({first}), "pa", registered - {first}))
    assert set(tables["conditions"]["PATIENT"]) == {first}
    assert len(tables["conditions"]) == sum(1 for row in rows if row.split(",")[patient_column] == first)
    # Its own bad row, the orphan's and the unreadable line; not the second patient's bad date.
    assert len(rejected) == 3
    own = [json.loads(line) for line in (quarantine / "synthea_conditions.pa.rejected.jsonl").read_text().splitlines()]
    shared = [json.loads(line) for line in (quarantine / "synthea_conditions.rejected.jsonl").read_text().splitlines()]
    assert [r["patient_id"] for r in own] == [first]
    assert sorted(str(r["patient_id"]) for r in shared) == ["None", "orphan"]


def test_the_byte_level_skip_of_other_patients_csv_lines_changes_nothing(shared_data, tmp_path, monkeypatch):
    """Other patients' plain lines are dropped from their bytes; every line the fast check cannot tell (quotes, a bare
    carriage return, NUL, invalid UTF-8, a wrong field count, a blank id) must come out as the full path makes it."""
    from radplan.ehr import extracts
    from radplan.ehr.extracts import PatientScope

    source = shared_data / "ehr" / "synthea_csv" / "conditions.csv"
    header, *rows = source.read_text().splitlines()
    column = header.split(",").index("PATIENT")
    patients = sorted({row.split(",")[column] for row in rows})
    me, other = patients[:2]

    def line(patient: str, first: str | None = None) -> bytes:
        fields = rows[0].split(",")
        fields[column] = patient
        if first is not None:
            fields[0] = first
        return ",".join(fields).encode()

    odd = [line(other, '"2020-01-01"'), line(other) + b"\r", line(other, "2020\x0001-01"), line(other, "2023-13-45"),
           line(other).replace(b"2", b"\xff", 1), line(f"  {other}  "), line(other) + b",extra", line(""), line(" "),
           line(me, "2023-13-45"), line(me).replace(b"2", b"\xff", 1), line("orphan"), b"a,b"]
    data = b"\n".join([header.encode(), *(r.encode() for r in rows), *odd]) + b"\r\n"
    outputs = []
    for fast in (True, False):
        folder, quarantine = tmp_path / f"csv-{fast}", tmp_path / f"q-{fast}"
        folder.mkdir()
        (folder / "conditions.csv").write_bytes(data)
        if not fast:
            monkeypatch.setattr(extracts, "_plain_field", lambda *args: None)
        tables, rejected = read_synthea_csv(folder, quarantine_dir=quarantine, scope=PatientScope(frozenset({me}), "pa", frozenset(patients) - {me}))
        files = {p.name: p.read_text() for p in sorted(quarantine.glob("*.rejected.jsonl"))}
        outputs.append((tables, rejected, files))
    (fast_tables, fast_rejected, fast_files), (slow_tables, slow_rejected, slow_files) = outputs
    assert set(fast_tables) == set(slow_tables)
    for name in fast_tables:
        pd.testing.assert_frame_equal(fast_tables[name], slow_tables[name])
    assert fast_rejected == slow_rejected and fast_files == slow_files
    assert len(fast_rejected) >= 4 and set(fast_tables["conditions"]["PATIENT"]) == {me}


def test_a_corrected_extract_clears_the_quarantine_files_its_read_answers_for(shared_data, tmp_path):
    from radplan.ehr.deid import quarantined_rows_table
    from radplan.ehr.extracts import PatientScope
    from radplan.pseudonym import Pseudonymizer

    source = shared_data / "ehr" / "synthea_csv" / "conditions.csv"
    header, *rows = source.read_text().splitlines()
    patient_column = header.split(",").index("PATIENT")
    first, second = sorted({row.split(",")[patient_column] for row in rows})[:2]

    def bad_date(patient: str) -> str:
        fields = rows[0].split(",")
        fields[0], fields[patient_column] = "2023-13-45", patient
        return ",".join(fields)

    folder, quarantine = tmp_path / "csv", tmp_path / "q"
    folder.mkdir()
    extract = folder / "conditions.csv"
    scopes = {"pa": PatientScope(frozenset({first}), "pa", frozenset({second})), "pb": PatientScope(frozenset({second}), "pb", frozenset({first}))}
    extract.write_text("\n".join([header, *rows, bad_date(first), bad_date(second), "a,b"]) + "\n")
    for scope in scopes.values():
        read_synthea_csv(folder, quarantine_dir=quarantine, scope=scope)
    files = lambda: sorted(p.name for p in quarantine.glob("*.rejected.jsonl"))  # noqa: E731
    assert files() == ["synthea_conditions.pa.rejected.jsonl", "synthea_conditions.pb.rejected.jsonl", "synthea_conditions.rejected.jsonl"]
    pseudonymizer = Pseudonymizer(b"k" * 32)
    assert len(quarantined_rows_table(quarantine, pseudonymizer)) == 3
    # The hospital corrects the first patient's row and removes the unreadable line; the second patient's stays bad.
    extract.write_text("\n".join([header, *rows, bad_date(second)]) + "\n")
    _, rejected = read_synthea_csv(folder, quarantine_dir=quarantine, scope=scopes["pa"])
    assert rejected == []
    # The first patient's run answers for its own file and the shared one: both gone; the second's waits for its run.
    assert files() == ["synthea_conditions.pb.rejected.jsonl"]
    assert len(quarantined_rows_table(quarantine, pseudonymizer)) == 1
    extract.write_text("\n".join([header, *rows]) + "\n")
    read_synthea_csv(folder, quarantine_dir=quarantine)  # a whole read answers for the shared file only
    assert files() == ["synthea_conditions.pb.rejected.jsonl"]
    read_synthea_csv(folder, quarantine_dir=quarantine, scope=scopes["pb"])
    assert files() == []


def test_patient_scope_refuses_a_label_that_is_not_a_pseudonym_file_name():
    from radplan.ehr.extracts import PatientScope

    with pytest.raises(ValueError, match="label"):
        PatientScope(frozenset({"a"}), "../a")
    with pytest.raises(ValueError, match="overlap"):
        PatientScope(frozenset({"a"}), "pa", frozenset({"a"}))
