"""RTSTRUCT writer: a valid IOD (dciodvfy), and contours that read back into the mask they came from."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radplan.imaging.derived import is_radplan_output
from radplan.imaging.masks import dice, mask_from_rtstruct
from radplan.imaging.rtstruct import write_rtstruct


def _lesion_labels(liver_dir) -> sitk.Image:
    """Label 1: the dcmqi liver; label 2: a ring (a lesion with a hole) touching the image border on the middle slice."""
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(liver_dir / "liver_seg.nrrd"))).astype(np.uint8)
    labels = (liver > 0).astype(np.uint8)
    rows, columns = np.mgrid[: labels.shape[1], : labels.shape[2]]
    distance = np.hypot(rows - 40, columns - 3)
    ring = (distance < 30) & (distance >= 12)
    labels[1][ring & (labels[1] == 0)] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(sitk.ReadImage(str(liver_dir / "liver_seg.nrrd")))
    return image


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed (make system-deps)")
def test_rtstruct_passes_dciodvfy_and_reads_back_into_the_mask(liver_dir, tmp_path):
    ct_paths = sorted((liver_dir / "ct").glob("*.dcm"))
    sources = [pydicom.dcmread(p) for p in ct_paths]
    labels = _lesion_labels(liver_dir)
    out = write_rtstruct(labels, sources, tmp_path / "rtstruct.dcm", algorithm_name="radplan-lesion-seg", algorithm_version="3")

    report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors

    written = pydicom.dcmread(out)
    assert is_radplan_output(written.Modality, written.Manufacturer)
    assert written.StudyInstanceUID == sources[0].StudyInstanceUID and written.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = written.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ContourImageSequence} == {ds.SOPInstanceUID for ds in sources}

    read_back = mask_from_rtstruct(out, ct_paths)
    assert sorted(read_back) == ["Lesion 1", "Lesion 2"]
    for number in (1, 2):
        expected = sitk.GetArrayFromImage(labels) == number
        score = dice(read_back[f"Lesion {number}"], expected)
        assert score >= 0.95, f"Lesion {number}: Dice {score:.4f}"
    ring_centre = sitk.GetArrayFromImage(read_back["Lesion 2"])[1, 40, 3]
    assert ring_centre == 0, "the hole of the ring must stay a hole"

    again = write_rtstruct(labels, list(reversed(sources)), tmp_path / "again.dcm", algorithm_name="radplan-lesion-seg", algorithm_version="3")
    assert pydicom.dcmread(again).SOPInstanceUID == written.SOPInstanceUID, "UIDs derive from content, not from input order"
    with pytest.raises(ValueError, match="CT grid"):
        write_rtstruct(sitk.GetArrayFromImage(labels)[:2], sources, tmp_path / "bad.dcm", algorithm_name="x", algorithm_version="1")
