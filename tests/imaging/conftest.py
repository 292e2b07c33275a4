"""Paths into the shared imaging/radiomics sample data."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sts_dir(shared_data: Path) -> Path:
    return shared_data / "imaging" / "ibsi_sts_002"


@pytest.fixture(scope="session")
def liver_dir(shared_data: Path) -> Path:
    return shared_data / "imaging" / "dcmqi_ct_liver_seg"


@pytest.fixture(scope="session")
def series_files(sts_dir: Path):
    """series_files("CT") -> the STS_002 image instances of that modality, in file-name order."""

    def files(modality: str) -> list[Path]:
        return sorted((sts_dir / "dicom" / modality / "image").glob("*.dcm"))

    return files
