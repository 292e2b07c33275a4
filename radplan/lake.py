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

    Arrow datasets (discovery, footers and scan in Arrow's C++, threaded), never a Python loop over the
    partitions: a cohort of 100,000 patients is 100,000 folders (benchmarks/bench_cohort_read.py). Files are read
    in groups of :data:`READ_GROUP_FILES` (see :func:`_read_partition_files`). Partitions are written one patient
    at a time, so a column that is all-null for one patient has Arrow type null there: the schema is unified over
    every file's footer (``permissive``: null merges into the column's real type), not taken from the first file.
    """
    import pandas as pd

    folder = Path(folder)
    files = _hive_data_files(folder)
    if not files.num_rows:
        return pd.DataFrame(columns=[PARTITION_COLUMN])
    return _read_partition_files(folder, files["path"].to_pylist()).sort_by(PARTITION_COLUMN).to_pandas()


# Files per Arrow dataset read. One read of N one-row files keeps N record batches, each with its own buffers and
# metadata: about 240 KB per file with the patient_features schema, 24 GB at 100,000 partitions (measured with
# the cohort-read benchmark's table). Groups are combined into contiguous columns as they are read, which bounds
# the overhead to one group (about 0.3 GB for 5,000 files read in groups of 500) and is faster as well.
READ_GROUP_FILES = 500


def _read_partition_files(folder: Path, paths: list[str]) -> "pa.Table":
    """The rows of the given Parquet files (relative to ``folder``, hive-partitioned), ``patient_key`` restored."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    from pyarrow import fs

    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    base = str(folder).rstrip("/") + "/"
    groups = []
    for start in range(0, len(paths), READ_GROUP_FILES):
        factory = ds.FileSystemDatasetFactory(
            fs.LocalFileSystem(), [base + path for path in paths[start:start + READ_GROUP_FILES]], ds.ParquetFileFormat(),
            ds.FileSystemFactoryOptions(partitioning=partitioning, partition_base_dir=base),
        )
        groups.append(factory.finish(factory.inspect(promote_options="permissive")).to_table().combine_chunks())
    return pa.concat_tables(groups, promote_options="permissive") if len(groups) > 1 else groups[0]


# A cohort-level read cache of a per-patient table: <zone>/.compacted/<table>.parquet (hidden: derived, rebuilt
# from the partitions, never part of what the manifests record). Each row carries its partition's file fingerprint.
COMPACTED_DIR = ".compacted"
SNAPSHOT_FINGERPRINT_COLUMNS = _FINGERPRINT = ("__partition_files", "__partition_mtime_ns", "__partition_bytes")


def _hive_data_files(folder: Path) -> "pa.Table":
    """(path relative to ``folder``, patient_key, mtime_ns, size) of every visible Parquet file, listed by Arrow in C++."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import fs

    infos = [info for info in fs.LocalFileSystem().get_file_info(fs.FileSelector(str(folder), recursive=True))
             if info.type == fs.FileType.File]
    base = len(str(folder).rstrip("/")) + 1
    paths = pa.array([info.path[base:] for info in infos], pa.string())
    files = pa.table({"path": paths, "mtime_ns": pa.array([info.mtime_ns for info in infos], pa.int64()),
                      "size": pa.array([info.size for info in infos], pa.int64())})
    # Staging folders and temporaries are dot-prefixed (rebuild_dir, atomic_path); Arrow's dataset skips '.' and '_'.
    visible = pc.and_(pc.invert(pc.match_substring_regex(paths, r"(^|/)[._]")),
                      pc.match_substring_regex(paths, rf"^{PARTITION_COLUMN}=[^/]+/.*\.parquet$"))
    files = files.filter(visible)
    keys = pc.struct_field(pc.extract_regex(files["path"], rf"^{PARTITION_COLUMN}=(?P<key>[^/]+)/"), [0])
    return files.append_column(PARTITION_COLUMN, keys)


def _partition_fingerprints(files: "pa.Table") -> "pa.Table":
    """One row per partition: its number of files, newest mtime and total bytes (a rewrite changes at least one)."""
    grouped = files.group_by(PARTITION_COLUMN).aggregate([("path", "count"), ("mtime_ns", "max"), ("size", "sum")])
    return grouped.rename_columns({"path_count": _FINGERPRINT[0], "mtime_ns_max": _FINGERPRINT[1], "size_sum": _FINGERPRINT[2]})


def read_hive_dataset_compacted(folder: str | os.PathLike, snapshot: str | os.PathLike) -> "pd.DataFrame":
    """Like :func:`read_hive_dataset`, through a compacted snapshot (:func:`refresh_compacted_snapshot`)."""
    import pandas as pd

    table = refresh_compacted_snapshot(folder, snapshot)
    if table is None:
        return pd.DataFrame(columns=[PARTITION_COLUMN])
    return table.drop_columns(list(SNAPSHOT_FINGERPRINT_COLUMNS)).to_pandas()


def refresh_compacted_snapshot(folder: str | os.PathLike, snapshot: str | os.PathLike) -> "pa.Table | None":
    """Bring the compacted snapshot of a per-patient table up to date; its rows (None: no partition at all).

    A cohort read at 100,000 patients is dominated by opening 100,000 small files (benchmarks/bench_cohort_read.py).
    The snapshot (one Parquet file) holds every row read last time with its partition's fingerprint (files, newest
    mtime, bytes). This read lists the folder (Arrow, C++), keeps the snapshot's rows of unchanged partitions, reads
    the changed and new partitions (:func:`_read_partition_files`), drops removed ones, and rewrites the snapshot when anything
    changed. A missing or unreadable snapshot is rebuilt from the partitions (it is a cache, never the data).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder, snapshot = Path(folder), Path(snapshot)
    files = _hive_data_files(folder)
    current = _partition_fingerprints(files)
    previous = None
    if snapshot.exists():
        try:
            previous = pq.read_table(snapshot)
        except (OSError, pa.ArrowInvalid):
            previous = None  # a damaged cache: rebuilt below
    if previous is not None and all(name in previous.column_names for name in (PARTITION_COLUMN, *_FINGERPRINT)):
        seen = previous.select([PARTITION_COLUMN, *_FINGERPRINT]).group_by([PARTITION_COLUMN, *_FINGERPRINT]).aggregate([])
        unchanged = current.join(seen, keys=[PARTITION_COLUMN, *_FINGERPRINT], join_type="inner")[PARTITION_COLUMN]
        kept = previous.filter(pc.is_in(previous[PARTITION_COLUMN], value_set=unchanged))
    else:
        unchanged, kept = pa.array([], pa.string()), None
    stale = current.filter(pc.invert(pc.is_in(current[PARTITION_COLUMN], value_set=unchanged)))
    parts = [kept] if kept is not None and kept.num_rows else []
    if stale.num_rows:
        to_read = files.filter(pc.is_in(files[PARTITION_COLUMN], value_set=stale[PARTITION_COLUMN]))
        fresh = _read_partition_files(folder, to_read["path"].to_pylist())
        position = pc.index_in(fresh[PARTITION_COLUMN], value_set=stale[PARTITION_COLUMN])
        for name in _FINGERPRINT:
            fresh = fresh.append_column(name, pc.take(stale[name], position))
        parts.append(fresh)
    if not parts:
        snapshot.unlink(missing_ok=True)
        return None
    table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    # Partition order, as a full dataset read gives (a stable sort keeps each partition's row order).
    table = table.sort_by(PARTITION_COLUMN)
    if stale.num_rows or previous is None or kept is None or kept.num_rows != previous.num_rows:
        with atomic_path(snapshot) as tmp:
            pq.write_table(table, tmp)
    return table
