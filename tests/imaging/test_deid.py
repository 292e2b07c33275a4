"""DICOM de-identification (PS3.15 Annex E) on real CT/PET/MR/RTSTRUCT/SEG files."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from radplan.errors import BurnedInAnnotationError, InvalidDicomError
from radplan.imaging import deid
from radplan.imaging.deid import DeidOptions, deidentify_dataset, deidentify_file, deidentify_folder
from radplan.pseudonym import Pseudonymizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CANARY = "QZXCANARYK7"  # planted as the patient's family name and as the value of every text element
CANARY_UID = "1.2.826.0.1.3680043.99.424242.31337"
CANARY_DATE = "19710203"
GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
            "SliceThickness", "RescaleSlope", "RescaleIntercept", "BitsAllocated", "PixelRepresentation")
CANARY_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE", "CS", "DA", "DT", "TM", "AS", "IS", "DS", "UI"}
UID_RE = re.compile(r"^2\.25\.\d+$")


def _walk(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _canary_value(vr: str) -> str:
    return {"UI": CANARY_UID, "DA": CANARY_DATE}.get(vr, CANARY)


def _raw(tag: int, vr: str, value: str) -> RawDataElement:
    """An element as the file would hold it: invalid values (a name in an IS) can be planted too."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)


def _plant_canaries(ds: Dataset) -> int:
    """Add every standard text-VR element the file lacks, a nested sequence and private tags, all canaries."""
    planted = 0
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        if vr not in CANARY_VRS or tag in ds or tag >> 16 in (0x0000, 0x0002) or tag == 0x00080005:
            continue  # keep what the file has (pixels, geometry); no command set, file meta or charset
        ds[tag] = _raw(tag, vr, _canary_value(vr))
        planted += 1
    # Nested two levels deep, in a sequence the walk keeps, and in a code sequence (safe-keep text).
    inner = Dataset()
    for keyword, vr in (("ReferencedSOPInstanceUID", "UI"), ("PatientComments", "LT"), ("TextValue", "UT"),
                        ("InstitutionName", "LO"), ("StudyDate", "DA"), ("PersonName", "PN"),
                        ("CodeMeaning", "LO"), ("RetrieveAETitle", "AE"), ("AcquisitionDateTime", "DT")):
        inner.add_new(pydicom.datadict.tag_for_keyword(keyword), vr, _canary_value(vr))
    middle = Dataset()
    middle.SeriesInstanceUID = CANARY_UID
    middle.ReferencedInstanceSequence = Sequence([inner])
    middle.SeriesDescription = f"series of {CANARY}"
    ds.ReferencedSeriesSequence = Sequence([middle])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D0050", "SRT", f"{CANARY} region"
    ds.AnatomicRegionSequence = Sequence([code])
    block = ds.private_block(0x0011, "CANARY CREATOR", create=True)
    block.add_new(0x01, "LO", CANARY)
    private_item = Dataset()
    private_item.PatientName = CANARY
    block.add_new(0x02, "SQ", Sequence([private_item]))
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    ds.add_new(0x60004000, "LT", CANARY)  # overlay comments
    ds.add_new(0x50000010, "US", 3)  # curve group
    ds.PatientName = f"{CANARY}^Given"
    ds.PatientID = f"MRN-{CANARY}"
    ds.StudyDescription = f"CT chest for {CANARY}"
    return planted


def _serialized(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(params=["pydicom_ct_small", "sts_ct"])
def canary_ct(request, sts_dir: Path) -> tuple[Dataset, Dataset]:
    """(original file as read, the same dataset with canaries planted), read back from bytes."""
    path = get_testdata_file("CT_small.dcm") if request.param == "pydicom_ct_small" \
        else sts_dir / "dicom" / "CT" / "image" / "000020.dcm"
    original = pydicom.dcmread(path)
    planted = pydicom.dcmread(path)
    assert _plant_canaries(planted) > 1500
    return original, pydicom.dcmread(io.BytesIO(_serialized(planted)))


def test_table_is_the_annex_e_table_with_valid_actions():
    with (Path(deid.__file__).parent / "data" / deid.TABLE_FILE).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 450
    allowed = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*", ""}
    by_keyword = {}
    for row in rows:
        for column in ("basic_profile", "retain_long_modified_dates", "retain_patient_characteristics",
                       "clean_descriptors"):
            assert row[column] in allowed, row
        assert row["basic_profile"], row
        if "X" not in row["tag"]:
            assert keyword_for_tag(int(row["tag"], 16)) == row["keyword"]
        by_keyword[row["keyword"]] = row
    # Spot checks against PS3.15 Table E.1-1.
    assert by_keyword["PatientName"]["basic_profile"] == "Z"
    assert by_keyword["StudyInstanceUID"]["basic_profile"] == "U"
    assert by_keyword["StudyDate"]["retain_long_modified_dates"] == "C"
    assert by_keyword["PatientWeight"]["retain_patient_characteristics"] == "K"
    assert by_keyword["SeriesDescription"]["clean_descriptors"] == "C"
    assert by_keyword["ReferencedImageSequence"]["basic_profile"] == "X/Z/U*"


def test_no_canary_survives_anywhere_and_pixels_and_geometry_are_unchanged(canary_ct, pseudonymizer):
    original, planted = canary_ct
    out, result = deidentify_dataset(planted, pseudonymizer)
    canaries = (CANARY.lower(), CANARY_UID, CANARY_DATE, str(original.PatientID).lower())
    for elem in _walk(out):
        assert not elem.tag.is_private
        assert elem.tag >> 16 not in (0x5000, 0x6000)
        text = str(elem.value).lower() if elem.VR not in ("OB", "OW", "UN") else ""
        for canary in canaries:
            assert canary.lower() not in text, f"{elem.keyword or elem.tag} kept {canary}"
    written = _serialized(out)
    for canary in (CANARY, CANARY.lower(), CANARY_UID, CANARY_DATE, "CANARY CREATOR"):
        assert canary.encode() not in written
    assert original.SOPInstanceUID.encode() not in written
    assert pydicom.dcmread(io.BytesIO(written)).PixelData == original.PixelData
    for keyword in GEOMETRY:
        assert out.get(keyword) == original.get(keyword), keyword
    assert result.patient_key == pseudonymizer.patient_key(f"MRN-{CANARY}")


def test_identity_dates_and_method_attributes(sts_dir, pseudonymizer):
    src = sts_dir / "dicom" / "CT" / "image" / "000010.dcm"
    ds = pydicom.dcmread(src)
    ds.SeriesDescription = "CT CHEST W CONTRAST"  # no identifying text: kept by Clean Descriptors
    item = Dataset()
    item.AcquisitionDateTime = "20060128101530.5"
    item.ObservationDateTime = "20060128"
    ds.ReferencedSeriesSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = Sequence([item])
    out, result = deidentify_dataset(ds, pseudonymizer)

    shift = dt.timedelta(days=pseudonymizer.date_shift_days(ds.PatientID))
    assert shift.days < 0

    def shifted(value: str) -> str:
        return (dt.datetime.strptime(value, "%Y%m%d").date() + shift).strftime("%Y%m%d")

    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if ds.get(keyword):
            assert out[keyword].value == shifted(ds[keyword].value), keyword
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        if ds.get(keyword):
            assert out[keyword].value == ds[keyword].value, keyword
    nested = out.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert nested.AcquisitionDateTime == shifted("20060128") + "101530.5"
    assert nested.ObservationDateTime == shifted("20060128")

    assert out.PatientID == out.PatientName.family_name == result.patient_key == pseudonymizer.patient_key("STS_002")
    assert str(out.PatientName) == f"{result.patient_key}^"  # a delimiter: not the retired single-component PN form
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientBirthDate == ""
    for keyword in ("PatientSex", "PatientAge", "PatientWeight", "PatientSize"):
        assert out.get(keyword) == ds.get(keyword), keyword
    codes = {(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence}
    assert {("113100", "DCM"), ("113107", "DCM"), ("113108", "DCM"), ("113105", "DCM")} <= codes
    assert "113110" not in {c for c, _ in codes}  # UIDs are not retained
    assert "Basic" in str(out.DeidentificationMethod)
    # Clean Descriptors: the real StudyDescription names the patient (IBSI_1_STS_002_CT) and is cleaned.
    assert "STS_002" in ds.StudyDescription and out.StudyDescription == ""
    assert out.SeriesDescription == "CT CHEST W CONTRAST"
    assert out.StudyInstanceUID == pseudonymizer.uid(ds.StudyInstanceUID)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_uid
    assert out.SOPClassUID == ds.SOPClassUID


def test_input_dataset_is_left_unchanged(pseudonymizer):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    before = _serialized(ds)
    out, _ = deidentify_dataset(ds, pseudonymizer)
    out.PatientSize = "9.9"
    assert _serialized(ds) == before


@pytest.fixture(scope="module")
def deidentified_sts_and_liver(tmp_path_factory, shared_data):
    from radplan.pseudonym import DEMO_KEY

    out = tmp_path_factory.mktemp("deid")
    quarantine = tmp_path_factory.mktemp("quarantine")
    pseudonymizer = Pseudonymizer(DEMO_KEY)
    summaries = [deidentify_folder(shared_data / "imaging" / name / sub, out / name, pseudonymizer, quarantine)
                 for name, sub in (("ibsi_sts_002", "dicom"), ("dcmqi_ct_liver_seg", "."))]
    return out, summaries, pseudonymizer


def _read_tree(root: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(root.rglob("*.dcm"))]


def _uids(ds: Dataset) -> set[str]:
    return {str(e.value) for e in _walk(ds) if e.VR == "UI" and e.value and e.VM == 1}


def _identity_uids(ds: Dataset) -> set[str]:
    return {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID}


def _contour_refs(rs: Dataset) -> set[str]:
    return {img.ReferencedSOPInstanceUID for roi in rs.ROIContourSequence
            for contour in roi.ContourSequence for img in contour.ContourImageSequence}


def test_uids_are_remapped_consistently_across_files(deidentified_sts_and_liver, shared_data):
    out, summaries, pseudonymizer = deidentified_sts_and_liver
    sts_summary, liver_summary = summaries
    assert sts_summary["instances_written"] == 48 + 48 + 35 + 3 and not sts_summary["quarantined"]
    # The liver folder also holds NRRD/JSON files: not DICOM, so quarantined, never written.
    assert liver_summary["instances_written"] == 4 and liver_summary["patients"] == 1
    assert len(liver_summary["quarantined"]) == 2
    assert sts_summary["series"] == 6 and sts_summary["patients"] == 1

    sts = _read_tree(out / "ibsi_sts_002")
    source_root = shared_data / "imaging" / "ibsi_sts_002" / "dicom"
    structs = [d for d in sts if d.Modality == "RTSTRUCT"]
    assert len(structs) == 3
    for modality in ("CT", "PET", "MR_T1"):
        source_rs = pydicom.dcmread(next((source_root / modality / "mask").glob("*.dcm")))
        source_images = [pydicom.dcmread(p) for p in (source_root / modality / "image").glob("*.dcm")]
        rs = next(d for d in structs if d.SOPInstanceUID == pseudonymizer.uid(source_rs.SOPInstanceUID))
        images = [d for d in sts if d.SeriesInstanceUID == pseudonymizer.uid(source_images[0].SeriesInstanceUID)]
        assert len(images) == len(source_images)
        # Every link from the structure set to its images (study, series, frame of reference, SOP
        # instances) that holds in the input holds between the de-identified files.
        source_links = _uids(source_rs) & set().union(*(_identity_uids(d) for d in source_images))
        links = _uids(rs) & set().union(*(_identity_uids(d) for d in images))
        assert len(source_links) >= 3 and links == {pseudonymizer.uid(u) for u in source_links}
        # Dangling references (MIRP re-exported the images with new UIDs) map the same way.
        assert _contour_refs(rs) == {pseudonymizer.uid(u) for u in _contour_refs(source_rs)}
        assert rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == images[0].FrameOfReferenceUID
    # Same input UID -> same output UID, in every file.
    original_ct = pydicom.dcmread(shared_data / "imaging/ibsi_sts_002/dicom/CT/image/000000.dcm")
    assert pseudonymizer.uid(original_ct.StudyInstanceUID) in {d.StudyInstanceUID for d in sts}
    assert len({d.StudyInstanceUID for d in sts}) == len({pydicom.dcmread(p).StudyInstanceUID for p in
                                                           (shared_data / "imaging/ibsi_sts_002").rglob("*.dcm")})

    liver = _read_tree(out / "dcmqi_ct_liver_seg")
    seg = next(d for d in liver if d.Modality == "SEG")
    cts = [d for d in liver if d.Modality == "CT"]
    ct_uids = {d.SOPInstanceUID for d in cts}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == ct_uids
    sources = {s.ReferencedSOPInstanceUID for frame in seg.PerFrameFunctionalGroupsSequence
               for derivation in frame.DerivationImageSequence for s in derivation.SourceImageSequence}
    assert sources == ct_uids
    assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID

    for ds in sts + liver:
        for elem in _walk(ds):
            if elem.VR == "UI" and elem.value:
                for value in (elem.value if elem.VM > 1 else [elem.value]):
                    if value not in UID_dictionary:
                        assert UID_RE.match(value) and len(value) <= 64, (elem.keyword, value)


def test_different_keys_give_different_pseudonyms(pseudonymizer):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    other = Pseudonymizer(b"another-site-key-of-at-least-thirty-two-bytes")
    first, r1 = deidentify_dataset(ds, pseudonymizer)
    second, r2 = deidentify_dataset(ds, other)
    assert r1.patient_key != r2.patient_key
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert first.FrameOfReferenceUID != second.FrameOfReferenceUID
    again, _ = deidentify_dataset(ds, pseudonymizer)
    assert again.StudyInstanceUID == first.StudyInstanceUID


def _dciodvfy_messages(path: Path) -> set[str]:
    """dciodvfy's errors and warnings, without element values (UIDs, names and dates legitimately change)."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\[\d+\]", "[n]", re.sub(r"<[^>]*>", "<value>", line))
            for line in lines if line.startswith(("Error", "Warning"))}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed")
@pytest.mark.parametrize("relative", ["ibsi_sts_002/dicom/CT/image/000010.dcm",
                                      "ibsi_sts_002/dicom/PET/image/000010.dcm",
                                      "ibsi_sts_002/dicom/MR_T1/image/000010.dcm",
                                      "ibsi_sts_002/dicom/CT/mask/RS.dcm",
                                      "ibsi_sts_002/dicom/PET/mask/RS.dcm",
                                      "dcmqi_ct_liver_seg/liver_seg.dcm",
                                      "dcmqi_ct_liver_seg/ct/01.dcm",
                                      "pydicom:CT_small.dcm",
                                      "pydicom:MR_small.dcm",
                                      "pydicom:rtplan.dcm",
                                      "pydicom:rtdose.dcm"])
def test_dciodvfy_reports_no_new_errors_or_warnings(relative, shared_data, tmp_path, pseudonymizer):
    src = Path(get_testdata_file(relative.split(":")[1])) if relative.startswith("pydicom:") \
        else shared_data / "imaging" / relative
    result = deidentify_file(src, tmp_path, pseudonymizer)
    new = _dciodvfy_messages(result.output_path) - _dciodvfy_messages(src)
    assert not new, sorted(new)


def test_study_id_becomes_a_token_of_the_study(series_files, pseudonymizer):
    first, second = (pydicom.dcmread(path) for path in series_files("CT")[:2])
    assert first.StudyID and first.StudyID == second.StudyID
    out_first, _ = deidentify_dataset(first, pseudonymizer)
    out_second, _ = deidentify_dataset(second, pseudonymizer)
    assert out_first.StudyID == out_second.StudyID  # one study, one ID (DICOMDIR)
    assert out_first.StudyID != first.StudyID and first.StudyID not in out_first.StudyID
    assert len(out_first.StudyID) <= 16  # SH
    no_id = pydicom.dcmread(series_files("CT")[0])
    del no_id.StudyID
    assert "StudyID" not in deidentify_dataset(no_id, pseudonymizer)[0]


def _as_ultrasound(ds: Dataset) -> Dataset:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "US"
    return ds


def _flagged_yes(ds: Dataset) -> Dataset:
    ds.BurnedInAnnotation = "YES"
    return ds


def _as_secondary_capture(ds: Dataset) -> Dataset:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    return ds


@pytest.mark.parametrize("make_risky", [_flagged_yes, _as_ultrasound, _as_secondary_capture])
def test_burned_in_annotation_is_quarantined_or_flagged(make_risky, pseudonymizer, tmp_path):
    ds = make_risky(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    with pytest.raises(BurnedInAnnotationError):
        deidentify_dataset(ds, pseudonymizer)
    out, result = deidentify_dataset(ds, pseudonymizer, DeidOptions(burned_in_policy="flag"))
    assert result.burned_in_flagged
    ds.BurnedInAnnotation = "NO"  # an explicit NO is trusted
    assert not deidentify_dataset(ds, pseudonymizer)[1].burned_in_flagged


def test_corrupt_inputs_raise_and_folder_quarantines_them(tmp_path, sts_dir, pseudonymizer):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    good = sorted((sts_dir / "dicom" / "CT" / "image").glob("*.dcm"))[:2]
    for path in good:
        shutil.copy(path, in_dir / path.name)
    data = good[0].read_bytes()
    (in_dir / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (in_dir / "notes.txt").write_text("Patient STS_002 seen on 2006-01-28\n")
    burned = pydicom.dcmread(good[1])
    burned.BurnedInAnnotation = "YES"
    burned.save_as(in_dir / "burned.dcm")

    for bad in ("truncated.dcm", "notes.txt"):
        with pytest.raises(InvalidDicomError):
            deidentify_file(in_dir / bad, tmp_path / "single", pseudonymizer)

    calls = []
    summary = deidentify_folder(in_dir, tmp_path / "out", pseudonymizer, tmp_path / "quarantine",
                                progress=lambda done, total: calls.append((done, total)))
    assert summary["instances_written"] == 2
    assert sorted(q["error_class"] for q in summary["quarantined"]) == \
        ["BurnedInAnnotationError", "InvalidDicomError", "InvalidDicomError"]
    assert calls[-1] == (5, 5)
    reasons = list((tmp_path / "quarantine").rglob("reason.json"))
    assert len(reasons) == 3
    text = json.dumps(summary)
    assert "STS_002" not in text and burned.StudyInstanceUID not in text and "notes.txt" not in text
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


@pytest.mark.parametrize("description, kept", [
    ("AX T1 POST GD", True),
    ("Follow-up 2006-01-28", False),
    ("scan of 28/01/2006", False),
    ("20060128 baseline", False),
    ("CT for Given", False),  # the patient's given name
    ("Givenchy protocol", True),  # name parts match as whole words only
])
def test_clean_descriptors_rule(description, kept, pseudonymizer):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Doe^Given"
    ds.SeriesDescription = description
    out, _ = deidentify_dataset(ds, pseudonymizer)
    assert (out.SeriesDescription == description) is kept


def test_options_switch_their_table_columns(pseudonymizer):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientAge, ds.PatientWeight = "045Y", "71.5"
    ds.SeriesDescription = "AX T1 POST GD"
    basic_only = DeidOptions(retain_modified_dates=False, retain_patient_characteristics=False,
                             clean_descriptors=False)
    out, _ = deidentify_dataset(ds, pseudonymizer, basic_only)
    assert out.StudyDate == "" and out.PatientSex == ""  # Z in the basic profile
    assert "PatientAge" not in out and "PatientWeight" not in out and "SeriesDescription" not in out  # X
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    full, _ = deidentify_dataset(ds, pseudonymizer)
    assert full.PatientAge == "045Y" and full.PatientWeight == ds.PatientWeight and full.PatientSex == ds.PatientSex
    assert full.SeriesDescription == "AX T1 POST GD" and full.StudyDate != ds.StudyDate != ""
