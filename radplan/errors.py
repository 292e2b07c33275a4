"""Clean, documented errors for bad input.

Every parser raises a subclass of :class:`RadplanInputError` for input it cannot
accept. Assets catch exactly these, quarantine the file with the reason and go
on with the rest; any other exception is a bug and fails the run.
"""


class RadplanInputError(Exception):
    """Input that cannot be processed; the file is quarantined, the run goes on."""

    stage = "input"


class InvalidDicomError(RadplanInputError):
    stage = "dicom"


class BurnedInAnnotationError(InvalidDicomError):
    stage = "dicom-deid"


class InvalidVcfError(RadplanInputError):
    stage = "vcf"


class InvalidAlignmentError(RadplanInputError):
    stage = "alignment"


class InvalidEhrRecordError(RadplanInputError):
    stage = "ehr"


class InvalidNoteError(RadplanInputError):
    stage = "notes"


class MissingKeyError(RuntimeError):
    """The de-identification key is missing outside demo mode (a configuration error, not bad input)."""
