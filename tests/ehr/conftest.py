"""EHR test fixtures: the note de-identifier is built once per session (spaCy load)."""

from __future__ import annotations

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
