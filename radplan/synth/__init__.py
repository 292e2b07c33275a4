"""Synthetic cohort generator: what a hospital would deliver (DICOM CT + SEG, VCF, EHR CSV/FHIR,
notes) with realistic synthetic PHI, plus the hidden truth to test every pipeline stage against."""

__all__ = ["generate_cohort"]


def __getattr__(name: str):
    # Loaded on first use, so importing radplan.synth.cli for `radplan --help` does not pull in the generator
    # (matplotlib, highdicom, fhir.resources).
    if name == "generate_cohort":
        from radplan.synth.generator import generate_cohort

        return generate_cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
