"""The landing zone: where hospital systems drop VCF/BAM files and EHR extracts (the DICOM part is the PACS)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


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
