"""Local accounts: argon2id hashes in a 0600 file under RADPLAN_HOME, managed by `python -m radplan_dashboard users`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from radplan_dashboard.accounts import AccountError, UserStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "radplan_dashboard", "users", "--home", str(home), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_adds_lists_and_removes_accounts_with_hashed_passwords(tmp_path):
    home = tmp_path / "home"
    password = "a long enough password"
    added = run_cli(home, "add", "oncologist-03", "--role", "clinician", "--password-stdin", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    path = home / "dashboard" / "users.json"
    text = path.read_text()
    assert password not in text
    assert json.loads(text)["users"]["oncologist-03"]["password_hash"].startswith("$argon2id$")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert UserStore(path).verify("oncologist-03", password).role == "clinician"
    assert UserStore(path).verify("oncologist-03", password + "x") is None
    assert run_cli(home, "list").stdout.strip() == "oncologist-03\tclinician"
    duplicate = run_cli(home, "add", "oncologist-03", "--role", "clinician", "--password-stdin", stdin=password + "\n")
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    UserStore(path).remove("oncologist-03")
    assert UserStore(path).list() == []


@pytest.mark.parametrize("name", ["Jane Doe", "jane@example.org", "p0123456789abcdef", "", "9lives"])
def test_names_that_could_identify_a_person_or_patient_are_refused(tmp_path, name):
    with pytest.raises(AccountError, match="pseudonymous id"):
        UserStore(tmp_path / "users.json").add(name, "clinician", "a long enough password")


def test_short_passwords_and_unknown_roles_are_refused(tmp_path):
    store = UserStore(tmp_path / "users.json")
    with pytest.raises(AccountError, match="at least 12"):
        store.add("oncologist-1", "clinician", "short")
    with pytest.raises(AccountError, match="role must be one of"):
        store.add("oncologist-1", "superuser", "a long enough password")
    assert not (tmp_path / "users.json").exists()
