"""Build the bad-input corpus (``tests/corpus/landing/``) and its ``MANIFEST.json`` from real sample files.

Run once, commit the output; the tests read the committed files and never call this script.

    .venv/bin/python tests/corpus/build_corpus.py [--shared-data /work/shared/data]

Every case starts from a real file (pydicom's CT_small test file, the IBSI STS_002 CT series, the dcmqi
liver SEG, PharmCAT's example VCF, samtools' mpileup BAM, Synthea CSV/FHIR records) and is broken the way
such files arrive broken in practice: cut short, mislabelled, re-encoded, edited. Files that belong to a
patient carry the corpus patient id ``RPCORPUS1``, who also gets a few good files ("controls"), so a test
can tell a per-file quarantine from a whole-patient failure. The output is deterministic (fixed UIDs, no
timestamps), so re-running the script reproduces the committed bytes.

MANIFEST.json lists one entry per case: ``id``, ``format``, ``files`` (relative to ``tests/corpus``; the
landing path is the same with ``landing/`` as the landing zone), ``expect`` (``quarantine`` or ``keep``),
``level`` (``file``: the file itself is quarantined with a reason.json; ``series``: the series' folder is;
``lines``: the listed lines go to the EHR rejected-lines quarantine), the expected ``stage`` and
``error_class``, and ``why`` the input is bad.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from radplan.synth.vcf import BGZF_EOF, bgzf_blocks

CORPUS = Path(__file__).resolve().parent
LANDING = CORPUS / "landing"
PATIENT_ID = "RPCORPUS1"
CORPUS_STUDY_UID = generate_uid(entropy_srcs=["radplan-corpus", "study"])


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["radplan-corpus", *parts])


def _save(ds: pydicom.Dataset, target: Path) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return data


def _save_with_declared_syntax(ds: pydicom.Dataset, declared: str, target: Path) -> None:
    """Write ``ds`` encoded explicit VR little endian but with ``declared`` as its file-meta transfer syntax.

    pydicom refuses to write native pixels under a compressed syntax, so meta and body are written apart.
    """
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = declared
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(out.getvalue() + body.getvalue())


def _as_corpus_instance(ds: pydicom.Dataset, series: str, number: int, study_uid: str = CORPUS_STUDY_UID) -> pydicom.Dataset:
    """The instance re-homed to the corpus patient and study, with deterministic series/SOP UIDs."""
    ds = copy.deepcopy(ds)
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(series)
    ds.SOPInstanceUID = _uid(series, str(number))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    return ds


def _ct_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def build_dicom(shared: Path) -> list[dict]:
    out = LANDING / "dicom" / "corpus"
    cases = []

    def case(case_id, files, stage, error_class, why, level="file", expect="quarantine"):
        cases.append({"id": case_id, "format": "dicom", "files": [str(f.relative_to(CORPUS)) for f in files], "expect": expect,
                      "level": level, "stage": stage, "error_class": error_class, "why": why})

    not_dicom = out / "not_dicom.dcm"
    not_dicom.parent.mkdir(parents=True, exist_ok=True)
    not_dicom.write_bytes((shared / "imaging" / "dcmqi_ct_liver_seg" / "liver_seg.nrrd").read_bytes()[:2048])
    case("dicom-not-dicom", [not_dicom], "pacs-scan", "InvalidDicomError",
         "an NRRD label map saved with a .dcm name: no preamble, no DICM prefix")

    full = _save(_as_corpus_instance(_ct_small(), "truncated-header", 1), out / "truncated_header.dcm")
    (out / "truncated_header.dcm").write_bytes(full[:400])
    case("dicom-truncated-header", [out / "truncated_header.dcm"], "pacs-scan", "InvalidDicomError",
         "CT instance cut after 400 bytes, inside the patient/study header elements")

    full = _save(_as_corpus_instance(_ct_small(), "truncated-pixels", 1), out / "truncated_pixels.dcm")
    (out / "truncated_pixels.dcm").write_bytes(full[: int(len(full) * 0.6)])
    case("dicom-truncated-pixels", [out / "truncated_pixels.dcm"], "pacs-ingest", "InvalidDicomError",
         "CT instance cut at 60 % of its length: header intact, pixel data incomplete")

    no_pixels = _as_corpus_instance(_ct_small(), "no-pixel-data", 1)
    del no_pixels.PixelData
    _save(no_pixels, out / "no_pixel_data.dcm")
    case("dicom-no-pixel-data", [out / "no_pixel_data.dcm"], "pacs-ingest", "InvalidDicomError",
         "CT Image Storage instance whose PixelData element was stripped")

    _save_with_declared_syntax(_as_corpus_instance(_ct_small(), "wrong-transfer-syntax", 1), JPEGBaseline8Bit,
                               out / "wrong_transfer_syntax.dcm")
    case("dicom-wrong-transfer-syntax", [out / "wrong_transfer_syntax.dcm"], "pacs-ingest", "InvalidDicomError",
         "file meta declares JPEG Baseline but the pixel data is native: no JPEG stream to decode")

    sts = sorted((shared / "imaging" / "ibsi_sts_002" / "dicom" / "CT" / "image").glob("*.dcm"))

    def series_from_sts(name: str, slice_indices: list[int]) -> list[tuple[Path, pydicom.Dataset]]:
        return [(out / name / f"{n:03d}.dcm", _as_corpus_instance(pydicom.dcmread(sts[i]), name, n))
                for n, i in enumerate(slice_indices, start=1)]

    good = series_from_sts("series_good", [10, 11, 12])
    for path, ds in good:
        _save(ds, path)
    case("dicom-control-good-series", [p for p, _ in good], None, None,
         "control: three consecutive real CT slices of the corpus patient; must become a volume", level="series", expect="keep")

    missing = series_from_sts("series_missing_slice", [20, 21, 23, 24])
    for path, ds in missing:
        _save(ds, path)
    case("dicom-series-missing-slice", [p for p, _ in missing], "volume", "InvalidDicomError",
         "four of five consecutive CT slices: the middle one never arrived (a 2x gap in slice positions)", level="series")

    tilted = series_from_sts("series_inconsistent_geometry", [30, 31, 32])
    angle = math.radians(10)
    tilted[2][1].ImageOrientationPatient = [1, 0, 0, 0, math.cos(angle), math.sin(angle)]
    for path, ds in tilted:
        _save(ds, path)
    case("dicom-series-inconsistent-geometry", [p for p, _ in tilted], "volume", "InvalidDicomError",
         "three CT slices of one series, the last with its orientation tilted by 10 degrees", level="series")

    seg = pydicom.dcmread(shared / "imaging" / "dcmqi_ct_liver_seg" / "liver_seg.dcm")
    seg.PatientID = PATIENT_ID
    _save(seg, out / "seg_missing_reference.dcm")
    case("dicom-seg-missing-series", [out / "seg_missing_reference.dcm"], "lesion-mask", "InvalidDicomError",
         "a DICOM SEG whose referenced CT series was never delivered")

    uneven = series_from_sts("series_uneven_spacing", [40, 41, 42, 43])
    moved = uneven[2][1]
    moved.ImagePositionPatient = [*moved.ImagePositionPatient[:2], float(moved.ImagePositionPatient[2]) + 1.0]
    for path, ds in uneven:
        _save(ds, path)
    case("dicom-series-uneven-spacing", [p for p, _ in uneven], "volume", "InvalidDicomError",
         "four consecutive CT slices, the third moved 1 mm along the normal: steps of 3.27, 4.27 and 2.27 mm", level="series")

    good_sources = [ds for _, ds in good]
    other_frame = _seg_on(good_sources, "seg-other-frame-of-reference")
    other_frame.FrameOfReferenceUID = _uid("another-frame-of-reference")
    _save(other_frame, out / "seg_other_frame_of_reference.dcm")
    case("dicom-seg-other-frame-of-reference", [out / "seg_other_frame_of_reference.dcm"], "lesion-mask", "InvalidDicomError",
         "a highdicom SEG of the good series whose FrameOfReferenceUID was changed: its positions mean nothing on that series")

    no_frames = _seg_on(good_sources, "seg-no-frames")
    del no_frames.PixelData
    no_frames.NumberOfFrames = 0
    no_frames.PerFrameFunctionalGroupsSequence = []
    _save(no_frames, out / "seg_no_frames.dcm")
    case("dicom-seg-no-frames", [out / "seg_no_frames.dcm"], SEG_NO_FRAMES_STAGE, "InvalidDicomError",
         "a highdicom SEG of the good series with its frames (pixel data and per-frame groups) removed")
    return cases


SEG_NO_FRAMES_STAGE = "pacs-ingest"  # a Segmentation instance without pixel data fails the full instance check


def _seg_on(sources: list[pydicom.Dataset], name: str) -> pydicom.Dataset:
    """A BINARY SEG written by highdicom on ``sources`` (a box in the middle slice), UIDs and dates fixed."""
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    pixels = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns), 1), dtype=np.uint8)
    pixels[len(sources) // 2, 60:80, 60:80, 0] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=[description],
        series_instance_uid=_uid(name), series_number=90, sop_instance_uid=_uid(name, "1"), instance_number=1,
        manufacturer="radplan-corpus", manufacturer_model_name="corpus", software_versions="1", device_serial_number="1",
    )
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in seg:
            setattr(seg, keyword, "20000101")
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, "000000")
    for element in seg.iterall():  # highdicom stamps these with the time and a random UID
        if element.keyword == "ContributionDateTime":
            element.value = "20000101000000"
        elif element.keyword == "DimensionOrganizationUID":
            element.value = _uid(name, "dimension-organization")
    return seg


def _sample_renamed_vcf(shared: Path) -> str:
    text = (shared / "genomics" / "pgx" / "pharmcat.example.vcf").read_text()
    return text.replace("\tSample_1\n", f"\t{PATIENT_ID}\n")


def _edit_record(vcf: str, record_number: int, column: int, value: str) -> str:
    lines = vcf.splitlines(keepends=True)
    seen = 0
    for index, line in enumerate(lines):
        if line.startswith("#"):
            continue
        seen += 1
        if seen == record_number:
            fields = line.rstrip("\n").split("\t")
            fields[column] = value
            lines[index] = "\t".join(fields) + "\n"
            break
    return "".join(lines)


def build_genomics(shared: Path) -> list[dict]:
    out = LANDING / "genomics" / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    cases = []

    def case(case_id, fmt, path, stage, error_class, why, expect="quarantine", lines=None):
        entry = {"id": case_id, "format": fmt, "files": [str(path.relative_to(CORPUS))], "expect": expect, "level": "file",
                 "stage": stage, "error_class": error_class, "why": why}
        if lines is not None:  # record-level: these lines are quarantined, the rest of the file is kept
            entry.update(level="lines", lines=lines)
        cases.append(entry)

    vcf = _sample_renamed_vcf(shared)
    header = "".join(line for line in vcf.splitlines(keepends=True) if line.startswith("#"))
    body = vcf[len(header):]

    good = out / "pgx_good.vcf.gz"
    good.write_bytes(bgzf_blocks(header.encode()) + bgzf_blocks(body.encode()) + BGZF_EOF)
    case("vcf-control-good", "vcf", good, None, None, "control: PharmCAT's example VCF for the corpus patient; must give variants", expect="keep")

    broken_header = out / "broken_header.vcf"
    broken_header.write_text("".join(line for line in vcf.splitlines(keepends=True) if not line.startswith("#CHROM")))
    case("vcf-broken-header", "vcf", broken_header, "genomics-scan", "InvalidVcfError",
         "the #CHROM column header line is missing: samples cannot be known")

    half = len(body) // 2
    blocks = bgzf_blocks(header.encode()) + bgzf_blocks(body[:half].encode()) + bgzf_blocks(body[half:].encode())
    truncated = out / "truncated.vcf.gz"
    truncated.write_bytes(blocks[: len(blocks) - 3000])
    case("vcf-truncated-bgzip", "vcf", truncated, "vcf", "InvalidVcfError",
         "bgzipped VCF cut 3000 bytes before the end, inside the last data block (no BGZF EOF block)")

    record_5_line = header.count("\n") + 5  # malformed records are quarantined one by one; the rest is kept
    bad_gt = out / "bad_genotype.vcf"
    bad_gt.write_text(_edit_record(vcf, 5, 9, "0/X"))
    case("vcf-bad-genotype", "vcf", bad_gt, "vcf", "InvalidVcfError", "record 5 has GT 0/X: not an allele index",
         lines=[record_5_line])

    out_of_range = out / "genotype_allele_out_of_range.vcf"
    out_of_range.write_text(_edit_record(vcf, 5, 9, "0/7"))
    case("vcf-genotype-allele-out-of-range", "vcf", out_of_range, "vcf", "InvalidVcfError",
         "record 5 has one ALT but GT 0/7: allele 7 does not exist (htslib accepts it silently)", lines=[record_5_line])

    empty_field = out / "empty_info_field.vcf"
    empty_field.write_text(_edit_record(vcf, 5, 7, ""))
    case("vcf-empty-field", "vcf", empty_field, "vcf", "InvalidVcfError",
         "record 5 has an empty INFO column instead of '.' (an empty first sample column of a multi-sample VCF "
         "crashed cyvcf2/htslib with SIGSEGV)", lines=[record_5_line])

    concatenated = out / "concatenated.vcf"
    records = body.splitlines(keepends=True)
    concatenated.write_text(header + "".join(records[:600]) + header + "".join(records[600:]))
    case("vcf-concatenated", "vcf", concatenated, "vcf", "InvalidVcfError",
         "two VCFs joined with cat: the second header sits among the records (htslib reads its lines as records)")

    reads = shared / "genomics" / "reads" / "mpileup.1.bam"
    with tempfile.TemporaryDirectory() as tmp:
        header_sam = Path(tmp) / "header.sam"
        header_text = subprocess.run(["samtools", "view", "-H", str(reads)], check=True, capture_output=True, text=True).stdout
        header_sam.write_text(header_text.replace("SM:HG00100", f"SM:{PATIENT_ID}"))
        renamed = Path(tmp) / "renamed.bam"
        with open(renamed, "wb") as handle:
            subprocess.run(["samtools", "reheader", "--no-PG", str(header_sam), str(reads)], check=True, stdout=handle)
        name_sorted = out / "name_sorted_no_index.bam"
        subprocess.run(["samtools", "sort", "--no-PG", "-n", "-o", str(name_sorted), str(renamed)], check=True)
        case("bam-no-index-unsorted", "bam", name_sorted, "alignment", "InvalidAlignmentError",
             "BAM without index, name-sorted (SO:queryname): positions cannot be queried")
        data = renamed.read_bytes()
        truncated_bam = out / "truncated.bam"
        truncated_bam.write_bytes(data[: len(data) // 2])
        case("bam-truncated", "bam", truncated_bam, "genomics-scan", "InvalidAlignmentError",
             "coordinate-sorted BAM cut in half: no BGZF EOF block")
    return cases


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def build_ehr(shared: Path) -> list[dict]:
    csv_dir = LANDING / "ehr" / "csv"
    fhir_dir = LANDING / "ehr" / "fhir"
    csv_dir.mkdir(parents=True, exist_ok=True)
    fhir_dir.mkdir(parents=True, exist_ok=True)
    synthea = shared / "ehr" / "synthea_csv"
    cases = []

    with open(synthea / "patients.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        patients_header = next(reader)
        patient_row = next(reader)
    patient_row[patients_header.index("Id")] = PATIENT_ID
    bom = csv_dir / "patients.corpus-bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + _csv_text(patients_header, [patient_row]).encode("utf-8"))
    cases.append({"id": "csv-control-bom", "format": "ehr-csv", "files": [str(bom.relative_to(CORPUS))], "expect": "keep",
                  "level": "file", "stage": None, "error_class": None,
                  "why": "control: a Synthea patients row saved as UTF-8 with a byte-order mark (Excel); must be read"})

    with open(synthea / "conditions.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        conditions_header = next(reader)
        condition_rows = [next(reader) for _ in range(3)]
    for row in condition_rows:
        row[conditions_header.index("PATIENT")] = PATIENT_ID
    renamed_header = ["START", "STOP", "PATIENT_ID", "ENCOUNTER", "SNOMED_CODE", "DESCRIPTION"]
    wrong_columns = csv_dir / "conditions.corpus-wrong-columns.csv"
    wrong_columns.write_text(_csv_text(renamed_header, condition_rows))
    cases.append({"id": "csv-wrong-columns", "format": "ehr-csv", "files": [str(wrong_columns.relative_to(CORPUS))],
                  "expect": "quarantine", "level": "file", "stage": "ehr-csv", "error_class": "InvalidEhrRecordError",
                  "why": "conditions extract from another export profile: PATIENT and CODE columns renamed"})

    with open(synthea / "observations.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        observations_header = next(reader)
        observation_rows = [next(reader) for _ in range(3)]
    french = ["Taille", "Fréquence cardiaque", "Température corporelle"]
    for row, description in zip(observation_rows, french):
        row[observations_header.index("PATIENT")] = PATIENT_ID
        row[observations_header.index("DESCRIPTION")] = description
    latin1 = csv_dir / "observations.corpus-latin1.csv"
    latin1.write_bytes(_csv_text(observations_header, observation_rows).encode("latin-1"))
    cases.append({"id": "csv-latin1", "format": "ehr-csv", "files": [str(latin1.relative_to(CORPUS))],
                  "expect": "quarantine", "level": "lines", "lines": [3, 4], "stage": "ehr-csv", "error_class": "InvalidEhrRecordError",
                  "why": "observations written in Latin-1: the rows with accented descriptions are not UTF-8 (the ASCII row is kept)"})

    patient_line = (shared / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson").read_text().splitlines()[0]
    patient = json.loads(patient_line)
    without_id = {k: v for k, v in patient.items() if k != "id"}
    bad_birth_date = {**patient, "id": PATIENT_ID, "birthDate": "31/12/1970"}
    condition = json.loads((shared / "ehr" / "synthea_fhir_bulk" / "Condition.ndjson").read_text().splitlines()[0])
    condition["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
    lines = [
        patient_line[: len(patient_line) // 2],          # 1: cut mid-object
        json.dumps(without_id, separators=(",", ":")),   # 2: Patient without id
        json.dumps(bad_birth_date, separators=(",", ":")),  # 3: birthDate not a FHIR date
        json.dumps(condition, separators=(",", ":")),    # 4: a Condition in the Patient file
        json.dumps([patient["resourceType"]]),          # 5: a JSON array, not a resource
    ]
    invalid = fhir_dir / "Patient.corpus-invalid.ndjson"
    invalid.write_text("".join(line + "\n" for line in lines))
    cases.append({"id": "fhir-invalid-resources", "format": "fhir-ndjson", "files": [str(invalid.relative_to(CORPUS))],
                  "expect": "quarantine", "level": "lines", "lines": [1, 2, 3, 4, 5], "stage": "ehr-fhir",
                  "error_class": "InvalidEhrRecordError",
                  "why": "Patient NDJSON: a line cut mid-object, a Patient without id, a birthDate in DD/MM/YYYY, "
                         "a Condition in the Patient file, a JSON array"})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path("/work/shared/data"))
    args = parser.parse_args()
    shutil.rmtree(LANDING, ignore_errors=True)
    cases = build_dicom(args.shared_data) + build_genomics(args.shared_data) + build_ehr(args.shared_data)
    manifest = {
        "patient_id": PATIENT_ID,
        "landing_root": "landing",
        "note": "Rebuild with tests/corpus/build_corpus.py; tests read these committed files.",
        "cases": cases,
    }
    (CORPUS / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(p.stat().st_size for p in LANDING.rglob("*") if p.is_file())
    print(f"{len(cases)} cases, {sum(len(c['files']) for c in cases)} files, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
