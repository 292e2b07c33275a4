"""Lake integrity: a content manifest for every dataset the lake writes, verification, and restore from a copy.

A *dataset* is the unit the lake replaces atomically: a cohort table file (``features/cohort_features.parquet``),
one patient's partition of a table (``features/variants/patient_key=p…``) or one patient folder of files
(``deid/dicom/p…``). Each write records the dataset's manifest (every file's name, size and SHA-256, taken from
the staged bytes that are renamed into place) at ``<zone>/.manifests/<rest of the dataset path>.json``: one
small file per zone and partition, so writers of different patients never contend. The S3 lake publishes the
same manifest to its bucket (``_manifests/<dataset>.json``); this module is the one implementation of both.

``verify`` re-reads a lake (a folder, or any listing plus hasher, e.g. a bucket) against the manifests and
reports each dataset or file that is missing, partial (shorter than written: truncated) or altered (same or
other size, different hash; or a file the dataset never had). Files no manifest covers (written by path, such
as exports and quarantine copies, or before manifests existed) are counted as unrecorded: not verified, and
said so. ``restore`` copies datasets back from a copy of the lake, after checking the copy against its own
manifests.

Pure functions: no Dagster, no environment. File names inside the PHI zones (raw, quarantine) can carry
identifiers as received, so reports meant for output name datasets (pseudonymous keys) but not those files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from radplan.lake import ZONES, atomic_path, atomic_write_json, file_sha256, rebuild_dir

MANIFEST_FOLDER = ".manifests"
PHI_ZONES = ("raw", "quarantine")
# What a finding can say; every one of these fails verification.
MISSING, PARTIAL, ALTERED, UNEXPECTED, UNREADABLE = "missing", "partial", "altered", "unexpected", "manifest_unreadable"


def is_hidden(relative: str) -> bool:
    """Staging folders, atomic-write temporaries, manifests and sync records start with a dot: never data."""
    return any(part.startswith(".") for part in relative.split("/"))


def _posix(path: Path) -> str:
    return path.as_posix()


# --- manifests ------------------------------------------------------------------------------------------------


def build_manifest(dataset: str, path: str | os.PathLike) -> dict:
    """The manifest of ``dataset`` (relative to the lake root) from the bytes at ``path``: a file, or a folder's
    non-hidden files. ``path`` may be the staging copy that is about to be renamed onto the dataset."""
    path = Path(path)
    if path.is_dir():
        names = sorted(_posix(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        names = [name for name in names if not is_hidden(name)]
        kind = "folder"
    elif path.is_file():
        names, kind = [""], "file"  # the dataset is the file itself
    else:
        raise FileNotFoundError(f"{dataset}: nothing to describe at the path given")
    files = {name: {"size": (path / name if name else path).stat().st_size, "sha256": file_sha256(path / name if name else path)} for name in names}
    return {"dataset": dataset, "kind": kind, "files": files}


def manifest_path(root: str | os.PathLike, dataset: str) -> Path:
    zone, _, rest = dataset.partition("/")
    if zone not in ZONES or not rest:
        raise ValueError(f"{dataset!r} is not a dataset inside a lake zone {ZONES}")
    return Path(root) / zone / MANIFEST_FOLDER / f"{rest}.json"


def record_manifest(root: str | os.PathLike, manifest: Mapping) -> Path:
    """Store a dataset's manifest in its zone (atomically: a reader sees the old or the new one)."""
    return atomic_write_json(manifest_path(root, manifest["dataset"]), dict(manifest))


def read_manifest(root: str | os.PathLike, dataset: str) -> dict | None:
    """The dataset's recorded manifest; None when there is none or it cannot be read."""
    try:
        return well_formed(dataset, json.loads(manifest_path(root, dataset).read_text()))
    except (OSError, ValueError):
        return None


def well_formed(dataset: str, manifest) -> dict | None:
    """The manifest when it describes ``dataset`` in the expected shape, else None (reported as unreadable)."""
    if not isinstance(manifest, dict) or manifest.get("dataset") != dataset or manifest.get("kind") not in ("file", "folder"):
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(m, dict) and isinstance(m.get("size"), int) and isinstance(m.get("sha256"), str) for m in files.values()):
        return None
    return manifest


def iter_manifests(root: str | os.PathLike, zones: Iterable[str] = ZONES) -> Iterator[tuple[str, dict | None]]:
    """(dataset, manifest) for every manifest recorded in the zones; manifest None when it cannot be read."""
    for zone in zones:
        folder = Path(root) / zone / MANIFEST_FOLDER
        for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
            if is_hidden(_posix(path.relative_to(folder))):
                continue  # an atomic-write temporary of a manifest
            dataset = f"{zone}/{_posix(path.relative_to(folder)).removesuffix('.json')}"
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                manifest = None
            yield dataset, well_formed(dataset, manifest)


# --- what is stored --------------------------------------------------------------------------------------------


@dataclass
class StoredFiles:
    """What a lake holds: every data file's size by path relative to the root, the folders that exist (None when
    the storage has no folders, as in S3) and how to hash one file."""

    sizes: dict[str, int]
    sha256: Callable[[str], str]
    folders: set[str] | None = None
    _sorted: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._sorted = sorted(self.sizes)

    def under(self, folder: str) -> dict[str, int]:
        """Files below ``folder``, by name relative to it."""
        import bisect

        prefix = folder + "/"
        start = bisect.bisect_left(self._sorted, prefix)
        found = {}
        for relative in self._sorted[start:]:
            if not relative.startswith(prefix):
                break
            found[relative[len(prefix):]] = self.sizes[relative]
        return found

    def folder_exists(self, folder: str) -> bool:
        return folder in self.folders if self.folders is not None else bool(self.under(folder))


def local_files(root: str | os.PathLike, zones: Iterable[str] = ZONES, *, within: Iterable[str] | None = None) -> StoredFiles:
    """The data files of a local lake folder (hidden staging, temporaries and manifests left out): every zone,
    or only the files and folders ``within`` (paths relative to the root)."""
    root = Path(root)
    sizes, folders = {}, set()
    for top in within if within is not None else zones:
        base = root / top
        if base.is_file():
            sizes[top] = base.stat().st_size
        for dirpath, dirnames, filenames in os.walk(base) if base.is_dir() else []:
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            here = _posix(Path(dirpath).relative_to(root))
            folders.add(here)
            for name in filenames:
                if not name.startswith("."):
                    sizes[f"{here}/{name}"] = (Path(dirpath) / name).stat().st_size
    return StoredFiles(sizes=sizes, sha256=lambda relative: file_sha256(root / relative), folders=folders)


# --- verification ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a dataset: ``file`` is the name inside a folder dataset ("" for the dataset itself)."""

    dataset: str
    file: str
    problem: str
    detail: str

    @property
    def zone(self) -> str:
        return self.dataset.split("/", 1)[0]

    def safe(self) -> dict:
        """For output: file names inside the PHI zones are withheld (they may be names as received)."""
        record = asdict(self)
        if self.zone in PHI_ZONES and self.file:
            record["file"] = "(withheld: PHI zone)"
        return record


@dataclass
class IntegrityReport:
    datasets_checked: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    findings: list[Finding] = field(default_factory=list)
    # Files no manifest covers, counted per <zone>/<first folder or file> (not verified).
    unrecorded: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing found wrong and something verified (an indeterminate lake is not called intact)."""
        return not self.findings and not self.indeterminate

    @property
    def indeterminate(self) -> bool:
        """Data files but not one manifest (a lake written before manifests, or its manifests lost): nothing verified."""
        return self.datasets_checked == 0 and bool(self.unrecorded)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.problem] = counts.get(finding.problem, 0) + 1
        return counts

    def damaged_datasets(self) -> list[str]:
        return sorted({finding.dataset for finding in self.findings})

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "indeterminate": self.indeterminate,
            "datasets_checked": self.datasets_checked,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "problems": self.counts(),
            "findings": [finding.safe() for finding in self.findings],
            "unrecorded_files": sum(self.unrecorded.values()),
            "unrecorded": dict(sorted(self.unrecorded.items())),
        }


def check_dataset(manifest: Mapping, stored: StoredFiles) -> tuple[list[Finding], int, int]:
    """Findings for one dataset against what is stored; also the files and bytes hashed."""
    dataset, recorded = manifest["dataset"], manifest["files"]
    if manifest["kind"] == "file":
        present = {"": stored.sizes[dataset]} if dataset in stored.sizes else None
    else:
        present = stored.under(dataset) if stored.folder_exists(dataset) else None
    if present is None:
        return [Finding(dataset, "", MISSING, f"the dataset is gone ({len(recorded)} file(s) recorded)")], 0, 0
    findings, hashed, nbytes = [], 0, 0
    for name, meta in sorted(recorded.items()):
        relative = f"{dataset}/{name}" if name else dataset
        if name not in present:
            findings.append(Finding(dataset, name, MISSING, "recorded file is gone"))
            continue
        size = present[name]
        if size < meta["size"]:
            findings.append(Finding(dataset, name, PARTIAL, f"{size} of {meta['size']} bytes (truncated)"))
            continue
        if size != meta["size"]:
            findings.append(Finding(dataset, name, ALTERED, f"{size} bytes, {meta['size']} recorded"))
            continue
        hashed, nbytes = hashed + 1, nbytes + size
        if stored.sha256(relative) != meta["sha256"]:
            findings.append(Finding(dataset, name, ALTERED, "same size, different SHA-256"))
    for name in sorted(set(present) - set(recorded)):
        findings.append(Finding(dataset, name, UNEXPECTED, "file the dataset did not have when written"))
    return findings, hashed, nbytes


def _covering_dataset(relative: str, datasets: set[str]) -> str | None:
    parts = relative.split("/")
    for depth in range(len(parts), 1, -1):
        candidate = "/".join(parts[:depth])
        if candidate in datasets:
            return candidate
    return None


def verify(manifests: Iterable[tuple[str, dict | None]], stored: StoredFiles) -> IntegrityReport:
    """Check every recorded dataset against what is stored; count the files no manifest covers."""
    report = IntegrityReport()
    datasets = set()
    for dataset, manifest in manifests:
        datasets.add(dataset)
        report.datasets_checked += 1
        if manifest is None:
            report.findings.append(Finding(dataset, "", UNREADABLE, "the manifest cannot be read; the dataset cannot be verified"))
            continue
        findings, hashed, nbytes = check_dataset(manifest, stored)
        report.findings.extend(findings)
        report.files_hashed += hashed
        report.bytes_hashed += nbytes
    for relative in stored.sizes:
        if _covering_dataset(relative, datasets) is None:
            group = "/".join(relative.split("/")[:2])
            report.unrecorded[group] = report.unrecorded.get(group, 0) + 1
    return report


def verify_local_lake(root: str | os.PathLike, zones: Iterable[str] = ZONES) -> IntegrityReport:
    """Re-read a local lake folder against its manifests."""
    zones = tuple(zones)
    return verify(iter_manifests(root, zones), local_files(root, zones))


# --- restore ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreOutcome:
    dataset: str
    restored: bool
    detail: str


def restore(lake_root: str | os.PathLike, backup_root: str | os.PathLike, datasets: Iterable[str]) -> list[RestoreOutcome]:
    """Copy ``datasets`` back from a copy of the lake (``backup_root``, the same layout), each with its manifest.

    A dataset is restored only when the copy is intact (it matches the copy's own manifest): a damaged backup
    is reported, never copied over. Each dataset is replaced atomically. When the lake had recorded a different
    version than the backup holds, the outcome says so: the restored data is older than what downstream assets
    were built from, and they need rematerializing.
    """
    lake_root, backup_root = Path(lake_root), Path(backup_root)
    outcomes = []
    for dataset in datasets:
        manifest = read_manifest(backup_root, dataset)
        if manifest is None:
            outcomes.append(RestoreOutcome(dataset, False, "the backup has no manifest for it: not restored"))
            continue
        findings, _, _ = check_dataset(manifest, local_files(backup_root, within=[dataset]))
        if findings:
            outcomes.append(RestoreOutcome(dataset, False, f"the backup's copy is damaged ({findings[0].problem}): not restored"))
            continue
        source, target = backup_root / dataset, lake_root / dataset
        if manifest["kind"] == "file":
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        else:
            with rebuild_dir(target) as staging:
                for name in manifest["files"]:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / name, staging / name)
        previous = read_manifest(lake_root, dataset)
        record_manifest(lake_root, manifest)
        if previous is not None and previous["files"] != manifest["files"]:
            detail = "restored the backup's version, older than the one the lake recorded: rematerialize what depends on it"
        else:
            detail = "restored"
        outcomes.append(RestoreOutcome(dataset, True, detail))
    return outcomes
