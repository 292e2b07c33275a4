"""Helpers shared by the synth tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path


def dicom_files(cohort: Path, bad_paths: set[str]) -> list[Path]:
    """Every .dcm in the landing zone except the deliberately broken ones."""
    return [p for p in sorted((cohort / "landing" / "dicom").rglob("*.dcm")) if str(p.relative_to(cohort)) not in bad_paths]
