"""Keyed pseudonyms shared by every chain (DICOM, VCF, EHR, notes).

One secret key drives all of them, so the same source patient gets the same
pseudonymous key, the same date shift and the same remapped UIDs wherever the
patient appears. HMAC-SHA256 keeps the mapping one-way without the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from functools import cached_property

from radplan.errors import MissingKeyError
from radplan.settings import DEID_KEY_ENV_VAR, DEMO_ENV_VAR, deid_key_text
from radplan.settings import demo_mode as demo_mode

KEY_ENV_VAR = DEID_KEY_ENV_VAR
# Only ever used when demo mode is switched on explicitly; never for real data.
DEMO_KEY = b"radplan-demo-key--synthetic-data-only--not-for-clinical-use"
MIN_KEY_BYTES = 32

# Dates move back by 1..MAX_SHIFT_DAYS days, never 0, so a shifted date never
# equals the original one.
MAX_SHIFT_DAYS = 730
UID_ROOT = "2.25."


def load_key(*, demo: bool | None = None) -> bytes:
    """The de-identification key from the environment; the demo key only in demo mode."""
    value = deid_key_text()
    if value:
        key = value.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise MissingKeyError(f"{KEY_ENV_VAR} must be at least {MIN_KEY_BYTES} bytes long")
        return key
    if demo_mode() if demo is None else demo:
        return DEMO_KEY
    raise MissingKeyError(
        f"{KEY_ENV_VAR} is not set. Set it from your secret store, or set {DEMO_ENV_VAR}=1 "
        "to use the built-in demo key on synthetic data."
    )


def normalize_patient_id(source_patient_id: str) -> str:
    return str(source_patient_id).strip()


class Pseudonymizer:
    """Deterministic keyed pseudonyms: patient keys, date shifts, UIDs and tokens."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise MissingKeyError(f"de-identification key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_environment(cls, *, demo: bool | None = None) -> "Pseudonymizer":
        return cls(load_key(demo=demo))

    def digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}\x00{value}".encode("utf-8"), hashlib.sha256).digest()

    def patient_key(self, source_patient_id: str) -> str:
        """Pseudonymous patient key, used as Dagster partition key and in the lake."""
        return "p" + self.digest("patient", normalize_patient_id(source_patient_id)).hex()[:16]

    def date_shift_days(self, source_patient_id: str) -> int:
        """Per-patient shift in days (negative), the same for DICOM, EHR and notes."""
        raw = int.from_bytes(self.digest("date-shift", normalize_patient_id(source_patient_id))[:4], "big")
        return -(raw % MAX_SHIFT_DAYS + 1)

    def shift_date(self, value: dt.date, source_patient_id: str) -> dt.date:
        return value + dt.timedelta(days=self.date_shift_days(source_patient_id))

    def uid(self, original_uid: str) -> str:
        """A new DICOM UID under the 2.25 root (UUID-derived form, at most 44 characters)."""
        number = int.from_bytes(self.digest("uid", original_uid.strip().rstrip("\x00"))[:16], "big")
        return f"{UID_ROOT}{number}"

    def token(self, purpose: str, value: str, length: int = 12) -> str:
        """A short opaque token for a value (accession numbers, encounter ids, sample names)."""
        return self.digest(purpose, value).hex()[:length]

    @cached_property
    def key_fingerprint(self) -> str:
        """Identifies which key was used without revealing it (safe for metadata)."""
        return hashlib.sha256(b"radplan-key-fingerprint\x00" + self._key).hexdigest()[:12]
