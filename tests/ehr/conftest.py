"""EHR test fixtures: the note de-identifier is built once per session (spaCy load)."""

from __future__ import annotations

import datetime as dt

import pytest


@pytest.fixture(scope="session")
def note_deidentifier():
    from radplan.ehr.notes import NoteDeidentifier

    return NoteDeidentifier()


@pytest.fixture(scope="session")
def fhir_resources(shared_data):
    from radplan.ehr.extracts import read_fhir_ndjson

    resources, quarantined = read_fhir_ndjson(shared_data / "ehr" / "synthea_fhir_bulk")
    assert quarantined == []
    return resources


@pytest.fixture(scope="session")
def synthea_raw(shared_data):
    from radplan.ehr.extracts import read_synthea_csv

    tables, quarantined = read_synthea_csv(shared_data / "ehr" / "synthea_csv")
    assert quarantined == []
    return tables


@pytest.fixture(scope="session")
def synthea_deid(synthea_raw, note_deidentifier):
    from radplan.ehr.deid import deidentify_tables
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    return deidentify_tables(synthea_raw, Pseudonymizer(DEMO_KEY), reference_date=dt.date(2024, 1, 1), deidentifier=note_deidentifier)
