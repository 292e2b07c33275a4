"""Lake layout, atomic writes and quarantine, for the local-folder lake.

Zones: raw (PHI, as received), deid, features, models, exports, quarantine.
Every write goes to a temporary file in the target folder and is renamed into
place, so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

ZONES = ("raw", "deid", "features", "models", "exports", "quarantine")


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, payload) -> Path:
    return atomic_write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class QuarantineRecord:
    """Machine-readable reason for a quarantined input, written as ``reason.json`` beside the kept copy.

    ``file`` is the copy's name in the quarantine folder (the source's name; a folder for a whole
    series); ``stage``, ``error_class`` and ``message`` say where and why it was refused.
    """

    quarantine_id: str
    file: str
    stage: str
    error_class: str
    message: str
    source_path: str
    sha256: str
    quarantined_at: str

    def safe_summary(self) -> dict:
        """What may go to Dagster logs/metadata: no file names, no messages (they may hold PHI)."""
        return {"quarantine_id": self.quarantine_id, "stage": self.stage, "error_class": self.error_class}


def folder_sha256(folder: str | os.PathLike) -> str:
    """Content digest of a folder: every file's relative path and SHA-256, in path order."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\x00{file_sha256(path)}\n".encode())
    return h.hexdigest()


def quarantine_file(quarantine_root: str | os.PathLike, source: str | os.PathLike, stage: str, error: BaseException) -> QuarantineRecord:
    """Copy ``source`` (a file, or a folder such as one series) into the quarantine zone with a reason file.

    The source is left in place. The id hashes stage, content and source path, so quarantining the same
    input again (a re-run, or every patient run reading one shared extract) lands in the same folder.
    """
    source = Path(source)
    if source.is_file():
        digest = file_sha256(source)
    elif source.is_dir():
        digest = folder_sha256(source)
    else:
        digest = hashlib.sha256(str(source).encode()).hexdigest()
    quarantine_id = hashlib.sha256(f"{stage}\x00{digest}\x00{source}".encode()).hexdigest()[:16]
    folder = Path(quarantine_root) / stage / quarantine_id
    folder.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        with atomic_path(folder / source.name) as tmp:
            shutil.copyfile(source, tmp)
    elif source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            with atomic_path(folder / source.name / path.relative_to(source)) as tmp:
                shutil.copyfile(path, tmp)
    record = QuarantineRecord(
        quarantine_id=quarantine_id,
        file=source.name,
        stage=stage,
        error_class=type(error).__name__,
        message=str(error),
        source_path=str(source),
        sha256=digest,
        quarantined_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(folder / "reason.json", asdict(record))
    return record
