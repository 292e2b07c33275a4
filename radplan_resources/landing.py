"""The landing zone: where hospital systems drop VCF/BAM files and EHR extracts (the DICOM part is the PACS)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from radplan.inventory import ehr_row_fingerprints


class LandingZoneResource(ConfigurableResource):
    folder: str = Field(description="Landing folder (RADPLAN_HOME/landing by default)")

    @property
    def genomics_dir(self) -> Path:
        return Path(self.folder) / "genomics"

    @property
    def ehr_csv_dir(self) -> Path:
        return Path(self.folder) / "ehr" / "csv"

    @property
    def ehr_fhir_dir(self) -> Path:
        return Path(self.folder) / "ehr" / "fhir"

    @property
    def trials_dir(self) -> Path:
        return Path(self.folder) / "trials"

    @property
    def feedback_dir(self) -> Path:
        return Path(self.folder) / "feedback"

    def watched_folders(self, pacs: object = None) -> dict[str, list[Path]]:
        """The folders each arrival sensor watches, by sensor name part; DICOM only for a landing-folder PACS."""
        from radplan_resources.pacs import LandingFolderPacs

        folders = {"genomics": [self.genomics_dir], "ehr": [self.ehr_csv_dir, self.ehr_fhir_dir]}
        if isinstance(pacs, LandingFolderPacs):
            folders["dicom"] = [Path(pacs.folder)]
        return folders

    def ehr_fingerprints(self) -> dict[str, str]:
        """Source patient id (PHI) -> hash of that patient's rows in the EHR extracts (radplan.inventory)."""
        return ehr_row_fingerprints(self.ehr_csv_dir, self.ehr_fhir_dir)
