"""Header reads, validation and UID-based grouping on the real STS_002 study."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pydicom
import pytest

from radplan.errors import InvalidDicomError
from radplan.imaging.series import group_series, read_instance_header, validate_instance


def test_header_of_ct_instance(sts_dir, series_files):
    path = series_files("CT")[0]
    header = read_instance_header(path)
    reference = pydicom.dcmread(path)
    assert header.modality == "CT"
    assert header.sop_uid == reference.SOPInstanceUID
    assert header.series_uid == reference.SeriesInstanceUID
    assert header.has_pixel_data
    assert header.image_position == tuple(float(v) for v in reference.ImagePositionPatient)
    assert header.frame_of_reference_uid == reference.FrameOfReferenceUID


def test_rtstruct_header_has_no_pixels(sts_dir):
    header = validate_instance(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm")
    assert header.modality == "RTSTRUCT"
    assert not header.has_pixel_data
    assert header.image_position is None


def test_non_dicom_file_is_refused(tmp_path, shared_data):
    for source in (shared_data / "imaging" / "dcmqi_ct_liver_seg" / "seg-example.json",):
        with pytest.raises(InvalidDicomError):
            read_instance_header(source)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(InvalidDicomError):
        read_instance_header(empty)


def test_truncated_pixel_data_fails_validation(tmp_path, sts_dir, series_files):
    source = series_files("CT")[0]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(source.read_bytes()[:-5000])
    assert read_instance_header(truncated).has_pixel_data  # header itself is intact
    with pytest.raises(InvalidDicomError, match="pixel"):
        validate_instance(truncated)
    validate_instance(source)


def test_truncated_header_is_refused(tmp_path, sts_dir, series_files):
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(series_files("CT")[0].read_bytes()[:400])
    with pytest.raises(InvalidDicomError):
        read_instance_header(truncated)


def test_missing_series_uid_is_refused(tmp_path, sts_dir, series_files):
    ds = pydicom.dcmread(series_files("CT")[0])
    del ds.SeriesInstanceUID
    target = tmp_path / "no_series_uid.dcm"
    ds.save_as(target)
    with pytest.raises(InvalidDicomError, match="SeriesInstanceUID"):
        read_instance_header(target)


def test_grouping_ignores_folders_and_sorts_by_geometry(tmp_path, sts_dir):
    sources = sorted((sts_dir / "dicom").rglob("*.dcm"))
    shuffled = list(sources)
    random.Random(7).shuffle(shuffled)
    # Flatten everything into one folder with meaningless names: only UIDs can group them.
    flat = []
    for index, source in enumerate(shuffled):
        target = tmp_path / f"{index:04d}.dcm"
        shutil.copyfile(source, target)
        flat.append(target)
    headers = [read_instance_header(p) for p in flat]
    headers.append(headers[0])  # the same instance twice counts once
    grouped = group_series(headers)

    expected: dict[str, dict[str, int]] = {}
    for source in sources:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        expected.setdefault(ds.StudyInstanceUID, {}).setdefault(ds.SeriesInstanceUID, 0)
        expected[ds.StudyInstanceUID][ds.SeriesInstanceUID] += 1
    assert {s: {k: len(v) for k, v in series.items()} for s, series in grouped.items()} == expected

    for series in grouped.values():
        for instances in series.values():
            positions = [h.slice_position() for h in instances]
            if positions[0] is not None:
                assert positions == sorted(positions)
                assert len(set(positions)) == len(positions)


def test_series_under_two_studies_is_refused(sts_dir, series_files):
    header = read_instance_header(series_files("CT")[0])
    other = read_instance_header(series_files("CT")[1])
    forged = type(other)(**{**other.__dict__, "study_uid": "1.2.3"})
    with pytest.raises(InvalidDicomError, match="two different studies"):
        group_series([header, forged])


def test_pydicom_test_files_validate():
    from pydicom.data import get_testdata_file

    header = validate_instance(Path(get_testdata_file("CT_small.dcm")))
    assert header.modality == "CT" and header.has_pixel_data
