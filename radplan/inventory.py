"""What the landing zone holds: genomics files with their samples, and the state of the landing folders.

Readers here only look at headers and file listings; they never load whole files. (EHR patient ids
come from ``radplan.ehr.extracts.accepted_patient_ids``: the rows the EHR ingest accepts.)
The results hold PHI (source patient ids, file names) and stay in the raw zone.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from radplan.ehr.extracts import fhir_patient_id
from radplan.errors import InvalidAlignmentError, InvalidVcfError, RadplanInputError
from radplan.lake import file_sha256

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
ALIGNMENT_SUFFIXES = (".bam", ".cram")


@dataclass(frozen=True)
class GenomicsFile:
    path: Path
    kind: str  # "vcf" | "alignment"
    samples: tuple[str, ...]


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return any(path.name.lower().endswith(s) for s in suffixes)


def vcf_samples(path: Path) -> tuple[str, ...]:
    from cyvcf2 import VCF

    try:
        reader = VCF(str(path), lazy=True)
    except Exception as error:  # cyvcf2 raises bare Exception/OSError for unreadable headers
        raise InvalidVcfError(f"VCF header cannot be read: {error}") from error
    try:
        return tuple(reader.samples)
    finally:
        reader.close()


def alignment_samples(path: Path) -> tuple[str, ...]:
    import pysam

    try:
        with pysam.AlignmentFile(str(path), "rb" if path.suffix.lower() == ".bam" else "rc", check_sq=False) as handle:
            groups = handle.header.to_dict().get("RG", [])
    except (OSError, ValueError) as error:
        raise InvalidAlignmentError(f"alignment header cannot be read: {error}") from error
    return tuple(sorted({group["SM"] for group in groups if "SM" in group}))


def landing_files(folder: Path) -> list[Path]:
    """The files under a landing folder, sorted, leaving out hidden ones and everything in hidden folders.

    Transfer tools stage partial uploads under dot-names (``.incoming/``, ``.x.vcf.gz.part``); a
    file is only taken once it appears under a visible name.
    """
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )  # fmt: skip


def landing_fingerprint(folder: Path) -> tuple[str, int]:
    """Hash of (relative path, size, mtime) of every file under ``folder``: changes when anything arrives or changes."""
    digest = hashlib.sha256()
    count = 0
    for path in landing_files(folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
        count += 1
    return digest.hexdigest(), count


def landing_state(token: Callable[..., str], folders: list[Path]) -> tuple[str, int]:
    """One keyed token over the fingerprints of ``folders`` (and their file count).

    ``token`` is the pseudonymizer's keyed hash: file names hold PHI (MRNs), the token does not, so it can
    be a run key, a sensor cursor or asset metadata. The arrival sensors and the intake compute the same
    token, which tells a sensor that an intake has already seen the state it is looking at.
    """
    digests, count = [], 0
    for folder in folders:
        digest, files = landing_fingerprint(folder)
        digests.append(digest)
        count += files
    return token("landing-sensor", "\n".join(digests), 24), count


def scan_genomics(
    folder: Path, known: Mapping[tuple[str, int, int], GenomicsFile] | None = None
) -> Iterator[GenomicsFile | tuple[Path, RadplanInputError]]:
    """Each genomics file with its sample names, or (path, error) for one whose header is unreadable.

    ``known`` ((path, size, mtime_ns) -> the file as scanned before): a file with the same path, size and
    modification time is taken as it was, without opening it (as ``genomics_content_hashes`` reuses hashes), so an
    intake does not re-read every VCF and BAM header in the landing zone.
    """
    for path in landing_files(folder):
        if known:
            stat = path.stat()
            before = known.get((str(path), stat.st_size, stat.st_mtime_ns))
            if before is not None:
                yield before
                continue
        try:
            if _has_suffix(path, VCF_SUFFIXES):
                yield GenomicsFile(path, "vcf", vcf_samples(path))
            elif _has_suffix(path, ALIGNMENT_SUFFIXES):
                yield GenomicsFile(path, "alignment", alignment_samples(path))
        except RadplanInputError as error:
            yield path, error


# --- per-patient input fingerprints (what the patient refresh sensor compares) -------------------------------

# The patient column of a Synthea CSV: PATIENT in event tables, Id in patients.csv.
CSV_PATIENT_COLUMNS = ("PATIENT", "Id")


def combine_fingerprints(parts: dict[str, list[str]], token) -> dict[str, str]:
    """Patient key -> one fingerprint over that patient's input parts (order-independent).

    ``token(purpose, value)`` is the pseudonymizer's keyed hash: the result reveals nothing about
    the (PHI-bearing) inputs and can go into run keys.
    """
    return {key: token("inputs", "\n".join(sorted(values))) for key, values in sorted(parts.items())}


def changed_fingerprints(previous: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """The patients that are new or whose fingerprint differs (a removed patient is not a change to run)."""
    return {key: fp for key, fp in sorted(current.items()) if previous.get(key) != fp}


# The kinds of input a patient has. Each feeds its own branch of the patient's assets (jobs.SOURCE_ROOT_ASSETS), so a
# change to one source reruns that branch and what joins it, not the others (a follow-up CT leaves notes alone).
INPUT_SOURCES = ("imaging", "genomics", "ehr")


def source_fingerprints(parts: dict[str, dict[str, list[str]]], token) -> dict[str, dict[str, str]]:
    """Patient key -> {source: fingerprint over that source's input parts}, keyed like ``combine_fingerprints``."""
    unknown = {source for by_source in parts.values() for source in by_source} - set(INPUT_SOURCES)
    if unknown:
        raise ValueError(f"unknown input sources {sorted(unknown)}; known: {INPUT_SOURCES}")
    return {
        key: {source: token(f"inputs-{source}", "\n".join(sorted(values))) for source, values in sorted(by_source.items())}
        for key, by_source in sorted(parts.items())
    }


def changed_sources(previous: dict[str, dict[str, str]] | None, current: dict[str, dict[str, str]], patients) -> dict[str, list[str]]:
    """For each of ``patients`` (those whose whole fingerprint changed): the sources to rerun.

    A source counts as changed when it is new, altered or gone (its assets must drop what it gave). A patient with no
    previous per-source record (new, or inventoried before sources were recorded: ``previous`` None) reruns every
    source: nothing says which branch is current.
    """
    result = {}
    for key in sorted(patients):
        before = None if previous is None else previous.get(key)
        now = current.get(key, {})
        if before is None:
            result[key] = list(INPUT_SOURCES)
            continue
        changed = [source for source in INPUT_SOURCES if before.get(source) != now.get(source)]
        # The whole fingerprint changed, so something did: with no source found, rerun them all rather than none.
        result[key] = changed or list(INPUT_SOURCES)
    return result


def genomics_content_hashes(paths: list[Path], previous: list[tuple[str, int, int, str]]) -> dict[str, str]:
    """Content hash per genomics file, reusing a previous ``(path, size, mtime_ns, sha256)`` while size and mtime hold."""
    known = {(path, int(size), int(mtime_ns)): sha for path, size, mtime_ns, sha in previous}
    hashes = {}
    for path in paths:
        stat = path.stat()
        hashes[str(path)] = known.get((str(path), stat.st_size, stat.st_mtime_ns)) or file_sha256(path)
    return hashes


def ehr_row_fingerprints(csv_dir: Path, fhir_dir: Path) -> dict[str, str]:
    """Source patient id (PHI) -> hash of that patient's rows in every CSV extract and FHIR NDJSON file.

    A patient's hash changes only when one of their own rows changes, so another patient's new
    extract lines leave it alone. Unparseable lines are skipped here (the EHR assets quarantine them).
    """
    digests: dict[str, "hashlib._Hash"] = {}

    def add(patient_id: str, source: str, payload: str) -> None:
        digests.setdefault(patient_id, hashlib.sha256()).update(f"{source}\x00{payload}\n".encode())

    for path in sorted(csv_dir.glob("*.csv")) if csv_dir.is_dir() else []:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            column = next((header.index(name) for name in CSV_PATIENT_COLUMNS if name in header), None)
            if column is None:
                continue
            for row in reader:
                if len(row) > column and row[column].strip():
                    add(row[column].strip(), path.name, "\x1f".join(row))
    for path in sorted(fhir_dir.glob("*.ndjson")) if fhir_dir.is_dir() else []:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    patient_id = fhir_patient_id(json.loads(line))
                except json.JSONDecodeError:
                    continue
                if patient_id:
                    add(patient_id, path.name, line.rstrip("\n"))
    return {patient_id: digest.hexdigest()[:24] for patient_id, digest in digests.items()}
