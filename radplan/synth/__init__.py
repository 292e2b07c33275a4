"""Synthetic cohort generator: what a hospital would deliver (DICOM CT + SEG, VCF, EHR CSV/FHIR,
notes) with realistic synthetic PHI, plus the hidden truth to test every pipeline stage against."""

from radplan.synth.generator import generate_cohort

__all__ = ["generate_cohort"]
