"""A small cohort generated once per session (twice with the same seed, once with another)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radplan.synth import generate_cohort

SEED = 11
N_PATIENTS = 4


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort_a")
    summary = generate_cohort(out, N_PATIENTS, SEED)
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="session")
def cohort_same_seed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort_b")
    generate_cohort(out, N_PATIENTS, SEED)
    return out


@pytest.fixture(scope="session")
def cohort_other_seed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort_c")
    generate_cohort(out, 2, SEED + 1)
    return out


@pytest.fixture(scope="session")
def truth(cohort) -> dict:
    return json.loads((cohort / "truth" / "truth.json").read_text())


@pytest.fixture(scope="session")
def bad_paths(cohort) -> set[str]:
    return {entry["path"] for entry in json.loads((cohort / "truth" / "bad_inputs.json").read_text())}
