"""Lake layout, atomic writes and quarantine, for the local-folder lake.

Zones: raw (PHI, as received), deid, features, models, exports, quarantine.
Every write goes to a temporary file (or staging folder) in the target folder and
is renamed into place, so a killed run never leaves a half-written file behind.
Temporary names carry the writer's host and process id; the next write of the same
target removes what a writer that no longer runs left behind (a SIGKILLed worker),
and puts back a previous version that such a writer had moved aside.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

ZONES = ("raw", "deid", "features", "models", "exports", "quarantine")


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# What follows ".<target name>." in a temp file, staging folder or retired folder name.
_LEFTOVER = re.compile(r"^(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.(?:[a-z0-9_]+(?:\.tmp)?|retired)$")
# A whole temp file or staging folder name: "." + target name + "." + writer tag + "." + random part.
_STAGED = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9-]+-\d+\.[a-z0-9_]+(?:\.tmp)?$")


def _writer_tag() -> str:
    return f"{_HOST}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: it writes nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_leftovers(target: str | os.PathLike) -> list[str]:
    """Remove the temp files and staging folders of ``target`` left by dead writers on this host.

    A retired previous version (a writer died between moving it aside and renaming its new version
    in) is put back when ``target`` is missing. Writers on other hosts, or still running, are left
    alone. Returns the names removed or restored.
    """
    target = Path(target)
    prefix = f".{target.name}."
    handled = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except FileNotFoundError:
        return handled
    for entry in sorted(entries, key=lambda e: e.name.endswith(".retired")):  # staging first, then retired
        match = _LEFTOVER.match(entry.name[len(prefix):])
        if not match or match["host"] != _HOST or _process_alive(int(match["pid"])):
            continue
        if entry.name.endswith(".retired") and not os.path.lexists(target):
            os.replace(entry.path, target)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        handled.append(entry.name)
    return handled


def final_path(path: str | os.PathLike) -> Path:
    """Where ``path`` lands once the staging folders and temp files on its way are renamed into place.

    Records that name a file being written (a quarantined instance still in its staging folder) use
    this, so a rerun names it the same way.
    """
    parts = []
    for part in Path(path).parts:
        match = _STAGED.match(part)
        parts.append(match["name"] if match else part)
    return Path(*parts)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def rebuild_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden staging folder that replaces the folder ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_writer_tag()}.", dir=final.parent))
    try:
        yield staging
        if final.exists():
            # A folder cannot be renamed over a non-empty one: move the old version aside first.
            retired = final.with_name(f".{final.name}.{_writer_tag()}.retired")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    # The path it will have once written (not a staging name, which differs from run to run).
    stable_source = final_path(source)
    quarantine_id = hashlib.sha256(f"{stage}\x00{digest}\x00{stable_source}".encode()).hexdigest()[:16]
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
        source_path=str(stable_source),
        sha256=digest,
        quarantined_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(folder / "reason.json", asdict(record))
    return record


PARTITION_COLUMN = "patient_key"


def read_hive_dataset(folder: str | os.PathLike) -> "pd.DataFrame":
    """Every ``patient_key=<key>`` partition of a per-patient table as one frame, with ``patient_key`` restored.

    Partitions are written one patient at a time, so a column that is all-null for one patient has Arrow type
    null there: each fragment is read on its own and the schemas are unified, instead of trusting the first file.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    parts = []
    for fragment in ds.dataset(folder, format="parquet", partitioning=partitioning).get_fragments():
        part = fragment.to_table()
        key = ds.get_partition_keys(fragment.partition_expression)[PARTITION_COLUMN]
        parts.append(part.append_column(PARTITION_COLUMN, pa.array([key] * part.num_rows, pa.string())))
    if not parts:
        return pd.DataFrame(columns=[PARTITION_COLUMN])
    return pa.concat_tables(parts, promote_options="permissive").to_pandas()
