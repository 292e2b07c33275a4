"""Console logging of the ``radplan`` command: radplan's own messages and every library's warnings by default,
the libraries' informational chatter (pyradiomics per feature class, Lightning tips, Great Expectations'
temporary folders, MLflow/alembic migrations, Spark) only with ``--verbose``.

Levels are set per library logger, never globally: a WARNING or ERROR from any library still reaches the
user, and so do Python ``warnings``. Libraries that reset their own logger's level when they are imported
(Lightning does) are held back by the console handler's filter, which lets a record below WARNING through
only when it is radplan's own.
"""

from __future__ import annotations

import logging
import sys

# Loggers of the libraries the pipeline drives that log at INFO while working.
CHATTY_LIBRARIES = (
    "radiomics", "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
    "great_expectations", "mlflow", "alembic", "py4j", "pyspark", "monai", "torch", "urllib3", "botocore",
    "boto3", "s3transfer", "matplotlib", "PIL", "numexpr", "filelock", "fsspec", "spacy",
    "highdicom", "pydicom", "httpx", "asyncio",
)
# Libraries whose WARNINGs are routine notices rather than problems, shown with --verbose only: presidio warns,
# every time an analyzer is built, that its Spanish/Italian/Polish recognizers are not loaded for English text,
# and for every note that spaCy entity labels it does not use (CARDINAL, QUANTITY, ...) are "kept anyway".
# MONAI warns in every process that the optional GPU DICOM decoder (nvImageCodec) is not installed.
# pyradiomics warns on every extractor that GLCM Sum Average is 2 x Joint Average (both are in our feature set).
ROUTINE_WARNINGS = ("presidio-analyzer", "monai.data.nvimgcodec_pydicom_plugin", "radiomics.glcm")
OWN_LOGGERS = ("radplan", "radplan_cli", "radplan_assets", "radplan_resources", "__main__")
FORMAT = "%(levelname)s %(name)s: %(message)s"


class _ConsoleFilter(logging.Filter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.WARNING:
            return True
        return any(record.name == own or record.name.startswith(own + ".") for own in OWN_LOGGERS)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so log lines go above a progress display."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it; the current sys.stderr is always used
        pass


def configure_logging(verbose: bool = False) -> None:
    """Set up the console log of this process (the command, or a worker process of ``radplan demo``)."""
    from radplan.settings import leave_library_logging_to_the_application

    leave_library_logging_to_the_application()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_radplan_console", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler._radplan_console = True
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ConsoleFilter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    for name in ROUTINE_WARNINGS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
