"""The radplan command's console log: quiet libraries by default, everything with --verbose, warnings always."""

from __future__ import annotations

import logging

import pytest

from radplan_cli.logs import configure_logging


@pytest.fixture()
def console(capsys):
    """configure_logging as the command runs it; restores the root logger and library levels afterwards."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    names = ("radiomics", "lightning.pytorch", "presidio-analyzer", "radplan.test", "some_new_library")
    levels = {name: logging.getLogger(name).level for name in names}

    def read(verbose: bool, emit) -> str:
        configure_logging(verbose=verbose)
        emit()
        return capsys.readouterr().err

    yield read
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _library_chatter_and_warnings() -> None:
    logging.getLogger("radiomics").info("Calculating features for glcm")  # pyradiomics' per-class line
    # Lightning resets its logger to INFO when it is imported, i.e. after the command configured logging.
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    logging.getLogger("lightning.pytorch").info("Tip: For seamless cloud uploads, try installing litmodels")
    logging.getLogger("some_new_library").info("Created temporary directory /tmp/gx-xyz")
    logging.getLogger("radiomics").warning("Shape features are only available in 3D")
    logging.getLogger("some_new_library").error("could not read the file")
    logging.getLogger("radplan.test").info("stage done")


def test_default_hides_library_info_and_keeps_warnings_and_our_messages(console):
    err = console(False, _library_chatter_and_warnings)
    assert "Calculating features" not in err and "Tip:" not in err and "temporary directory" not in err
    assert "WARNING radiomics: Shape features are only available in 3D" in err
    assert "ERROR some_new_library: could not read the file" in err
    assert "INFO radplan.test: stage done" in err


def test_verbose_shows_library_info(console):
    err = console(True, _library_chatter_and_warnings)
    assert "INFO radiomics: Calculating features for glcm" in err
    assert "Tip: For seamless cloud uploads" in err
    assert "Created temporary directory" in err


def test_routine_presidio_notices_only_with_verbose_but_its_errors_always(console):
    def presidio():
        log = logging.getLogger("presidio-analyzer")
        log.warning("Entity CARDINAL is not mapped to a Presidio entity, but keeping anyway.")
        log.error("analyzer failed")

    quiet = console(False, presidio)
    assert "CARDINAL" not in quiet and "analyzer failed" in quiet
    assert "CARDINAL" in console(True, presidio)


def test_python_warnings_still_reach_the_user():
    # In a fresh interpreter: pytest would catch the warning itself.
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = ("import warnings; from radplan_cli.logs import configure_logging; configure_logging(verbose=False); "
            "warnings.warn('this pattern has match groups', UserWarning)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(repo), "PYTHONWARNINGS": "default"})
    assert result.returncode == 0, result.stderr
    assert "UserWarning: this pattern has match groups" in result.stderr


def test_configuring_twice_keeps_one_console_handler(console):
    configure_logging(verbose=False)
    configure_logging(verbose=True)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_radplan_console", False)]
    assert len(ours) == 1


def test_mlflow_info_goes_through_the_command_log():
    # MLflow configures its own INFO console handler on import unless MLFLOW_CONFIGURE_LOGGING is false.
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = ("from radplan_cli.logs import configure_logging; configure_logging(verbose=False); import mlflow, logging; "
            "logging.getLogger('mlflow.store.db.utils').info('Creating initial MLflow database tables...'); "
            "logging.getLogger('mlflow.pytorch').warning('Saving pytorch model by Pickle')")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_CONFIGURE_LOGGING"}
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                            env={**env, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr
    assert "Creating initial MLflow database tables" not in result.stderr
    assert "WARNING mlflow.pytorch: Saving pytorch model by Pickle" in result.stderr
