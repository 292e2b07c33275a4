"""Keyed pseudonyms: deterministic per key, different across keys, well-formed."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from radplan.errors import MissingKeyError
from radplan.pseudonym import DEMO_KEY, KEY_ENV_VAR, Pseudonymizer, load_key


def test_same_key_same_pseudonyms_and_other_key_differs():
    a, b = Pseudonymizer(DEMO_KEY), Pseudonymizer(DEMO_KEY)
    other = Pseudonymizer(b"another-key-of-at-least-thirty-two-bytes!")
    assert a.patient_key("MRN0001") == b.patient_key(" MRN0001 ")
    assert a.patient_key("MRN0001") != other.patient_key("MRN0001")
    assert a.patient_key("MRN0001") != a.patient_key("MRN0002")
    assert re.fullmatch(r"p[0-9a-f]{16}", a.patient_key("MRN0001"))


def test_date_shift_is_per_patient_nonzero_and_bounded():
    p = Pseudonymizer(DEMO_KEY)
    shifts = {p.date_shift_days(f"MRN{i:04d}") for i in range(300)}
    assert all(-730 <= s <= -1 for s in shifts)
    assert len(shifts) > 100  # spread, not a constant
    assert p.shift_date(dt.date(2020, 1, 31), "MRN0001") == dt.date(2020, 1, 31) + dt.timedelta(days=p.date_shift_days("MRN0001"))


def test_uids_are_valid_dicom_uids_and_consistent():
    p = Pseudonymizer(DEMO_KEY)
    uid = p.uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320")
    assert uid == p.uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320\x00")
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert re.fullmatch(r"2\.25\.(0|[1-9]\d*)", uid)
    assert uid != p.uid("1.2.3")


def test_key_required_outside_demo_mode(monkeypatch):
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    with pytest.raises(MissingKeyError, match=KEY_ENV_VAR):
        load_key(demo=False)
    assert load_key(demo=True) == DEMO_KEY
    monkeypatch.setenv(KEY_ENV_VAR, "short")
    with pytest.raises(MissingKeyError, match="at least"):
        load_key(demo=True)
    monkeypatch.setenv(KEY_ENV_VAR, "k" * 40)
    assert load_key(demo=False) == b"k" * 40


def test_fingerprint_does_not_reveal_the_key():
    p = Pseudonymizer(DEMO_KEY)
    assert DEMO_KEY.hex()[:12] not in p.key_fingerprint and len(p.key_fingerprint) == 12
