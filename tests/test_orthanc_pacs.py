"""The Orthanc PACS resource against a real Orthanc fed by storescu."""

from __future__ import annotations

import pydicom
import pytest

from radplan_resources import OrthancPacs

pytestmark = pytest.mark.orthanc


def test_orthanc_lists_and_fetches_a_study_pushed_by_storescu(orthanc, shared_data, tmp_path):
    ct_files = sorted((shared_data / "imaging" / "ibsi_sts_002" / "dicom" / "CT" / "image").glob("*.dcm"))
    orthanc.store(ct_files)
    pacs = OrthancPacs(url=orthanc.url)

    studies, unreadable = pacs.list_studies()
    assert unreadable == []
    assert [s.source_patient_id for s in studies] == ["STS_002"]

    fetched = pacs.fetch_study(studies[0], tmp_path / "fetched")
    assert len(fetched) == len(ct_files)
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct_files}
    received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in fetched}
    assert received == sent
    first = pydicom.dcmread(fetched[0])
    assert first.pixel_array.shape == (int(first.Rows), int(first.Columns))


def test_orthanc_change_feed_reports_the_stable_study(orthanc, shared_data):
    import time

    orthanc.store(sorted((shared_data / "imaging" / "dcmqi_ct_liver_seg" / "ct").glob("*.dcm")))
    pacs = OrthancPacs(url=orthanc.url)
    deadline = time.monotonic() + 30
    stable = []
    while time.monotonic() < deadline and not stable:
        page = pacs.changes(since=0, limit=1000)
        stable = [c for c in page["Changes"] if c["ChangeType"] == "StableStudy"]
        time.sleep(0.5)
    assert len(stable) == 1
    assert page["Last"] >= stable[0]["Seq"]


def test_orthanc_rejects_stores_from_unknown_calling_aet(orthanc, shared_data):
    import subprocess

    ct = sorted((shared_data / "imaging" / "dcmqi_ct_liver_seg" / "ct").glob("*.dcm"))[:1]
    result = subprocess.run(
        ["storescu", "-aet", "STRANGER", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(ct[0])],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert OrthancPacs(url=orthanc.url).list_studies()[0] == []
