"""The de-identification key: start-up refuses a missing or short one outside demo mode, and a real
key, once used, appears nowhere in Dagster's storage, the lake or the logs (neither raw, hex nor base64)."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from radplan.pseudonym import Pseudonymizer
from radplan.synth import generate_cohort
from reliability_helpers import HELPERS, REPO_ROOT, stage_env

# Distinctive, and long enough (>= 32 bytes) to be accepted.
PRODUCTION_KEY = "k7Q9-radplan-fault-test-key-ZX41-vW83-distinctive"


def _without_key_or_demo(home: Path, **extra: str) -> dict[str, str]:
    env = stage_env(home, **extra)
    if "RADPLAN_DEMO" not in extra:
        env.pop("RADPLAN_DEMO")
    return env


def _import_definitions(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import definitions"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_loading_the_code_location_without_a_key_outside_demo_mode_is_refused(tmp_path):
    result = _import_definitions(_without_key_or_demo(tmp_path))
    assert result.returncode != 0
    assert "MissingKeyError: RADPLAN_DEID_KEY is not set" in result.stderr
    assert "RADPLAN_DEMO=1" in result.stderr  # says how to run on synthetic data instead


def test_a_short_key_is_refused_without_being_echoed(tmp_path):
    short = "tooshort-Qx81-key"
    result = _import_definitions(_without_key_or_demo(tmp_path, RADPLAN_DEID_KEY=short))
    assert result.returncode != 0
    assert "RADPLAN_DEID_KEY must be at least 32 bytes long" in result.stderr
    assert short not in result.stdout + result.stderr


def test_radplan_materialize_refuses_a_missing_key_with_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "radplan_cli.main", "materialize"], cwd=REPO_ROOT, env=_without_key_or_demo(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "radplan materialize: RADPLAN_DEID_KEY is not set. Set it from your secret store, or set RADPLAN_DEMO=1 "
        "to use the built-in demo key on synthetic data."
    ]
    assert not (tmp_path / "lake").exists()  # refused before touching anything


def _sqlite_dump(path: Path) -> bytes:
    """Every row as SQL text (a raw byte scan could miss a value split across overflow pages)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return "\n".join(db.iterdump()).encode("utf-8", "surrogateescape")


def _stored_bytes(root: Path):
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data
        if data.startswith(b"SQLite format 3\x00"):
            yield path, _sqlite_dump(path)


@pytest.mark.slow
def test_the_key_never_reaches_dagster_storage_the_lake_or_the_logs(tmp_path):
    home = tmp_path / "home"
    generate_cohort(home, 1, seed=13)
    env = stage_env(home, RADPLAN_DEID_KEY=PRODUCTION_KEY, RADPLAN_DEMO="0")
    process = subprocess.run([sys.executable, str(HELPERS), "ingest_job", "patient_preparation_job"], cwd=REPO_ROOT, env=env,
                             capture_output=True, timeout=900)
    log = process.stdout + process.stderr
    assert process.returncode == 0, log.decode(errors="replace")[-4000:]

    # The production key was the one used: partition keys are its pseudonyms, not the demo key's.
    (mrn,) = json.loads((home / "truth" / "truth.json").read_text())["patients"]
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        assert instance.get_dynamic_partitions("patients") == [Pseudonymizer(PRODUCTION_KEY.encode()).patient_key(mrn)]
        entries = [entry for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        materializations = [e for e in entries if e.dagster_event and e.dagster_event.is_step_materialization]
        assert len(materializations) >= 10
        structured = "\n".join(repr(e) for e in entries).encode()

    key = PRODUCTION_KEY.encode()
    forms = {"raw": key, "hex": key.hex().encode(), "base64": base64.b64encode(key).rstrip(b"=")}
    places = [("event records", structured), ("run output", log)]
    places += [(str(path.relative_to(home)), data) for root in (home / "dagster_home", home / "lake") for path, data in _stored_bytes(root)]
    assert len(places) > 100
    found = [f"{form} in {name}" for name, data in places for form, needle in forms.items() if needle in data]
    assert found == []
