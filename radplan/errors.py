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


class ServiceUnavailableError(RuntimeError):
    """An external service (PACS, object store, tracking server) still failed after every retry.

    Not bad input: nothing is quarantined, the step fails and Dagster's retry policy may run it again.
    The message names the service without credentials.
    """


class PacsUnavailableError(ServiceUnavailableError):
    """The PACS did not answer, timed out or kept answering 5xx for ``attempts`` tries."""

    def __init__(self, url: str, attempts: int, last_error: str):
        self.url = url
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"PACS at {url} unavailable after {attempts} attempts (last error: {last_error})")
