"""Files still arriving under hidden names are invisible to every landing scan until they get a visible name."""

from __future__ import annotations

import shutil

from radplan.inventory import scan_genomics
from radplan_resources import LandingFolderPacs
from radplan.inventory import landing_fingerprint

CT_SLICE = "imaging/ibsi_sts_002/dicom/PET/image/000022.dcm"
VCF = "genomics/vcf/cyvcf2_test.snpeff.vcf"


def test_partial_uploads_in_hidden_folders_are_not_read_until_renamed(tmp_path, shared_data):
    dicom = tmp_path / "dicom"
    (dicom / "study").mkdir(parents=True)
    shutil.copy(shared_data / CT_SLICE, dicom / "study" / "1.dcm")
    pacs = LandingFolderPacs(folder=str(dicom))
    visible = landing_fingerprint(dicom)
    studies, unreadable = pacs.list_studies()
    assert len(studies) == 1 and unreadable == []

    # A transfer tool staging a second file under a dot-folder, and a half-written dot-file.
    (dicom / ".incoming" / "study").mkdir(parents=True)
    (dicom / ".incoming" / "study" / "2.dcm").write_bytes((shared_data / CT_SLICE).read_bytes()[:300])
    (dicom / "study" / ".3.dcm.part").write_bytes(b"DICM")
    assert landing_fingerprint(dicom) == visible
    assert [p.name for p in pacs.iter_files()] == ["1.dcm"]
    assert pacs.list_studies()[1] == []  # the truncated staging file is not quarantined as corrupt

    # Once renamed into place, it is seen (and, being truncated, reported as unreadable).
    (dicom / ".incoming" / "study" / "2.dcm").rename(dicom / "study" / "2.dcm")
    assert landing_fingerprint(dicom) != visible
    assert len(pacs.list_studies()[1]) == 1

    genomics = tmp_path / "genomics"
    (genomics / ".partial").mkdir(parents=True)
    shutil.copy(shared_data / VCF, genomics / ".partial" / "sample.vcf")
    assert list(scan_genomics(genomics)) == []
    (genomics / ".partial" / "sample.vcf").rename(genomics / "sample.vcf")
    assert [found.path.name for found in scan_genomics(genomics)] == ["sample.vcf"]
