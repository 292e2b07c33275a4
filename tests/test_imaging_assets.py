"""Imaging assets end to end on real services: Orthanc as the PACS, then de-identification and masks."""

from __future__ import annotations

import re

import pydicom
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from radplan_assets import imaging, ingest
from radplan_assets.partitions import PATIENTS_PARTITION_NAME
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource, OrthancPacs
from support import with_lake_io, with_upstream_sources

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]


def test_orthanc_study_is_ingested_deidentified_and_masked(orthanc, shared_data, tmp_path):
    sts = shared_data / "imaging" / "ibsi_sts_002" / "dicom" / "CT"
    orthanc.store(sorted((sts / "image").glob("*.dcm")) + sorted((sts / "mask").glob("*.dcm")))
    resources = {
        "lake": LakeResource(root=str(tmp_path / "lake")),
        "landing": LandingZoneResource(folder=str(tmp_path / "landing")),
        "pacs": OrthancPacs(url=orthanc.url),
        "deid_key": DeidKeyResource(demo=True),
    }
    instance = DagsterInstance.ephemeral()
    assets = [ingest.landing_inventory, imaging.pacs_studies, imaging.deid_studies, imaging.imaging_metadata, imaging.normalized_volumes, imaging.lesion_masks]
    assert materialize(with_upstream_sources([ingest.landing_inventory]), resources=with_lake_io(resources), instance=instance).success
    (key,) = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
    assert re.fullmatch(r"p[0-9a-f]{16}", key)

    result = materialize(with_upstream_sources(assets), resources=with_lake_io(resources), instance=instance, partition_key=key, selection=AssetSelection.groups("imaging"))
    assert result.success

    deid_files = sorted((tmp_path / "lake" / "deid" / "dicom" / key).rglob("*.dcm"))
    assert len(deid_files) == 49  # 48 CT slices + the RTSTRUCT
    for path in deid_files[:5]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientID == key and ds.PatientIdentityRemoved == "YES"
        assert "STS_002" not in str(ds.get("StudyDescription", ""))
    lake = resources["lake"]
    metadata = lake.read_table("features", "imaging_metadata", key)
    assert sorted(metadata["modality"]) == ["CT", "RTSTRUCT"]
    masks = lake.read_table("features", "lesion_masks", key)
    assert masks["source"].tolist() == ["RTSTRUCT"] and masks["lesions"].iloc[0] >= 1
