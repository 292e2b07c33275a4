"""CT series and SEG: decodable, HU-realistic, geometry-consistent, dciodvfy-clean, SEG references its CT."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from synth_test_helpers import dicom_files


@pytest.fixture(scope="module")
def instances(cohort, bad_paths):
    """(StudyInstanceUID, Modality) -> list of (path, dataset)."""
    grouped = defaultdict(list)
    for path in dicom_files(cohort, bad_paths):
        ds = pydicom.dcmread(path)
        grouped[(ds.StudyInstanceUID, ds.Modality)].append((path, ds))
    return grouped


def _study_truth(truth, study_uid):
    for mrn, patient in truth["patients"].items():
        for study in patient["studies"]:
            if study["study_instance_uid"] == study_uid:
                return mrn, study
    raise AssertionError("study not in truth")


def _volume(entries):
    """HU volume (z,y,x) sorted by position along the slice normal, and the sorted datasets."""
    datasets = sorted((ds for _, ds in entries), key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    return volume, datasets


def test_ct_instances_are_proper_ct_image_storage(instances):
    ct_series = [entries for (uid, modality), entries in instances.items() if modality == "CT"]
    assert ct_series
    for entries in ct_series:
        for _, ds in entries:
            assert ds.SOPClassUID == CTImageStorage
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPInstanceUID.startswith("2.25.")
            assert ds.pixel_array.dtype == np.int16
            assert (ds.Rows, ds.Columns) == (128, 128)
            assert float(ds.RescaleIntercept) == -1024.0


def test_ct_geometry_and_hu_realism(instances, truth, cohort):
    for (study_uid, modality), entries in instances.items():
        if modality != "CT":
            continue
        volume, datasets = _volume(entries)
        mrn, study = _study_truth(truth, study_uid)
        assert 40 <= len(datasets) <= 60
        assert len({d.FrameOfReferenceUID for d in datasets}) == 1
        z = np.array([float(d.ImagePositionPatient[2]) for d in datasets])
        assert np.allclose(np.diff(z), float(datasets[0].SliceThickness))
        assert float(datasets[0].PixelSpacing[0]) == pytest.approx(study["pixel_spacing_mm"], abs=1e-4)
        # Air outside, lungs, soft tissue and bone all present with plausible HU.
        assert volume[:, 0, 0].max() < -900
        assert np.percentile(volume, 20) < -800
        assert (volume > 500).sum() > 1000
        center = volume[len(datasets) // 2, 30:40, 60:68]  # anterior soft tissue
        assert -150 < float(np.median(center)) < 150
        # The truth mask lies on the same grid and marks dense tissue.
        mask_image = sitk.ReadImage(str(cohort / study["mask"]))
        mask = sitk.GetArrayFromImage(mask_image)
        assert mask.shape == volume.shape
        assert np.allclose(mask_image.GetOrigin(), [float(v) for v in datasets[0].ImagePositionPatient], atol=1e-3)
        assert np.allclose(mask_image.GetSpacing(), [float(datasets[0].PixelSpacing[1]), float(datasets[0].PixelSpacing[0]), float(datasets[0].SliceThickness)])
        labels = sorted(int(v) for v in np.unique(mask) if v)
        assert labels == [lesion["label"] for lesion in study["lesions"]]
        assert 1 <= len(labels) <= 3
        for lesion in study["lesions"]:
            voxels = mask == lesion["label"]
            assert voxels.sum() == lesion["voxels"]
            assert -100 < float(volume[voxels].mean()) < 250  # lesions are soft-tissue density, in lung or not
            diameter_mm = 2 * (3 * lesion["volume_ml"] * 1000 / (4 * np.pi)) ** (1 / 3)
            assert 8 < diameter_mm < 60


def test_follow_up_changes_lesion_sizes(truth):
    follow_ups = [p for p in truth["patients"].values() if len(p["studies"]) == 2]
    assert follow_ups, "the test cohort should contain a follow-up study"
    for patient in follow_ups:
        baseline, follow_up = patient["studies"]
        assert follow_up["study_date"] > baseline["study_date"]
        ratio = follow_up["total_volume_ml"] / baseline["total_volume_ml"]
        assert (ratio < 0.9) if patient["outcome"]["responder"] else (ratio > 1.0)


def test_phi_is_in_the_headers_where_a_hospital_puts_it(instances, truth):
    for (study_uid, modality), entries in instances.items():
        if modality != "CT":
            continue
        mrn, _ = _study_truth(truth, study_uid)
        ds = entries[0][1]
        assert ds.PatientID == mrn
        for keyword in ("PatientName", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber",
                        "InstitutionName", "ReferringPhysicianName", "OperatorsName", "OtherPatientIDsSequence", "StudyID"):
            assert ds.get(keyword), keyword
        assert ds.RequestAttributesSequence[0].AccessionNumber == ds.AccessionNumber
        block = ds.private_block(0x0011, "NORTHSHORE PACS 2.1")
        assert block[0x10].value == mrn


def _dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_dciodvfy_reports_no_errors_for_ct_and_seg(instances):
    ct_path = next(entries[0][0] for (uid, modality), entries in instances.items() if modality == "CT")
    seg_path = next(entries[0][0] for (uid, modality), entries in instances.items() if modality == "SEG")
    assert _dciodvfy_errors(ct_path) == []
    assert _dciodvfy_errors(seg_path) == []


def test_seg_references_the_ct_instances_of_its_study(instances, truth, cohort):
    segs = [(uid, entries) for (uid, modality), entries in instances.items() if modality == "SEG"]
    assert segs
    for study_uid, entries in segs:
        assert len(entries) == 1
        mrn, study = _study_truth(truth, study_uid)
        assert study["has_seg"]
        seg = hd.seg.segread(entries[0][0])
        assert seg.SOPClassUID == SegmentationStorage
        assert seg.SegmentationType == "BINARY"
        assert seg.SegmentSequence[0].SegmentLabel == "Lesion"
        assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
        ct_entries = instances[(study_uid, "CT")]
        ct_uids = {ds.SOPInstanceUID for _, ds in ct_entries}
        referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
        assert referenced == ct_uids
        assert seg.FrameOfReferenceUID == ct_entries[0][1].FrameOfReferenceUID
        # Frames hold the truth mask: total segmented pixels equal the mask's lesion voxels.
        assert int(seg.pixel_array.sum()) == sum(lesion["voxels"] for lesion in study["lesions"])
    assert {s["study_instance_uid"] for p in truth["patients"].values() for s in p["studies"] if s["has_seg"]} == {uid for uid, _ in segs}


def test_series_encoder_writes_exactly_what_pydicom_writes(cohort):
    from io import BytesIO

    from radplan.synth.cohort import draw_patient
    from radplan.synth.ct import SeriesEncoder, ct_datasets, render_study

    plan = draw_patient(3, 0)
    hu, _, geometry = render_study(plan, plan.studies[0], 3)
    datasets = ct_datasets(plan, plan.studies[0], 3, hu, geometry)
    encoder = SeriesEncoder()
    for ds in datasets[:3]:
        fast = encoder.encode(ds)
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert fast == buffer.getvalue()
