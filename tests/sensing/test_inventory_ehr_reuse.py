"""The intake re-reads the EHR extracts only when they changed: a PACS-triggered intake keeps the previous EHR patients."""

from __future__ import annotations

import shutil

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from radplan_assets import ingest
from radplan_assets.ingest import CHANGED_PATIENTS, CHANGED_SOURCES
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource
from radplan_resources.io_manager import own_previous_output
from radplan_resources.pacs import LandingFolderPacs
from support import with_lake_io


def _intake(resources: dict, instance) -> dict:
    assert materialize([ingest.landing_inventory], resources=with_lake_io(resources), instance=instance).success
    event = instance.get_latest_materialization_event(AssetKey("landing_inventory"))
    return event.asset_materialization.metadata


def test_unchanged_extracts_are_not_re_read_and_a_changed_row_is_seen(shared_data, tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    shutil.copytree(shared_data / "ehr" / "synthea_csv", landing / "ehr" / "csv")
    shutil.copytree(shared_data / "ehr" / "synthea_fhir_bulk", landing / "ehr" / "fhir")
    (landing / "dicom").mkdir()
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {"lake": lake, "landing": LandingZoneResource(folder=str(landing)),
                 "pacs": LandingFolderPacs(folder=str(landing / "dicom")), "deid_key": DeidKeyResource(demo=True)}
    instance = DagsterInstance.ephemeral()

    first = _intake(resources, instance)
    patients = own_previous_output(lake, "landing_inventory")["ehr_patients"]
    assert first["ehr_patients"].value == len(patients) == 33  # 27 CSV and 6 FHIR patients of the real samples

    # Nothing in the EHR landing folders changed (a study arrived in the PACS, say): the extracts are not read at all.
    def must_not_read(*_args, **_kwargs):
        raise AssertionError("the EHR extracts were re-read although they did not change")

    with monkeypatch.context() as patched:
        patched.setattr(ingest, "accepted_patient_ids", must_not_read)
        patched.setattr(LandingZoneResource, "ehr_fingerprints", must_not_read)
        second = _intake(resources, instance)
    assert second[CHANGED_PATIENTS].value == {}
    kept = own_previous_output(lake, "landing_inventory")["ehr_patients"]
    assert kept.equals(patients)

    # One new condition row for one patient: the extracts are read again, and only that patient changed (its EHR).
    conditions = landing / "ehr" / "csv" / "conditions.csv"
    lines = conditions.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("CODE")] = "254637007"
    conditions.write_text("\n".join([*lines, ",".join(row)]) + "\n", encoding="utf-8")
    third = _intake(resources, instance)
    changed_patient = row[header.index("PATIENT")]
    key = patients.loc[patients["source_patient_id"] == changed_patient, "patient_key"].item()
    assert list(third[CHANGED_PATIENTS].value) == [key]
    assert third[CHANGED_SOURCES].value == {key: ["ehr"]}


@pytest.mark.parametrize("stale", ["no state", "another token"])
def test_an_intake_without_a_matching_landing_state_reads_the_extracts(stale):
    import pandas as pd

    previous = {"ehr_patients": pd.DataFrame({"patient_key": ["p1"], "source_patient_id": ["s"], "rows_fingerprint": ["f"]}),
                ingest.LANDING_STATE: pd.DataFrame() if stale == "no state" else pd.DataFrame({"folder": ["ehr"], "landing_token": ["old"]})}
    assert ingest._unchanged_ehr_rows(previous, "new") is None
    previous[ingest.LANDING_STATE] = pd.DataFrame({"folder": ["ehr"], "landing_token": ["new"]})
    assert ingest._unchanged_ehr_rows(previous, "new") == [{"patient_key": "p1", "source_patient_id": "s", "rows_fingerprint": "f"}]
