"""What the landing zone holds, per source patient: genomics files and EHR patients.

Readers here only look at headers and identifier columns; they never load whole files.
The results hold PHI (source patient ids, file names) and stay in the raw zone.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from radplan.errors import InvalidAlignmentError, InvalidVcfError, RadplanInputError

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


def scan_genomics(folder: Path) -> Iterator[GenomicsFile | tuple[Path, RadplanInputError]]:
    """Each genomics file with its sample names, or (path, error) for one whose header is unreadable."""
    if not folder.is_dir():
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if _has_suffix(path, VCF_SUFFIXES):
                yield GenomicsFile(path, "vcf", vcf_samples(path))
            elif _has_suffix(path, ALIGNMENT_SUFFIXES):
                yield GenomicsFile(path, "alignment", alignment_samples(path))
        except RadplanInputError as error:
            yield path, error


def ehr_patient_ids(csv_dir: Path, fhir_dir: Path) -> set[str]:
    """Patient ids in the Synthea patients.csv and the FHIR Patient NDJSON (id column/field only)."""
    ids: set[str] = set()
    patients_csv = csv_dir / "patients.csv"
    if patients_csv.exists():
        with patients_csv.open(newline="", encoding="utf-8", errors="replace") as handle:
            for row in csv.DictReader(handle):
                if row.get("Id"):
                    ids.add(row["Id"].strip())
    patients_ndjson = fhir_dir / "Patient.ndjson"
    if patients_ndjson.exists():
        with patients_ndjson.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    resource = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the EHR ingest asset quarantines it with its line number
                if isinstance(resource, dict) and resource.get("id"):
                    ids.add(str(resource["id"]).strip())
    return ids
