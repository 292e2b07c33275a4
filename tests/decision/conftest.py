"""Fixtures for the decision-support tests: the packaged rule base and the shared trial records."""

from __future__ import annotations

import pytest

from radplan.decision.rules import load_rule_base
from radplan.decision.trials import load_trial_catalog


@pytest.fixture(scope="session")
def rule_base():
    return load_rule_base()


@pytest.fixture(scope="session")
def trial_catalog(shared_data):
    return load_trial_catalog([shared_data / "trials"])
