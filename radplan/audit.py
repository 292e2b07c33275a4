"""Append-only audit log of patient-level data access, with a per-file hash chain.

One JSON line per read, write, quarantine or delete of patient-level data:
UTC time, Dagster run id, asset key, partition key, action, zone, target (table
or lake-relative path), the data's patient key, rows, bytes and who (launcher
tag, OS user, host, process). Lines carry keys, table names and counts only:
never PHI, never secrets.

Files are per UTC day (``audit-YYYY-MM-DD.jsonl``). Writers from several
processes take an exclusive ``flock`` on the day file, read its last line and
append one line whose ``prev`` is the SHA-256 of that line, in one ``write`` on an
``O_APPEND`` descriptor. Removing, editing or reordering a line therefore breaks
the chain at the next line (``verify_chain``); removing the *last* lines of a
file is not visible in the chain, which is what the per-run completeness check
(materializations vs write records) is for.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ACTIONS = ("read", "write", "quarantine", "delete")
GENESIS = "0" * 64
MAX_LINE_BYTES = 4000  # under PIPE_BUF and a page: one write() per line
TAIL_WINDOW = 8192
FILE_PREFIX = "audit-"
AUDIT_FOLDER = "audit"  # <lake>/audit: beside the zones, never rebuilt


def process_identity() -> dict:
    """Who, when nothing better is known: OS user, host, process id and program name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        user = str(os.getuid())
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return {"os_user": user, "host": socket.gethostname(), "pid": os.getpid(), "process": program}


@dataclass(frozen=True)
class AuditRecord:
    """One access. ``partition_key`` is the running asset's partition; ``patient_key`` the data's own."""

    action: str
    zone: str
    target: str
    run_id: str | None = None
    asset_key: str | None = None
    partition_key: str | None = None
    patient_key: str | None = None
    rows: int | None = None
    bytes: int | None = None
    files: int | None = None
    who: dict = field(default_factory=process_identity)
    time: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}; actions are {ACTIONS}")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def line_digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _encode(payload: dict) -> bytes:
    return (json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - TAIL_WINDOW)
    tail = os.pread(fd, size - start, start)
    if not tail.endswith(b"\n"):
        raise RuntimeError("audit log does not end with a newline: a write was cut short; inspect it before appending")
    body = tail[:-1]
    cut = body.rfind(b"\n")
    if cut < 0 and start > 0:
        raise RuntimeError("audit log line longer than the tail window")
    return tail[cut + 1 :]


class AuditLog:
    """Appends records to ``<folder>/audit-<UTC day>.jsonl`` under an exclusive lock, hash-chained."""

    def __init__(self, folder: str | os.PathLike, fsync: bool = True):
        self.folder = Path(folder)
        self.fsync = fsync

    def path_for(self, when: dt.datetime) -> Path:
        return self.folder / f"{FILE_PREFIX}{when.strftime('%Y-%m-%d')}.jsonl"

    def append(self, record: AuditRecord) -> dict:
        """Append one record; returns the written payload (with ``time`` and ``prev``)."""
        when = utc_now()
        payload = {name: getattr(record, name) for name in AuditRecord.__dataclass_fields__}
        payload["time"] = record.time or when.isoformat(timespec="microseconds")
        self.folder.mkdir(parents=True, exist_ok=True)
        # Read-write (not write-only) so the last line can be read back under the same lock.
        fd = os.open(self.path_for(when), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            previous = _last_line(fd)
            payload["prev"] = GENESIS if previous is None else line_digest(previous)
            line = _encode(payload)
            if len(line) > MAX_LINE_BYTES:
                payload["target"] = "sha256:" + hashlib.sha256(str(payload["target"]).encode()).hexdigest()
                line = _encode(payload)
            if len(line) > MAX_LINE_BYTES:
                raise ValueError("audit record too large")
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write to the audit log ({written} of {len(line)} bytes)")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        return payload


def audit_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob(f"{FILE_PREFIX}*.jsonl")) if folder.is_dir() else []


def iter_records(folder: str | os.PathLike) -> Iterator[dict]:
    for path in audit_files(folder):
        with open(path, "rb") as fh:
            for line in fh:
                yield json.loads(line)


@dataclass(frozen=True)
class ChainBreak:
    file: str
    line_number: int
    reason: str


def verify_chain(folder: str | os.PathLike) -> list[ChainBreak]:
    """Every place a file's hash chain does not hold (a deleted, edited, inserted or reordered line)."""
    breaks: list[ChainBreak] = []
    for path in audit_files(folder):
        expected = GENESIS
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.endswith(b"\n"):
                    breaks.append(ChainBreak(path.name, number, "incomplete last line"))
                    break
                try:
                    prev = json.loads(line).get("prev")
                except json.JSONDecodeError:
                    breaks.append(ChainBreak(path.name, number, "not JSON"))
                    expected = line_digest(line)
                    continue
                if prev != expected:
                    breaks.append(ChainBreak(path.name, number, "previous-line hash does not match (a line was removed, edited or reordered)"))
                expected = line_digest(line)
    return breaks


@dataclass(frozen=True)
class Materialization:
    """A partitioned asset materialization as Dagster's event log records it."""

    asset_key: str
    partition_key: str


@dataclass
class CompletenessReport:
    run_id: str
    materializations: int
    missing: list[Materialization]  # materialized, but no audit record of the asset touching its partition
    without_write: list[Materialization]  # audited reads only (assets that write nothing to the lake)
    chain_breaks: list[ChainBreak]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.chain_breaks

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "complete": self.complete,
            "materializations": self.materializations,
            "missing": [vars(m) for m in self.missing],
            "without_write": [vars(m) for m in self.without_write],
            "chain_breaks": [vars(b) for b in self.chain_breaks],
        }


def compare_run(run_id: str, materializations: Iterable[Materialization], records: Iterable[dict], chain_breaks: list[ChainBreak]) -> CompletenessReport:
    """Match a run's partitioned materializations against its audit records (pure)."""
    actions_by_step: dict[tuple[str, str], set[str]] = {}
    for record in records:
        if record.get("run_id") != run_id or not record.get("asset_key") or not record.get("partition_key"):
            continue
        for asset_key in str(record["asset_key"]).split(","):
            actions_by_step.setdefault((asset_key, record["partition_key"]), set()).add(record["action"])
    done = sorted(set(materializations), key=lambda m: (m.asset_key, m.partition_key))
    missing = [m for m in done if (m.asset_key, m.partition_key) not in actions_by_step]
    without_write = [
        m for m in done if (m.asset_key, m.partition_key) in actions_by_step and "write" not in actions_by_step[(m.asset_key, m.partition_key)]
    ]
    return CompletenessReport(run_id, len(done), missing, without_write, chain_breaks)
