"""Property-based fuzzing (hypothesis) of the input parsers: DICOM de-identification, VCF, EHR CSV and FHIR NDJSON.

Each property feeds generated or mutated input, built from real sample files, to the parser and accepts
exactly two outcomes: the parser's documented clean error (a RadplanInputError subclass), or output that
agrees with the input (no original identifier left after de-identification; variant rows that are the
input's records; EHR rows and rejected lines that add up to the input's lines). Anything else (another
exception type, wrong output) is a bug.

Examples per property: ``RADPLAN_FUZZ_EXAMPLES`` (default 40; the whole file then runs in about a minute).
A longer session: ``RADPLAN_FUZZ_EXAMPLES=400 pytest tests/reliability/test_parser_properties.py``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from radplan.ehr.extracts import fhir_to_tables, read_fhir_ndjson, read_synthea_csv
from radplan.errors import InvalidDicomError, InvalidEhrRecordError, InvalidVcfError
from radplan.genomics.vcf import vcf_to_parquet
from radplan.imaging.deid import DeidOptions, deidentify_file
from radplan.imaging.series import read_instance_header, validate_instance
from radplan.pseudonym import DEMO_KEY, Pseudonymizer
from radplan.synth.vcf import BGZF_EOF, bgzf_blocks

EXAMPLES = int(os.environ.get("RADPLAN_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHARED = Path(os.environ.get("RADPLAN_SHARED_DATA", "/work/shared/data"))
PSEUDONYMIZER = Pseudonymizer(DEMO_KEY)
FLAG_POLICY = DeidOptions(burned_in_policy="flag")  # burned-in risk is a policy decision, not what is fuzzed here

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="shared sample data not found")


def _mutate_bytes(data: bytes, draw) -> bytes:
    """Apply a few byte-level mutations: flips, insertions, deletions, truncation, duplication of a span."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        else:
            span = bytes(data[at : at + draw(st.integers(1, 64))])
            data[at:at] = span
    return bytes(data)


# ------------------------------------------------------------------------------------------------ DICOM

# Identifying values are drawn long enough and from letters/digits so that finding one in the output
# can only mean it was copied there, not that it occurs by chance.
_NAME_PART = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll")), min_size=6, max_size=12)
# IDs start with a letter: an all-digit ID could equal a code value the de-identifier itself writes
# (CID 7050 "113100"), which would be a collision, not a leak.
_ID = st.tuples(st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ"),
                st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=5, max_size=15)).map("".join)
_UID = st.lists(st.integers(1, 10**9), min_size=3, max_size=8).map(lambda parts: "1.3.6.1.4.1.99999." + ".".join(map(str, parts)))
_BIRTH_DATE = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1960, 12, 31))
_STUDY_DATE = st.dates(min_value=dt.date(1995, 1, 1), max_value=dt.date(2030, 12, 31))


@st.composite
def identified_datasets(draw) -> tuple[Dataset, set[str], set[str]]:
    """(dataset, identifying strings, original UIDs) of a CT header with PHI in many places, some nested."""
    family, given, physician = draw(_NAME_PART), draw(_NAME_PART), draw(_NAME_PART)
    patient_id, accession, other_id = draw(_ID), draw(_ID), draw(_ID)
    birth = draw(_BIRTH_DATE).strftime("%Y%m%d")
    uids = {name: draw(_UID) for name in ("study", "series", "sop", "frame", "referenced")}
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality = "CT"
    ds.PatientName = f"{family}^{given}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = f"{physician}^{draw(_NAME_PART)}"
    ds.StudyDate = draw(_STUDY_DATE).strftime("%Y%m%d")
    ds.InstitutionName = draw(_NAME_PART)
    # Free text that quotes identifiers: descriptions, comments, a protocol name.
    quoted = draw(st.sampled_from([family, patient_id, accession, given]))
    ds.StudyDescription = f"CT chest {quoted}"
    ds.SeriesDescription = draw(st.text(max_size=30)).replace("\\", "")
    ds.ImageComments = f"{draw(st.text(max_size=20))} {quoted}".replace("\\", "")
    other = Dataset()
    other.PatientID = other_id
    other.IssuerOfPatientID = draw(_NAME_PART)
    ds.OtherPatientIDsSequence = Sequence([other])
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = CTImageStorage
    referenced.ReferencedSOPInstanceUID = uids["referenced"]
    nested = Dataset()
    nested.CodeMeaning = f"reviewed by {physician}"
    nested.CodeValue = "121000"
    referenced.ConceptNameCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([referenced])
    for offset, value in enumerate(draw(st.lists(st.text(max_size=24), max_size=3))):
        ds.add_new(0x00091010 + offset, "LO", value.replace("\\", ""))  # private tags: always removed
    ds.PatientSex = draw(st.sampled_from(["F", "M", "O", ""]))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    identifying = {family, given, physician, patient_id, accession, other_id, birth, str(ds.InstitutionName)}
    return ds, identifying, set(uids.values())


# What the de-identifier writes itself (method, codes, flags): its words ("MODIFIED", "Option") are not input.
_WRITTEN_BY_DEIDENTIFIER = {0x00120062, 0x00120063, 0x00120064, 0x00280303}


def _carried_text(ds: Dataset) -> str:
    """Every value carried over from the input, nested sequences and file meta included, as text."""
    parts = []

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.tag in _WRITTEN_BY_DEIDENTIFIER:
                continue
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.value is not None:
                parts.append(str(elem.value))

    walk(ds.file_meta)
    walk(ds)
    return "\n".join(parts)


def _contains_token(text: str, value: str) -> bool:
    """``value`` as a whole token (not inside a longer word or number), ignoring case like the de-identifier."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


@FUZZ
@given(identified_datasets())
def test_deidentified_dicom_keeps_no_identifier(case):
    ds, identifying, original_uids = case
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.dcm"
        source.write_bytes(buffer.getvalue())
        try:
            result = deidentify_file(source, Path(tmp) / "out", PSEUDONYMIZER, FLAG_POLICY)
        except InvalidDicomError:
            event("clean error")
            return
        event("de-identified")
        output = pydicom.dcmread(result.output_path)
    text = _carried_text(output)
    for value in identifying | original_uids:
        assert not _contains_token(text, value), f"{value!r} survived de-identification"
    assert output.PatientID == result.patient_key == PSEUDONYMIZER.patient_key(ds.PatientID)
    assert not any(elem.tag.is_private for elem in output.iterall())


@pytest.mark.parametrize("cut_at", [152, 140, 131])
def test_a_file_cut_inside_its_meta_header_is_a_clean_error(cut_at, tmp_path):
    # Found by the property test below in a fresh clone: pydicom's struct.error escaped read_instance_header.
    source = tmp_path / "in.dcm"
    source.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:cut_at])
    with pytest.raises(InvalidDicomError, match="in.dcm"):
        read_instance_header(source)


@FUZZ
@given(st.data())
def test_dicom_ingest_and_deidentifier_on_mutated_real_files_fail_cleanly(data):
    name = data.draw(st.sampled_from(["CT_small.dcm", "MR_small.dcm", "rtstruct.dcm"]))
    mutated = _mutate_bytes(Path(get_testdata_file(name)).read_bytes(), data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.dcm"
        source.write_bytes(mutated)
        for ingest_check in (read_instance_header, validate_instance):  # what PACS scan and ingest run first
            try:
                ingest_check(source)
            except InvalidDicomError:
                pass
        try:
            deidentify_file(source, Path(tmp) / "out", PSEUDONYMIZER, FLAG_POLICY)
            event("de-identified")
        except InvalidDicomError:
            event("clean error")


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_deidentifier_on_random_bytes_fails_cleanly(payload, with_preamble):
    data = (b"\0" * 128 + b"DICM" + payload) if with_preamble else payload
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.dcm"
        source.write_bytes(data)
        try:
            deidentify_file(source, Path(tmp) / "out", PSEUDONYMIZER, FLAG_POLICY)
            event("de-identified")
        except InvalidDicomError:
            event("clean error")


# ------------------------------------------------------------------------------------------------ VCF

def _small_vcf() -> str:
    """PharmCAT's example VCF: its header and the first 40 records (single sample, GT only)."""
    lines = (SHARED / "genomics" / "pgx" / "pharmcat.example.vcf").read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    records = [line for line in lines if not line.startswith("#")][:40]
    return "".join(header + records)


def _multi_sample_vcf() -> str:
    """vcf2maf's tumour/normal VCF (AD/DP, multi-allelic sites): header and the first 40 records."""
    lines = (SHARED / "genomics" / "vcf" / "vcf2maf_test.vcf").read_text().splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    records = [line for line in lines if not line.startswith("#")][:40]
    return "".join(header + records)


VCF_SOURCES = {"pharmcat": _small_vcf, "vcf2maf": _multi_sample_vcf}
_FIELD_VALUES = st.one_of(
    st.sampled_from([".", "", "0/1", "1/2", "0|7", "./.", "-1", "A", "N", "<DEL>", "*", "chr1", "1e9", "NaN", "0/1:10,5:15", "\\"]),
    st.text(alphabet=st.characters(blacklist_characters="\t\n\r\x00"), max_size=12),
)


@st.composite
def mutated_vcf_text(draw) -> str:
    text = VCF_SOURCES[draw(st.sampled_from(sorted(VCF_SOURCES)))]()
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["field", "field", "delete", "duplicate", "swap", "insert"]))
        if kind == "field":
            fields = lines[at].rstrip("\n").split("\t")
            column = draw(st.integers(0, len(fields) - 1))
            fields[column] = draw(_FIELD_VALUES)
            lines[at] = "\t".join(fields) + "\n"
        elif kind == "delete" and len(lines) > 1:
            del lines[at]
        elif kind == "duplicate":
            lines.insert(at, lines[at])
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == "insert":
            lines.insert(at, draw(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=40)) + "\n")
    text = "".join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _input_records(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.split("\n") if line and not line.startswith("#")]


@FUZZ
@given(mutated_vcf_text())
def test_vcf_parser_on_mutated_text_fails_cleanly_or_agrees(text):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.vcf"
        source.write_bytes(text.encode("utf-8", "surrogatepass"))  # a lone surrogate becomes invalid UTF-8 bytes
        try:
            summary = vcf_to_parquet(source, Path(tmp) / "out.parquet")
        except InvalidVcfError:
            event("clean error")
            return
        event("parsed")
        rows = pd_read(Path(tmp) / "out.parquet")
    records = _input_records(text)
    assert summary["records"] == len(records)
    alleles: dict[tuple, set] = {}
    for r in records:
        if len(r) > 4:
            alleles.setdefault((r[0], r[1], r[3]), set()).update(r[4].split(","))
    for chrom, pos, ref, alt in zip(rows["chrom"], rows["pos"], rows["ref"], rows["alt"]):
        assert alt in alleles.get((chrom, str(pos), ref), set()), (chrom, pos, ref, alt)


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


@FUZZ
@given(st.data())
def test_bgzipped_vcf_cut_or_corrupted_fails_cleanly_or_agrees(data):
    text = _small_vcf()
    header_end = text.index("#CHROM")
    header_end = text.index("\n", header_end) + 1
    body = text[header_end:].encode()
    # Several small data blocks, so a cut or a flipped byte can land in any of them.
    blocks = bgzf_blocks(text[:header_end].encode()) + b"".join(bgzf_blocks(body[i : i + 700]) for i in range(0, len(body), 700))
    whole = blocks + BGZF_EOF
    if data.draw(st.booleans()):
        broken = whole[: data.draw(st.integers(1, len(whole) - 1))]
    else:
        broken = _mutate_bytes(whole, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.vcf.gz"
        source.write_bytes(broken)
        try:
            vcf_to_parquet(source, Path(tmp) / "out.parquet")
        except InvalidVcfError:
            event("clean error")
            return
        event("parsed")
        rows = pd_read(Path(tmp) / "out.parquet")
    records = {(r[0], r[1], r[3], r[4]) for r in _input_records(text)}
    for chrom, pos, ref, alt in zip(rows["chrom"], rows["pos"], rows["ref"], rows["alt"]):
        assert (chrom, str(pos), ref, alt) in records


# ------------------------------------------------------------------------------------------------ EHR

def _synthea_lines(table: str, count: int) -> list[str]:
    with open(SHARED / "ehr" / "synthea_csv" / f"{table}.csv", encoding="utf-8") as handle:
        return [next(handle) for _ in range(count + 1)]


_CSV_NOISE = st.one_of(
    st.sampled_from([",", '"', "\r", "é", "\ufeff", "2020-13-45", "NaN", "", "\x00"]),
    st.text(max_size=10),
)


@st.composite
def mutated_csv(draw) -> tuple[str, bytes]:
    table = draw(st.sampled_from(["conditions", "observations", "patients"]))
    lines = _synthea_lines(table, 12)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["field", "field", "noise", "delete", "duplicate"]))
        if kind == "field":
            fields = lines[at].rstrip("\n").split(",")
            fields[draw(st.integers(0, len(fields) - 1))] = draw(_CSV_NOISE)
            lines[at] = ",".join(fields) + "\n"
        elif kind == "noise":
            position = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:position] + draw(_CSV_NOISE) + lines[at][position:]
        elif kind == "delete" and len(lines) > 1:
            del lines[at]
        elif kind == "duplicate":
            lines.insert(at, lines[at])
    data = "".join(lines).encode(draw(st.sampled_from(["utf-8", "latin-1"])), errors="replace")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return table, data


@FUZZ
@given(mutated_csv())
# Found by this property: a bare carriage return made the csv module raise _csv.Error (a crash, not a quarantine).
@example(("conditions", b"START,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION\n\r,2023-02-09,p,e,1,x\n2023-01-01,,p,e,1,x\n"))
@example(("conditions", b"\r,STOP,PATIENT,ENCOUNTER,CODE,DESCRIPTION\n2023-01-01,,p,e,1,x\n"))
def test_csv_reader_keeps_or_rejects_every_line(case):
    table, data = case
    with tempfile.TemporaryDirectory() as tmp:
        folder, quarantine = Path(tmp) / "csv", Path(tmp) / "quarantine"
        folder.mkdir()
        (folder / f"{table}.csv").write_bytes(data)
        try:
            tables, quarantined = read_synthea_csv(folder, quarantine_dir=quarantine)
        except InvalidEhrRecordError:
            pytest.fail("with a quarantine folder a bad file is quarantined, not raised")
        file_level = [q for q in quarantined if q["line"] is None]
        event(f"file quarantined: {bool(file_level)}; lines rejected: {bool(len(quarantined) - len(file_level))}")
        if file_level:
            assert list(quarantine.rglob("reason.json")), "a refused file must be kept with its reason"
            return
    data_lines = [line for line in data.split(b"\n")[1:] if line.strip()]
    kept = len(tables.get(table, []))
    assert kept + len(quarantined) == len(data_lines)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _mutate_json(value, draw, depth: int = 0):
    """Replace, drop or retype one member somewhere in a JSON value."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        choice = draw(st.sampled_from(["replace", "drop", "descend"] if depth < 4 else ["replace", "drop"]))
        value = dict(value)
        if choice == "drop":
            del value[key]
        elif choice == "replace":
            value[key] = draw(_JSON)
        else:
            value[key] = _mutate_json(value[key], draw, depth + 1)
        return value
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        value = list(value)
        value[index] = _mutate_json(value[index], draw, depth + 1)
        return value
    return draw(_JSON)


FHIR_SOURCES = ("Patient", "Condition", "MedicationRequest", "DocumentReference")


@st.composite
def mutated_ndjson(draw) -> tuple[str, bytes]:
    resource_type = draw(st.sampled_from(FHIR_SOURCES))
    lines = (SHARED / "ehr" / "synthea_fhir_bulk" / f"{resource_type}.ndjson").read_text().splitlines()[:4]
    out = []
    for line in lines:
        kind = draw(st.sampled_from(["keep", "json", "json", "cut", "bytes"]))
        if kind == "json":
            line = json.dumps(_mutate_json(json.loads(line), draw))
        elif kind == "cut":
            line = line[: draw(st.integers(0, len(line)))]
        out.append(line.encode())
        if kind == "bytes":
            out[-1] = _mutate_bytes(out[-1], draw).replace(b"\n", b" ")
    return resource_type, b"\n".join(out) + b"\n"


@FUZZ
@given(mutated_ndjson())
def test_fhir_reader_keeps_or_rejects_every_line_and_tables_build(case):
    resource_type, data = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / f"{resource_type}.ndjson").write_bytes(data)
        resources, quarantined = read_fhir_ndjson(folder, quarantine_dir=folder / "quarantine")
    lines = [line for line in data.split(b"\n") if line.strip()]
    event(f"lines rejected: {len(quarantined)}/{len(lines)}")
    assert len(resources.get(resource_type, [])) + len(quarantined) == len(lines)
    assert all(resource.id for resource in resources.get(resource_type, []))
    fhir_to_tables(resources)  # every validated resource must also convert to rows


# ------------------------------------------------------------------------------------------------ regressions

def test_found_by_fuzzing_gzip_magic_alone_is_a_clean_vcf_error(tmp_path):
    source = tmp_path / "cut.vcf.gz"
    source.write_bytes(b"\x1f\x8b")  # a bgzipped VCF cut after two bytes (was an IndexError)
    with pytest.raises(InvalidVcfError, match="truncated gzip header"):
        vcf_to_parquet(source, tmp_path / "out.parquet")


def test_found_by_fuzzing_blank_line_is_not_a_record(tmp_path):
    text = _small_vcf()
    header_end = text.index("\n", text.index("#CHROM")) + 1
    source = tmp_path / "blank.vcf"
    source.write_text(text[:header_end] + "\n" + text[header_end:])  # htslib returns an empty record for it
    summary = vcf_to_parquet(source, tmp_path / "out.parquet")
    assert (summary["records"], summary["blank_lines"], summary["records_without_alt"]) == (40, 1, 0)


def test_found_by_fuzzing_fhir_dates_outside_datetime64_become_unknown(tmp_path):
    note = json.loads((SHARED / "ehr" / "synthea_fhir_bulk" / "DocumentReference.ndjson").read_text().splitlines()[0])
    note["date"] = "0001-01-01T00:00:00Z"  # valid FHIR instant; pandas' datetime64[ns] ends at 1677 (was OutOfBoundsDatetime)
    (tmp_path / "DocumentReference.ndjson").write_text(json.dumps(note) + "\n")
    resources, quarantined = read_fhir_ndjson(tmp_path)
    notes = fhir_to_tables(resources)["notes"]
    assert quarantined == [] and len(notes) == 1 and notes["date"].isna().all()


def test_found_by_fuzzing_header_lines_among_records_are_malformed(tmp_path):
    text = _small_vcf()
    source = tmp_path / "concatenated.vcf"
    source.write_text(text + text)  # `cat a.vcf b.vcf`: htslib reads the second header's lines as records
    with pytest.raises(InvalidVcfError, match="header line after record 40"):
        vcf_to_parquet(source, tmp_path / "out.parquet")


def test_found_by_fuzzing_empty_sample_column_is_a_quarantined_record_not_a_segfault(tmp_path):
    lines = _multi_sample_vcf().splitlines(keepends=True)
    first_record = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    fields = lines[first_record].rstrip("\n").split("\t")
    fields[9] = ""  # the tumour column: htslib via cyvcf2 dereferenced a bad record (SIGSEGV killed the run)
    lines[first_record] = "\t".join(fields) + "\n"
    source = tmp_path / "empty_sample.vcf"
    source.write_text("".join(lines))
    # In a child process: if this regresses, the crash must fail this test, not kill the test session.
    probe = (f"import json\nfrom pathlib import Path\nfrom radplan.genomics.vcf import vcf_to_parquet\n"
             f"print(json.dumps(vcf_to_parquet(Path({str(source)!r}), Path({str(tmp_path / 'out.parquet')!r}))))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["records"] == len(lines) - first_record and summary["quarantined_records"] == 1
    assert summary["quarantine"][0]["line"] == first_record + 1
    assert "empty sample column 1 field" in summary["quarantine"][0]["reason"]


# Values that are not valid for the FORMAT key or INFO they replace (VCF 4.3 spec, sections 1.6.1-1.6.2).
_INVALID_FORMAT_VALUES = {
    "GT": ["0/X", "1//1", "/", "0/1/", "a", "-1/0", "0\\1", "9/9", "0/1 ", "|", "0/1:"],
    "AD": ["1,x", "a", "1,,2", "--1", "1.5,2", ",", "1e3,2"],
    "DP": ["x", "1.5", "1e3", "-", "12a", "99999999999999999999"],
}
_INVALID_INFO_VALUES = ["A B", "=1", "X=1;=2", "DP=abc", "CSQ=||||", "DP=1;;", ";", "AF=NaN,x", "\\"]


@st.composite
def vcf_with_invalid_values(draw) -> tuple[str, dict[int, str]]:
    """vcf2maf's tumour/normal VCF with invalid GT/AD/DP/INFO values planted in a few records.

    Returns the text and {1-based line number: 'FORMAT' | 'INFO'} for each record changed.
    """
    lines = _multi_sample_vcf().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    planted: dict[int, str] = {}
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(first, len(lines) - 1))
        fields = lines[at].rstrip("\n").split("\t")
        if draw(st.booleans()):
            keys = fields[8].split(":")
            key = draw(st.sampled_from([k for k in _INVALID_FORMAT_VALUES if k in keys]))
            column = draw(st.sampled_from([9, 10]))
            values = fields[column].split(":")
            values[keys.index(key)] = draw(st.sampled_from(_INVALID_FORMAT_VALUES[key]))
            fields[column] = ":".join(values)
            planted[at + 1] = "FORMAT"
        else:
            fields[7] = draw(st.sampled_from(_INVALID_INFO_VALUES))
            planted.setdefault(at + 1, "INFO")
        lines[at] = "\t".join(fields) + "\n"
    return "".join(lines), planted


@FUZZ
@given(vcf_with_invalid_values())
def test_vcf_invalid_genotype_info_and_format_values_quarantine_the_record_and_keep_the_rest(case):
    text, planted = case
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.vcf"
        source.write_text(text)
        records = []  # the header is intact: never a file error
        summary = vcf_to_parquet(source, Path(tmp) / "out.parquet", on_quarantine=records.append)
        rows = pd_read(Path(tmp) / "out.parquet")
    quarantined = {q.line: q.as_dict() for q in records}
    assert [{k: v for k, v in q.items() if k != "file"} for q in quarantined.values()] == summary["quarantine"]
    event(f"quarantined {len(quarantined)} of {len(planted)} planted")
    for line, where in planted.items():
        if where == "FORMAT":  # an invalid GT/AD/DP is never read as data
            assert line in quarantined, (line, text.splitlines()[line - 1])
        if line in quarantined:
            assert quarantined[line]["file"] == "in.vcf" and quarantined[line]["reason"]
    assert set(quarantined) <= set(planted)  # no unchanged record is lost
    records = text.splitlines()
    kept = [records[i].split("\t") for i in range(len(records)) if not records[i].startswith("#") and i + 1 not in quarantined]
    assert summary["records"] == len(_input_records(text)) and summary["quarantined_records"] == len(quarantined)
    assert len(rows) == 2 * sum(len(r[4].split(",")) for r in kept)


def test_found_by_fuzzing_empty_element_with_unknown_vr_is_a_clean_dicom_error(tmp_path):
    # An empty element whose VR bytes are not a VR: pydicom converts it on first access and raised
    # NotImplementedError out of the de-identifier (a crash, not a quarantine).
    unknown_vr_element = struct.pack("<HH", 0x7FE1, 0x0010) + b"S\x02" + struct.pack("<H", 0)
    source = tmp_path / "in.dcm"
    source.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes() + unknown_vr_element)
    with pytest.raises(InvalidDicomError, match="malformed element"):
        deidentify_file(source, tmp_path / "out", PSEUDONYMIZER, FLAG_POLICY)


@pytest.mark.parametrize("check", ["read_instance_header", "validate_instance", "deidentify_file"])
def test_found_by_fuzzing_file_cut_inside_file_meta_is_a_clean_dicom_error(tmp_path, check):
    source = tmp_path / "cut.dcm"
    source.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:141])  # pydicom: BytesLengthException
    with pytest.raises(InvalidDicomError):
        if check == "deidentify_file":
            deidentify_file(source, tmp_path / "out", PSEUDONYMIZER, FLAG_POLICY)
        else:
            {"read_instance_header": read_instance_header, "validate_instance": validate_instance}[check](source)


def test_found_by_fuzzing_observations_without_value_column_do_not_crash(tmp_path):
    lines = _synthea_lines("observations", 3)
    lines[0] = lines[0].replace(",VALUE,", ",RESULT,")  # was a KeyError in the numeric-VALUE check
    (tmp_path / "observations.csv").write_text("".join(lines))
    tables, quarantined = read_synthea_csv(tmp_path)
    assert len(tables["observations"]) == 3 and quarantined == []


@pytest.mark.parametrize("data", ["not base64 at all!", "xMQ="])  # the second is base64 of bytes that are not UTF-8
def test_found_by_fuzzing_note_attachment_that_does_not_decode_is_a_rejected_line(tmp_path, data):
    note = json.loads((SHARED / "ehr" / "synthea_fhir_bulk" / "DocumentReference.ndjson").read_text().splitlines()[0])
    note["content"][0]["attachment"]["data"] = data  # was binascii.Error / UnicodeDecodeError in fhir_to_tables
    (tmp_path / "DocumentReference.ndjson").write_text(json.dumps(note) + "\n")
    resources, quarantined = read_fhir_ndjson(tmp_path)
    assert resources["DocumentReference"] == [] and [q["line"] for q in quarantined] == [1]
    assert "attachment" in quarantined[0]["reason"]
