"""An intake the PACS change feed asked for re-reads only the studies that changed; every other intake re-reads all."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, materialize

from radplan_assets import ingest
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource, OrthancPacs
from radplan_resources.io_manager import own_previous_output
from support import with_lake_io

pytestmark = pytest.mark.orthanc


def test_feed_triggered_intakes_reuse_unchanged_studies_and_others_rescan(orthanc, shared_data, tmp_path, monkeypatch):
    import time

    orthanc.store(sorted((shared_data / "imaging" / "dcmqi_ct_liver_seg" / "ct").glob("*.dcm")))
    pacs = OrthancPacs(url=orthanc.url)
    deadline = time.monotonic() + 60
    while not all(study.revision for study in pacs.list_studies()[0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = with_lake_io({"lake": lake, "landing": LandingZoneResource(folder=str(tmp_path / "landing")), "pacs": pacs,
                              "deid_key": DeidKeyResource(demo=True)})
    instance = DagsterInstance.ephemeral()
    read = []
    real_read = OrthancPacs.source_instances
    monkeypatch.setattr(OrthancPacs, "source_instances", lambda self, ref: read.append(ref) or real_read(self, ref))

    def intake(**tags) -> list[str]:
        read.clear()
        assert materialize([ingest.landing_inventory], resources=resources, instance=instance, tags=tags).success
        return list(read)

    assert len(intake()) == 1  # the first intake reads the study
    studies = own_previous_output(lake, "landing_inventory")["dicom_studies"]
    assert studies["revision"].str.len().gt(0).all()
    assert intake(**{ingest.TRIGGER_TAG: ingest.PACS_FEED_TRIGGER}) == []  # the feed's intake: unchanged, not re-read
    assert own_previous_output(lake, "landing_inventory")["dicom_studies"].equals(studies)
    assert len(intake(**{ingest.TRIGGER_TAG: "landing-genomics"})) == 1  # any other intake re-reads every study


def test_the_nightly_full_intake_lists_every_study():
    from dagster import build_schedule_context

    from jobs import ALL_SCHEDULES

    schedule = next(s for s in ALL_SCHEDULES if s.name == "nightly_full_intake")
    assert schedule.job_name == "ingest_job"
    (request,) = schedule.evaluate_tick(build_schedule_context()).run_requests
    assert request.tags.get(ingest.TRIGGER_TAG) != ingest.PACS_FEED_TRIGGER  # so the intake re-reads every study
