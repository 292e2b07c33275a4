"""`radplan --help` answers at once: the command and every sub-command's help import no heavy library.

Behaviour, not a stopwatch (benchmarks/bench_cli.py measures the seconds): each command imports pandas,
pydicom, SimpleITK, torch, dagster, ... inside its function, so help never pays for them. Also checks
that progress bars and library log lines stay out of output that is not a terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Libraries that take from a tenth of a second to several seconds to import.
HEAVY = {
    "pandas", "pyarrow", "numpy", "scipy", "sklearn", "torch", "lightning", "monai", "mlflow", "dagster", "pyspark",
    "great_expectations", "SimpleITK", "pydicom", "highdicom", "radiomics", "nibabel", "matplotlib", "fhir",
    "spacy", "presidio_analyzer", "cyvcf2", "pysam", "yaml", "rich", "tqdm", "definitions", "radplan_assets",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def test_radplan_help_imports_no_heavy_module():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "radplan_cli.main", "--help"], cwd=REPO_ROOT,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deid-dicom" in result.stdout and "--verbose" in result.stdout
    # -X importtime: one "import time: self | cumulative | module" line per imported module.
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "radplan_cli" in imported and "radplan" in imported  # the parse really saw the imports
    assert imported & HEAVY == set()


# In one interpreter: every sub-command's help through the same main() the console script runs; then the
# modules it had to import. Imports accumulate, so any one help that pulls in a heavy library shows here.
EVERY_SUBCOMMAND_HELP = """
import json, sys
import radplan_cli.main as radplan_cli
commands = sorted(radplan_cli.build_parser()._subparsers._group_actions[0].choices)
for command in commands:
    try:
        radplan_cli.main([command, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, (command, exit.code)
print(json.dumps({"commands": commands, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_every_subcommand_help_imports_no_heavy_module():
    result = subprocess.run([sys.executable, "-c", EVERY_SUBCOMMAND_HELP], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"demo", "deid-dicom", "radiomics", "vcf-to-parquet", "pgx", "deid-text", "decision-recommend",
            "privacy-scan", "synth", "audit-check"} <= set(report["commands"])
    assert set(report["modules"]) & HEAVY == set()


def test_verbose_is_accepted_before_and_after_the_subcommand():
    import radplan_cli.main as radplan_cli

    parser = radplan_cli.build_parser()
    assert parser.parse_args(["--verbose", "decision-rules"]).verbose is True
    assert parser.parse_args(["decision-rules", "-v"]).verbose is True
    assert parser.parse_args(["decision-rules"]).verbose is False


@pytest.fixture()
def shared_dicom_series(shared_data) -> Path:
    return shared_data / "imaging" / "ibsi_sts_002" / "dicom"


def test_no_progress_bar_or_library_chatter_when_output_is_not_a_terminal(shared_dicom_series, tmp_path):
    # A real CT series from the shared data (IBSI STS), de-identified with stdout and stderr captured (pipes).
    result = subprocess.run([sys.executable, "-m", "radplan_cli.main", "deid-dicom", str(shared_dicom_series), str(tmp_path / "out")],
                            cwd=REPO_ROOT, env={**_env(), "RADPLAN_DEMO": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # stdout is exactly the JSON summary
    assert summary["instances_written"] > 0
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr  # no bar redrawn, no terminal codes
    assert "━" not in result.stdout + result.stderr


def run_on_terminal(command: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal, as in an interactive shell; (exit code, output)."""
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env={**env, "COLUMNS": "120", "TERM": "xterm"},
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], timeout)
            if not ready:
                raise TimeoutError(" ".join(command))
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal(shared_dicom_series, tmp_path):
    code, output = run_on_terminal([sys.executable, "-m", "radplan_cli.main", "deid-dicom", str(shared_dicom_series), str(tmp_path / "out")],
                                   {**_env(), "RADPLAN_DEMO": "1"})
    assert code == 0, output[-2000:]
    files = sum(1 for p in shared_dicom_series.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert "de-identifying DICOM files" in output
    assert f"/{files}" in output  # the bar counts the input files
    assert '"instances_written"' in output  # and the summary still follows it


def test_the_radiomics_cli_offers_the_librarys_modes_and_configurations():
    # The parser spells them out so that `--help` imports no imaging library; they must not drift from the library's.
    from radplan.imaging import ibsi_conformance, radiomics, radiomics_cli

    assert radiomics_cli.MODES == radiomics.MODES
    assert radiomics_cli.CONFIGURATIONS == ibsi_conformance.CONFIGURATIONS
