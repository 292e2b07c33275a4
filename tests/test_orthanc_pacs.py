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


def _store_study(orthanc, template, instances: int, study_uid: str | None = None, series_uid: str | None = None) -> list[str]:
    """``instances`` copies of one real CT instance as one study (new UIDs unless given)."""
    from pydicom.uid import generate_uid

    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    return [orthanc.store_copy(template, StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid) for _ in range(instances)]


def _stable_listing(pacs, timeout_s: float = 60):
    """The full listing once every study is stable (each has a revision)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        studies, _ = pacs.list_studies()
        if all(study.revision for study in studies) or time.monotonic() > deadline:
            return studies
        time.sleep(0.5)


def test_a_listing_with_known_studies_re_reads_only_the_changed_ones(orthanc, shared_data, monkeypatch):
    """Unchanged stable studies keep their fingerprints without their two requests; a study that got an instance
    is re-read; a deletion (which Orthanc before 1.12.1 does not record in LastUpdate) is seen by a full listing."""
    import time

    import requests

    template = pydicom.dcmread(sorted((shared_data / "imaging" / "ibsi_sts_002" / "dicom" / "CT" / "image").glob("*.dcm"))[0])
    first = _store_study(orthanc, template, 2)
    _store_study(orthanc, template, 2)
    pacs = OrthancPacs(url=orthanc.url)
    full = _stable_listing(pacs)
    assert len(full) == 2 and all(study.revision for study in full)

    read = []
    real_read = OrthancPacs.source_instances
    monkeypatch.setattr(OrthancPacs, "source_instances", lambda self, ref: read.append(ref) or real_read(self, ref))
    assert pacs.list_studies(known={s.study_ref: s for s in full})[0] == full
    assert read == []  # nothing changed: no study re-read

    time.sleep(1.1)  # the next instance lands in a later second than the study's LastUpdate
    study = requests.get(f"{orthanc.url}/instances/{first[0]}/study", timeout=30).json()
    _store_study(orthanc, template, 1, study["MainDicomTags"]["StudyInstanceUID"], template.SeriesInstanceUID)
    after_addition = _stable_listing(pacs)
    read.clear()
    incremental = pacs.list_studies(known={s.study_ref: s for s in full})[0]
    assert read == [study["ID"]]  # only the study that got an instance
    assert incremental == after_addition
    assert {s.study_ref: s.content_fingerprint for s in incremental} != {s.study_ref: s.content_fingerprint for s in full}

    requests.delete(f"{orthanc.url}/instances/{first[0]}", timeout=30).raise_for_status()
    version = tuple(int(part) for part in requests.get(f"{orthanc.url}/system", timeout=30).json()["Version"].split(".")[:3])
    incremental = pacs.list_studies(known={s.study_ref: s for s in after_addition})[0]
    full_again = pacs.list_studies()[0]
    if version < (1, 12, 1):
        assert incremental == after_addition  # LastUpdate did not move: the deletion is left to a full listing
    assert full_again != after_addition  # a full listing sees it
