"""The intake opens a genomics file's header only when the file is new or changed (path, size, modification time)."""

from __future__ import annotations

import os
import shutil

from dagster import DagsterInstance, materialize

import radplan.inventory
from radplan_assets import ingest
from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource
from radplan_resources.io_manager import own_previous_output
from radplan_resources.pacs import LandingFolderPacs
from support import with_lake_io


def test_unchanged_genomics_files_are_not_re_read_and_a_touched_one_is(shared_data, tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    (landing / "genomics").mkdir(parents=True)
    (landing / "dicom").mkdir()
    for name in ("vcf2maf_test.vcf", "vcf2maf_test_mutect.vcf"):
        shutil.copy(shared_data / "genomics" / "vcf" / name, landing / "genomics" / name)
    shutil.copy(shared_data / "genomics" / "pgx" / "pharmcat.example.vcf", landing / "genomics" / "pharmcat.example.vcf")
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = with_lake_io({"lake": lake, "landing": LandingZoneResource(folder=str(landing)),
                              "pacs": LandingFolderPacs(folder=str(landing / "dicom")), "deid_key": DeidKeyResource(demo=True)})
    instance = DagsterInstance.ephemeral()
    opened = []
    real_samples = radplan.inventory.vcf_samples
    monkeypatch.setattr(radplan.inventory, "vcf_samples", lambda path: opened.append(path.name) or real_samples(path))

    def intake() -> list[str]:
        opened.clear()
        assert materialize([ingest.landing_inventory], resources=resources, instance=instance).success
        return sorted(opened)

    assert intake() == ["pharmcat.example.vcf", "vcf2maf_test.vcf", "vcf2maf_test_mutect.vcf"]
    files = own_previous_output(lake, "landing_inventory")["genomics_files"]
    assert len(files) >= 3 and files["sample"].str.len().gt(0).all()

    assert intake() == []  # nothing changed: no header opened, the same rows
    assert own_previous_output(lake, "landing_inventory")["genomics_files"].equals(files)

    touched = landing / "genomics" / "vcf2maf_test.vcf"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert intake() == ["vcf2maf_test.vcf"]  # only the file whose modification time moved
    again = own_previous_output(lake, "landing_inventory")["genomics_files"]
    assert again.drop(columns=["mtime_ns"]).equals(files.drop(columns=["mtime_ns"]))
