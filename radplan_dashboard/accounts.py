"""Local accounts: argon2id password hashes and roles in one JSON file under RADPLAN_HOME (never in the repository)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from radplan.lake import atomic_write_text
from radplan.monitoring import CLINICIAN_ID, PATIENT_KEY

CLINICIAN = "clinician"
DATA_ENGINEER = "data_engineer"
ADMINISTRATOR = "administrator"
ROLES = (CLINICIAN, DATA_ENGINEER, ADMINISTRATOR)
ROLE_LABELS = {CLINICIAN: "clinician", DATA_ENGINEER: "data engineer", ADMINISTRATOR: "administrator"}
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
FILE_VERSION = 1


class AccountError(ValueError):
    """A refused account change (bad name, role or password), with the reason."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    source: str  # "local" or "oidc"


def check_username(name: str) -> str:
    # The name goes into the feedback CSV's clinician column: the same rule as there (no names, no patient keys).
    if not CLINICIAN_ID.match(name or "") or PATIENT_KEY.match(name):
        raise AccountError("user name must be a role or pseudonymous id (a letter, then letters, digits, . _ : -; "
                           "at most 64 characters; no personal names, no patient keys), e.g. oncologist-03")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"password must have at most {MAX_PASSWORD_CHARS} characters")
    return password


class UserStore:
    """``users.json``: {"version": 1, "users": {name: {"role", "password_hash", "created_at"}}}, mode 0600."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    @property
    def _dummy_hash(self) -> str:
        # Verified against when the user is unknown, so a wrong name costs as long as a wrong password.
        if self._dummy is None:
            self._dummy = self.hasher.hash("radplan-no-such-user-placeholder")
        return self._dummy

    def _load(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise AccountError(f"{self.path}: account file is not readable JSON ({type(error).__name__})") from None
        users = payload.get("users") if isinstance(payload, dict) else None
        if not isinstance(users, dict):
            raise AccountError(f"{self.path}: account file has no 'users' object")
        return users

    def _save(self, users: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        written = atomic_write_text(self.path, json.dumps({"version": FILE_VERSION, "users": users}, indent=2, sort_keys=True))
        os.chmod(written, 0o600)

    def add(self, name: str, role: str, password: str) -> User:
        check_username(name), check_role(role), check_password(password)
        users = self._load()
        if name in users:
            raise AccountError(f"user {name} already exists")
        users[name] = {"role": role, "password_hash": self.hasher.hash(password),
                       "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._save(users)
        return User(name, role, "local")

    def set_password(self, name: str, password: str) -> None:
        check_password(password)
        users = self._load()
        if name not in users:
            raise AccountError(f"no user {name}")
        users[name]["password_hash"] = self.hasher.hash(password)
        self._save(users)

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        users = self._load()
        if name not in users:
            raise AccountError(f"no user {name}")
        users[name]["role"] = role
        self._save(users)

    def remove(self, name: str) -> None:
        users = self._load()
        if name not in users:
            raise AccountError(f"no user {name}")
        del users[name]
        self._save(users)

    def get(self, name: str) -> User | None:
        entry = self._load().get(name)
        return User(name, entry["role"], "local") if entry else None

    def list(self) -> list[User]:
        return [User(name, entry["role"], "local") for name, entry in sorted(self._load().items())]

    def verify(self, name: str, password: str) -> User | None:
        """The user when name and password match, else None (no hint which of the two was wrong)."""
        entry = self._load().get(name) if isinstance(name, str) else None
        try:
            self.hasher.verify(entry["password_hash"] if entry else self._dummy_hash, password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        if self.hasher.check_needs_rehash(entry["password_hash"]):
            self.set_password(name, password)
        return User(name, entry["role"], "local")


def oidc_username(issuer: str, subject: str) -> str:
    """A pseudonymous id for a single-sign-on user: ``sso-`` and a hash of issuer and subject, so no e-mail address or
    personal name from the identity provider reaches the feedback CSV or the audit log."""
    return "sso-" + hashlib.sha256(f"{issuer}\x00{subject}".encode()).hexdigest()[:12]
