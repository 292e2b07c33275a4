"""VCF/BCF -> normalized, streamed Parquet (one row per variant allele x sample), parsed column-wise with Arrow.

Reads plain, bgzipped (tabix or CSI indexed, or not) and BCF files. Text is read in blocks of about 4 MiB
(memory is flat in file size), split into lines and fields by Arrow compute kernels, and every field is
validated column-wise; blocks are parsed two at a time in threads and Parquet encoding overlaps parsing.
No native parser sees VCF text (htslib crashed the process on some malformed genotypes); a BCF is decoded
to text by a worker process (:mod:`radplan.genomics.bcf_text`), so a decoder crash is a clean error.

A malformed record (column count, empty field, bad POS/QUAL/REF/ALT, invalid GT, non-numeric AD/DP/AF,
an allele index beyond ALT) is left out and listed with caller, file, line and reason (the summary's
``quarantine``); the rest of the file is kept. A file-level problem (truncated file, unparseable header,
header lines among records, a known caller's file lacking the FORMAT fields radplan needs, see
:mod:`radplan.genomics.callers`) raises :class:`InvalidVcfError`.

Multi-allelic records are split into one row per ALT, like ``bcftools norm -m-``: per-allele AD/AF are
picked, and in each split genotype the other ALT alleles become ``0`` (so a ``1/2`` genotype is ``0/1`` for
ALT 1 and for ALT 2). ``*`` (spanning deletion) and gVCF ``<NON_REF>``/``<*>`` alleles, records without any
ALT and gVCF reference blocks are not rows; they are counted in the summary, as are blank lines.

Output columns (:data:`VARIANT_SCHEMA`)
---------------------------------------
sample            pseudonymized sample (callback applied; raw name only when no callback); null for sites-only VCFs
sample_role       tumor | normal from the header (:mod:`radplan.genomics.callers`); null when the header does not say
chrom, pos        contig as written in the VCF; 1-based POS
ref, alt          REF and this row's single ALT, as written (not left-normalized)
alt_index         1-based index of ``alt`` among the record's ALTs
id                the ID column (dbSNP rs etc.), null for ``.``
qual              QUAL, null for ``.``
filter            ``PASS``, or the ``;``-joined filter names, null for ``.`` (unfiltered)
gt                this allele's genotype: ``0/1``, ``1/1``, ``0|1`` (phase kept), ``.`` for missing alleles;
                  null when the caller writes no GT (Strelka2)
zygosity          hom_ref | het | hom_alt | hemizygous (haploid ALT) | missing; null without GT
depth             FORMAT DP, else the sum of AD (VarScan2: RD + AD)
ref_depth         AD of REF;  alt_depth: AD of this ALT (VarScan2: RD and AD; Strelka2: tier-1 ``{REF}U``/``{ALT}U``
                  for SNVs, TAR/TIR for indels)
allele_fraction   FORMAT AF, else FA (MuTect), else VarScan2 FREQ / 100, else alt_depth / (REF + ALT counts as above);
                  null when there are no reads (unknown, not 0)
variant_type      SNV | MNV | INS | DEL | SV (symbolic ``<...>``) | BND (breakends)
is_transition     SNVs only: A<->G or C<->T; null for other types
gene, consequence, impact, transcript, hgvsc, hgvsp
                  the picked transcript annotation (rule in :mod:`radplan.genomics.annotation`)
hgvsp_short       one-letter protein change, e.g. ``p.L858R``
annotation_source CSQ | ANN | EFF | null
genome_build      GRCh37 | GRCh38 | unknown (also in the file's key-value metadata)
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tempfile
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from radplan.errors import InvalidVcfError
from radplan.genomics.annotation import ANNOTATION_TAGS, PICKED_COLUMNS, AnnotationParser, short_protein_change
from radplan.genomics.callers import (STRELKA_INDEL_COUNTS, STRELKA_SNV_COUNTS, assign_vardict_tumour, check_supported,
                                      identify_caller)
from radplan.lake import atomic_path, atomic_write_text, file_sha256

SCHEMA_VERSION = "2"

VARIANT_SCHEMA = pa.schema([
    ("sample", pa.string()),
    ("sample_role", pa.string()),
    ("chrom", pa.string()),
    ("pos", pa.int64()),
    ("ref", pa.string()),
    ("alt", pa.string()),
    ("alt_index", pa.int16()),
    ("id", pa.string()),
    ("qual", pa.float32()),
    ("filter", pa.string()),
    ("gt", pa.string()),
    ("zygosity", pa.string()),
    ("depth", pa.int32()),
    ("ref_depth", pa.int32()),
    ("alt_depth", pa.int32()),
    ("allele_fraction", pa.float32()),
    ("variant_type", pa.string()),
    ("is_transition", pa.bool_()),
    ("gene", pa.string()),
    ("consequence", pa.string()),
    ("impact", pa.string()),
    ("transcript", pa.string()),
    ("hgvsc", pa.string()),
    ("hgvsp", pa.string()),
    ("hgvsp_short", pa.string()),
    ("annotation_source", pa.string()),
    ("genome_build", pa.string()),
])

# Low-cardinality columns travel dictionary-encoded in record batches (rows take small indices instead of copying
# strings) and are written as Parquet dictionary pages; readers of the Parquet file see plain strings.
_DICTIONARY_COLUMNS = ["sample", "sample_role", "chrom", "filter", "gt", "zygosity", "variant_type", "gene",
                       "consequence", "impact", "annotation_source", "genome_build"]
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
BATCH_SCHEMA = pa.schema([pa.field(f.name, _DICTIONARY if f.name in _DICTIONARY_COLUMNS else f.type)
                          for f in VARIANT_SCHEMA])

_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


# --------------------------------------------------------------------------- build detection

@lru_cache(maxsize=1)
def _build_tables() -> dict:
    return yaml.safe_load(resources.files("radplan.genomics").joinpath("data/genome_builds.yaml").read_text())


def _build_from_name(text: str) -> str | None:
    lowered = text.lower()
    for build, aliases in _build_tables()["reference_aliases"].items():
        if any(alias in lowered for alias in aliases):
            return build
    return None


def build_from_header(raw_header: str) -> str:
    """Genome build from header lines: ##reference, ##assembly, contig assembly= and contig lengths.

    Each piece of evidence votes; contradicting votes give ``unknown``. A ``chr``
    prefix alone proves nothing and is not used.
    """
    tables = _build_tables()
    votes: set[str] = set()
    for line in raw_header.splitlines():
        if line.startswith(("##reference=", "##assembly=")):
            build = _build_from_name(line.split("=", 1)[1])
            if build:
                votes.add(build)
        elif line.startswith("##contig=<"):
            attrs = dict(re.findall(r'([A-Za-z_]+)=("[^"]*"|[^,>]*)', line[len("##contig=<"):]))
            if "assembly" in attrs:
                build = _build_from_name(attrs["assembly"])
                if build:
                    votes.add(build)
            name = attrs.get("ID", "")
            name = name[3:] if name.lower().startswith("chr") else name
            length = attrs.get("length", "")
            if length.isdigit():
                for build, lengths in tables["contig_lengths"].items():
                    if lengths.get(name) == int(length):
                        votes.add(build)
    return votes.pop() if len(votes) == 1 else "unknown"


def detect_genome_build(vcf_path: Path) -> str:
    """``GRCh37`` | ``GRCh38`` | ``unknown``, from the VCF/BCF header (see :func:`build_from_header`)."""
    return VariantReader(Path(vcf_path)).build


# --------------------------------------------------------------------------- opening / validation

_SCAN_CHUNK_BYTES = 1 << 22
_HEADER_END = re.compile(rb"(?:^|\n)#CHROM[^\n]*\n")


def _check_no_empty_fields(path: Path, compressed: bool) -> None:
    """Reject a record with an empty tab-separated field (VCF writes a missing value as ``.``).

    htslib 1.x via cyvcf2 crashes the whole process (SIGSEGV) on an empty first sample column, so such
    text must never reach it. One streamed pass over the (decompressed) records, searched in C.
    """
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            pending, in_header = b"", True
            while chunk := fh.read(_SCAN_CHUNK_BYTES):
                data = pending + chunk
                if in_header:
                    end = _HEADER_END.search(data)
                    if end is None:
                        pending = data[-(1 << 16):]  # the #CHROM line may span chunks
                        continue
                    in_header, data = False, data[end.end():]
                if b"\t\t" in data:
                    raise InvalidVcfError(f"{path.name}: a record has an empty field (missing values are written '.')")
                pending = data[-1:]
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InvalidVcfError(f"{path.name}: corrupt compressed data ({exc})") from exc


def _check_complete(path: Path, scan_empty_fields: bool = True) -> None:
    """Reject files that end mid-way (BGZF without its EOF block, text without a final newline) and, for the
    cyvcf2 path (``scan_empty_fields``), records with empty fields (see :func:`_check_no_empty_fields`)."""
    if not path.is_file():
        raise InvalidVcfError(f"VCF not found or not a file: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise InvalidVcfError(f"{path.name}: empty file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(max(0, size - len(_BGZF_EOF)))
        tail = fh.read()
    if magic[:2] == b"\x1f\x8b":
        if len(magic) < 4:
            raise InvalidVcfError(f"{path.name}: truncated gzip header")
        if magic[3] & 4 and tail != _BGZF_EOF:  # FEXTRA set: BGZF (bgzipped VCF or BCF)
            raise InvalidVcfError(f"{path.name}: truncated BGZF file (no end-of-file block)")
        # Plain gzip: only a full decompression proves completeness; the scan below does it.
        with gzip.open(path, "rb") as fh:
            try:
                binary = fh.read(3) == b"BCF"
            except (OSError, EOFError, zlib.error) as exc:
                raise InvalidVcfError(f"{path.name}: corrupt compressed data ({exc})") from exc
        if not binary and scan_empty_fields:
            _check_no_empty_fields(path, compressed=True)
        elif not binary and not magic[3] & 4:  # plain gzip: decompress once to prove it is complete
            _check_gzip_complete(path)
    elif magic[:3] == b"BCF":  # uncompressed BCF: binary, no line structure to check
        return
    elif not tail.endswith(b"\n"):
        raise InvalidVcfError(f"{path.name}: truncated VCF (last line has no newline)")
    elif scan_empty_fields:
        _check_no_empty_fields(path, compressed=False)


def _check_gzip_complete(path: Path) -> None:
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(_SCAN_CHUNK_BYTES):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidVcfError(f"{path.name}: corrupt compressed data ({exc})") from exc


def open_vcf(path: Path):
    """A validated cyvcf2 reader (complete file, parseable header) or :class:`InvalidVcfError`.

    For record-by-record readers (:mod:`radplan.genomics.pgx`); Parquet conversion uses :class:`VariantReader`.
    """
    _check_complete(path)
    return cyvcf2_reader(path)


def cyvcf2_reader(path: Path):
    """cyvcf2's reader over a file already checked for completeness, or :class:`InvalidVcfError` for its header."""
    import cyvcf2

    try:
        reader = cyvcf2.VCF(str(path), lazy=True, threads=None)
    except Exception as exc:  # cyvcf2 raises bare Exception/OSError for unreadable headers
        raise InvalidVcfError(f"{path.name}: cannot parse VCF header ({exc})") from exc
    if not reader.raw_header.startswith("##fileformat=VCF"):
        raise InvalidVcfError(f"{path.name}: missing ##fileformat=VCF header line")
    return reader


# --------------------------------------------------------------------------- per-allele helpers

def variant_type(ref: str, alt: str) -> str:
    """SNV | MNV | INS | DEL | SV | BND for one REF/ALT pair."""
    if alt.startswith("<"):
        return "SV"
    if "[" in alt or "]" in alt or alt.startswith(".") or alt.endswith("."):
        return "BND"
    if len(ref) == len(alt):
        return "SNV" if len(ref) == 1 else "MNV"
    return "INS" if len(alt) > len(ref) else "DEL"


def _split_genotype(alleles: list[int], phased: bool, k: int) -> tuple[str, str]:
    """(gt, zygosity) of one sample for ALT ``k`` (1-based); other ALTs count as REF."""
    codes = ["." if a < 0 else ("1" if a == k else "0") for a in alleles]
    called = [c for c in codes if c != "."]
    if not called:
        zygosity = "missing"
    elif "1" not in called:
        zygosity = "hom_ref"
    elif "0" in called:
        zygosity = "het"
    elif len(codes) == 1:
        zygosity = "hemizygous"
    else:
        zygosity = "hom_alt"
    if phased:
        return "|".join(codes), zygosity
    return "/".join(sorted(codes, key=lambda c: (c != ".", c))), zygosity


_GENOTYPE = re.compile(r"(?:\.|\d{1,6})(?:[/|](?:\.|\d{1,6}))*")


def _parse_genotype(text: str) -> tuple[list[int], bool] | None:
    """(allele indexes, -1 for '.'; phased) or None when ``text`` is not a VCF genotype."""
    if not _GENOTYPE.fullmatch(text):
        return None
    alleles = [-1 if a == "." else int(a) for a in re.split(r"[/|]", text)]
    return alleles, "|" in text and "/" not in text


@dataclass
class VcfStats:
    """Running, PHI-free counts over the records read so far."""

    records: int = 0
    rows: int = 0
    alleles: int = 0
    pass_records: int = 0
    transitions: int = 0
    transversions: int = 0
    records_without_alt: int = 0
    reference_blocks: int = 0
    blank_lines: int = 0
    spanning_deletion_alleles: int = 0
    non_ref_alleles: int = 0
    quarantined_records: int = 0
    variant_types: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class QuarantinedRecord:
    """One malformed record left out of the output: where it is and why (no field values: they may hold PHI)."""

    caller: str
    file: str
    line: int
    reason: str

    def as_dict(self) -> dict:
        return {"caller": self.caller, "file": self.file, "line": self.line, "reason": self.reason}


# --------------------------------------------------------------------------- input streams

_READ_BYTES = 1 << 22  # decompressed bytes per block: bounds memory (3 blocks in flight), large enough for Arrow kernels
_NUMERIC = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|[Nn]a[Nn]|[Ii]nf(?:inity)?)"
_INTEGER = r"-?\d{1,10}"
_NON_REF_ALLELES = ("<NON_REF>", "<*>")  # gVCF "any other allele" placeholders (GATK, DeepVariant)
_FIXED = ["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
_FORMAT_KEYS = ("GT", "AD", "DP", "AF", "FA", "RD", "FREQ", *STRELKA_SNV_COUNTS, *STRELKA_INDEL_COUNTS)
_MAX_QUARANTINE_DETAILS = 1000  # the summary lists this many quarantined records; the count covers them all


def _is_bcf(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(3) == b"BCF"
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidVcfError(f"{path.name}: corrupt compressed data ({exc})") from exc
    return magic == b"BCF"


def _bcf_as_text(path: Path, out: Path) -> None:
    """Decode a BCF to VCF text in a worker process: an htslib crash becomes a clean error, not a dead run."""
    done = subprocess.run([sys.executable, "-m", "radplan.genomics.bcf_text", str(path), str(out)],
                          capture_output=True, text=True, timeout=None)
    if done.returncode != 0:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        detail = done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "no message"
        raise InvalidVcfError(f"{path.name}: BCF decoder failed ({how}: {detail})")


def _open_text(path: Path):
    return pa.input_stream(str(path), compression="gzip" if _starts_gzip(path) else None)


def _starts_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_header(stream, name: str) -> tuple[str, int, bytes]:
    """(header text, header line count, bytes already read past the header) from the start of ``stream``."""
    data = b""
    while True:
        try:
            chunk = stream.read(1 << 20)
        except OSError as exc:
            raise InvalidVcfError(f"{name}: corrupt compressed data ({exc})") from exc
        data += chunk
        at = data.find(b"\n#CHROM") if not data.startswith(b"#CHROM") else -1
        if data.startswith(b"#CHROM"):
            at = -1
            end = data.find(b"\n")
        elif at >= 0:
            end = data.find(b"\n", at + 1)
        else:
            end = -1
        if end >= 0:
            break
        if not chunk:
            raise InvalidVcfError(f"{name}: cannot parse VCF header (no #CHROM line)")
        if len(data) > 1 << 28:
            raise InvalidVcfError(f"{name}: cannot parse VCF header (no #CHROM line in the first 256 MiB)")
    try:
        header = data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidVcfError(f"{name}: cannot parse VCF header (not UTF-8: {exc.reason})") from exc
    return header, header.count("\n") + 1, data[end + 1:]


def _header_meta(header: str, name: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(sample names, FORMAT ID -> Number, INFO ID -> Description) from the header text."""
    if not header.startswith("##fileformat=VCF"):
        raise InvalidVcfError(f"{name}: missing ##fileformat=VCF header line")
    meta = header.split("\n")[:-1]
    stray = next((i for i, line in enumerate(meta) if not line.startswith("##")), None)
    if stray is not None:
        raise InvalidVcfError(f"{name}: cannot parse VCF header (line {stray + 1} is neither a ## meta line nor #CHROM)")
    columns = header.rsplit("\n", 1)[-1].rstrip("\r").split("\t")
    if ["CHROM"] + columns[1:8] != _FIXED[:8] or (len(columns) > 8 and columns[8] != "FORMAT"):
        raise InvalidVcfError(f"{name}: cannot parse VCF header (#CHROM line does not list the 8 fixed VCF columns)")
    samples = columns[9:]
    if len(set(samples)) != len(samples):
        raise InvalidVcfError(f"{name}: cannot parse VCF header (duplicated sample name)")
    formats, infos = {}, {}
    for line in header.splitlines():
        if line.startswith("##FORMAT=<") or line.startswith("##INFO=<"):
            body = line.split("<", 1)[1]
            key = re.search(r"(?:^|,)ID=([^,>]+)", body)
            if not key:
                raise InvalidVcfError(f"{name}: cannot parse VCF header ({line.split('=', 1)[0]} line without ID)")
            if line.startswith("##FORMAT"):
                number = re.search(r"(?:^|,)Number=([^,>]+)", body)
                formats[key.group(1)] = number.group(1) if number else "."
            else:
                description = re.search(r'Description="((?:[^"\\]|\\.)*)"', body)
                infos[key.group(1)] = description.group(1) if description else ""
    return samples, formats, infos


def _lines(stream, pending: bytes, name: str, block_bytes: int = _READ_BYTES) -> Iterator[pa.Array]:
    """Complete record lines as Arrow binary arrays, one per block of about ``block_bytes``."""
    while True:
        try:
            chunk = stream.read(block_bytes)
        except OSError as exc:
            raise InvalidVcfError(f"{name}: corrupt compressed data ({exc})") from exc
        data = pending + chunk
        cut = data.rfind(b"\n")
        if cut >= 0:
            pending = data[cut + 1:]
            yield pc.split_pattern(pa.array([data[:cut]], pa.large_binary()), b"\n").flatten()
        else:
            pending = data
        if not chunk:
            if pending:  # _check_complete already rejects a text file without its final newline
                raise InvalidVcfError(f"{name}: truncated VCF (last line has no newline)")
            return


# --------------------------------------------------------------------------- vectorised field helpers

def _np_bool(array) -> np.ndarray:
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _present(values: pa.Array) -> np.ndarray:
    """Non-null and not the VCF missing value ``.``."""
    return _np_bool(pc.and_(pc.is_valid(values), pc.not_equal(values, ".")))


def _numbers(values: pa.Array, pattern: str, kind) -> tuple[pa.Array, np.ndarray]:
    """(values cast to ``kind`` with null for absent/``.``, mask of present values that are not numbers)."""
    present = _present(values)
    null = pa.scalar(None, values.type)
    try:  # fast path: Arrow's strict parser accepts the whole column
        numbers = pc.cast(pc.if_else(pa.array(present), values, null), kind)
        bad = np.zeros(len(values), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = _np_bool(pc.match_substring_regex(values, f"^(?:{pattern})$")) & present
        numbers = pc.cast(pc.if_else(pa.array(ok), values, null), kind)
        bad = present & ~ok
    if pa.types.is_integer(kind) and len(numbers):  # VCF integers are 32-bit
        out_of_range = _np_bool(pc.or_(pc.less_equal(numbers, _INT32_MIN), pc.greater(numbers, _INT32_MAX)))
        if out_of_range.any():
            bad |= out_of_range
            numbers = pc.if_else(pa.array(out_of_range), pa.scalar(None, kind), numbers)
    return numbers, bad


def _subfield(lists: pa.ListArray, position: np.ndarray) -> pa.Array:
    """Element ``position[i]`` of each list (null where the list is null, shorter, or position < 0)."""
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    valid = (position >= 0) & (position < lengths) & _np_bool(pc.is_valid(lists))
    index = np.where(valid, offsets[:-1] + position, 0)
    flat = lists.values
    if len(flat) == 0:
        return pa.nulls(len(lists), flat.type)
    return flat.take(pa.array(index, mask=~valid))


class _CountList:
    """A per-record list of integers (AD, tier counts): flat int64 values with nulls, offsets, per-record presence."""

    def __init__(self, text: pa.Array):
        self.present = _present(text)
        lists = pc.split_pattern(pc.if_else(pa.array(self.present), text, pa.scalar("", text.type)), ",")
        self.offsets = lists.offsets.to_numpy()
        self.lengths = np.diff(self.offsets)
        values, bad = _numbers(lists.values, _INTEGER, pa.int64())
        self.valid = _np_bool(pc.is_valid(values))
        self.values = values.fill_null(0).to_numpy()
        self.bad = np.logical_or.reduceat(bad, self.offsets[:-1]) & self.present if len(bad) else np.zeros(0, bool)

    def element(self, record: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid mask) of element ``index`` of each listed record's list."""
        ok = self.present[record] & (index >= 0) & (index < self.lengths[record])
        at = np.where(ok, self.offsets[record] + index, 0)
        ok &= self.valid[at] if len(self.valid) else ok
        return np.where(ok, self.values[at] if len(self.values) else 0, 0), ok

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per record: sum of the non-missing values, and whether the first value (REF) is present."""
        masked = np.where(self.valid, self.values, 0)
        total = np.add.reduceat(masked, self.offsets[:-1]) if len(masked) else np.zeros(len(self.present), np.int64)
        first = self.valid[self.offsets[:-1]] if len(self.valid) else np.zeros(len(self.present), bool)
        return total, first & self.present


def _int32_array(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    ok = np.asarray(valid, dtype=bool) & (values > _INT32_MIN) & (values <= _INT32_MAX)
    return pa.array(np.where(ok, values, 0).astype(np.int32), mask=~ok)


_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


# --------------------------------------------------------------------------- the reader

class VariantReader:
    """Streams a VCF/BCF as Arrow record batches in :data:`VARIANT_SCHEMA`, keeps :class:`VcfStats`, quarantines
    malformed records.

    Text is split into lines and fields by Arrow compute kernels and every field is validated column-wise, so a
    malformed record (wrong column count, empty field, bad POS/QUAL, invalid genotype, non-numeric count, allele
    index beyond ALT) is dropped and listed in :attr:`quarantine` with the caller, file, line and reason, and the
    rest of the file is kept. No native parser sees VCF text; BCF is decoded to text in a worker process.
    """

    def __init__(self, vcf_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                 batch_size: int = 50_000, genome_build: str | None = None, block_bytes: int = _READ_BYTES):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.path = Path(vcf_path)
        self.block_bytes = block_bytes
        self.batch_size = batch_size
        self.stats = VcfStats()
        self.quarantine: list[QuarantinedRecord] = []
        self._workdir: tempfile.TemporaryDirectory | None = None
        if not self.path.is_file():
            raise InvalidVcfError(f"VCF not found or not a file: {self.path.name}")
        source = self.path
        _check_complete(self.path, scan_empty_fields=False)
        if _is_bcf(self.path):
            self._workdir = tempfile.TemporaryDirectory(prefix="radplan-bcf-")
            source = Path(self._workdir.name) / "decoded.vcf"
            _bcf_as_text(self.path, source)
        self._source = source
        with _open_text(source) as stream:
            self.raw_header, self._header_lines, _ = _read_header(stream, self.path.name)
        raw_samples, self._format_numbers, infos = _header_meta(self.raw_header, self.path.name)
        self.build = genome_build or build_from_header(self.raw_header)
        self.profile = identify_caller(self.raw_header, raw_samples)
        check_supported(self.profile, self.path.name, self._format_numbers, bool(raw_samples))
        self.caller = self.profile.caller
        self.annotation = None
        for tag in ANNOTATION_TAGS:
            if tag in infos:
                try:
                    self.annotation = AnnotationParser(tag, infos[tag])
                except ValueError as exc:
                    raise InvalidVcfError(f"{self.path.name}: {tag} header: {exc}") from exc
                break
        self.raw_samples = raw_samples
        self.samples: list[str | None] = [sample_pseudonym(s) for s in raw_samples] if sample_pseudonym else list(raw_samples)
        self.sample_count = len(raw_samples)
        self._columns = 8 + (1 + self.sample_count if len(self.raw_header.rsplit("\n", 1)[-1].split("\t")) > 8 else 0)
        # VarScan2 writes AD as the ALT depth alone (Number=1) beside RD, the REF depth, and FREQ as a percentage.
        self._varscan_counts = self._format_numbers.get("AD") == "1" and "RD" in self._format_numbers
        self._strelka_counts = "AD" not in self._format_numbers and (
            set(STRELKA_SNV_COUNTS) <= set(self._format_numbers) or set(STRELKA_INDEL_COUNTS) <= set(self._format_numbers))
        self._roles_resolved = self.profile.caller != "VarDict"

    @property
    def sample_roles(self) -> list[str | None]:
        return self.profile.role_list(self.raw_samples)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_size`` rows, in file order.

        Blocks are parsed two at a time in threads (Arrow and numpy kernels release the GIL); the first block
        is parsed alone because it settles VarDict's sample roles. Each block's counts and quarantined records
        are merged in file order, so the summary does not depend on scheduling.
        """
        try:
            with _open_text(self._source) as stream, ThreadPoolExecutor(max_workers=_PARSE_THREADS) as pool:
                _, _, pending = _read_header(stream, self.path.name)
                blocks = self._numbered_blocks(stream, pending)
                first = next(blocks, None)
                futures: deque = deque()
                if first is not None:
                    futures.append(_done(self._parse_numbered(*first)))
                for block in blocks:
                    futures.append(pool.submit(self._parse_numbered, *block))
                    while len(futures) > _PARSE_THREADS:
                        yield from self._merge(futures.popleft().result())
                while futures:
                    yield from self._merge(futures.popleft().result())
        finally:
            if self._workdir is not None:
                self._workdir.cleanup()
                self._workdir = None
        if self.stats.rows == 0:  # an empty VCF still yields one (empty) batch with the schema
            yield pa.RecordBatch.from_pylist([], schema=BATCH_SCHEMA)

    def _numbered_blocks(self, stream, pending: bytes) -> Iterator[tuple[pa.Array, int]]:
        line_number = self._header_lines
        for lines in _lines(stream, pending, self.path.name, self.block_bytes):
            yield lines, line_number + 1
            line_number += len(lines)

    def _parse_numbered(self, lines: pa.Array, first_line: int):
        stats, quarantine = VcfStats(), []
        try:
            table = self._parse_block(lines, first_line, stats, quarantine)
        except _HeaderLineAmongRecords as found:
            return found
        return table, stats, quarantine

    def _merge(self, parsed) -> Iterator[pa.RecordBatch]:
        if isinstance(parsed, _HeaderLineAmongRecords):
            raise InvalidVcfError(f"{self.path.name}: a header line after record {self.stats.records + parsed.records_before} "
                                  "(VCFs concatenated without merging?)")
        table, stats, quarantine = parsed
        total = self.stats
        for name in ("records", "rows", "alleles", "pass_records", "transitions", "transversions", "records_without_alt",
                     "reference_blocks", "blank_lines", "spanning_deletion_alleles", "non_ref_alleles", "quarantined_records"):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        for name, count in stats.variant_types.items():
            total.variant_types[name] = total.variant_types.get(name, 0) + count
        self.quarantine.extend(quarantine[:max(_MAX_QUARANTINE_DETAILS - len(self.quarantine), 0)])
        for batch in table.to_batches(max_chunksize=self.batch_size):
            if batch.num_rows:
                yield batch

    # ----------------------------------------------------------------- one block of lines

    def _quarantine(self, stats: VcfStats, quarantine: list, lines: np.ndarray, reasons: np.ndarray) -> None:
        stats.quarantined_records += len(lines)
        for line, reason in zip(lines[:_MAX_QUARANTINE_DETAILS], reasons[:_MAX_QUARANTINE_DETAILS]):
            quarantine.append(QuarantinedRecord(self.caller, self.path.name, int(line), str(reason)))

    def _parse_block(self, raw_lines: pa.Array, first_line: int, stats: VcfStats, quarantine: list) -> pa.Table:
        line_numbers = np.arange(first_line, first_line + len(raw_lines))
        blank = _np_bool(pc.equal(pc.binary_length(raw_lines), 0))
        stats.blank_lines += int(blank.sum())
        keep = ~blank
        raw_lines, line_numbers = raw_lines.filter(pa.array(keep)), line_numbers[keep]
        if len(raw_lines) == 0:
            return pa.Table.from_batches([], schema=BATCH_SCHEMA)
        header_like = _np_bool(pc.equal(pc.binary_slice(raw_lines, 0, 1), b"#"))
        if header_like.any():
            raise _HeaderLineAmongRecords(int(np.argmax(header_like)))
        stats.records += len(raw_lines)
        # A trailing carriage return (a file written on Windows) is line ending, not data.
        if _np_bool(pc.ends_with(raw_lines, b"\r")).any():
            raw_lines = pc.replace_substring_regex(raw_lines, b"\r$", b"")
        reasons = np.full(len(raw_lines), None, dtype=object)
        try:
            lines = raw_lines.cast(pa.large_string())
        except pa.ArrowInvalid:
            utf8 = np.array([_is_utf8(v) for v in raw_lines.to_pylist()], dtype=bool)
            reasons[~utf8] = "not UTF-8 text"
            lines = pc.if_else(pa.array(utf8), raw_lines, pa.scalar(b"", raw_lines.type)).cast(pa.large_string())
        fields = pc.split_pattern(lines, "\t")
        counts = np.diff(fields.offsets.to_numpy())
        wrong = (counts != self._columns) & (reasons == None)  # noqa: E711 (numpy element-wise)
        reasons[wrong] = [f"{n} tab-separated columns where the header declares {self._columns}" for n in counts[wrong]]
        good = reasons == None  # noqa: E711
        if not good.any():
            self._quarantine(stats, quarantine, line_numbers, reasons)
            return pa.Table.from_batches([], schema=BATCH_SCHEMA)
        shaped = fields.filter(pa.array(good)).values
        n, width = int(good.sum()), self._columns
        column = [shaped.take(pa.array(np.arange(j, n * width, width))) for j in range(width)]
        sub_reasons = np.full(n, None, dtype=object)

        def flag(mask: np.ndarray, reason: str) -> None:
            if mask.any():  # the first reason found for a record is the one reported
                sub_reasons[mask & (sub_reasons == None)] = reason  # noqa: E711

        names = _FIXED[:8] + (["FORMAT"] + [f"sample column {i + 1}" for i in range(self.sample_count)]
                              if width > 8 else [])
        for j, name in enumerate(names):
            flag(_np_bool(pc.equal(pc.utf8_length(column[j]), 0)), f"empty {name} field (a missing value is written '.')")
        chrom, pos_text, vid, ref, alt, qual_text, filters, info = column[:8]
        flag(_np_bool(pc.match_substring_regex(chrom, r"^\.$|[\s,]")), "CHROM is missing or contains a space or comma")
        pos, bad_pos = _numbers(pos_text, r"\d{1,10}", pa.int64())
        flag(bad_pos | ~_present(pos_text), "POS is not a position (a whole number)")
        flag(~_np_bool(pc.match_substring_regex(ref, r"^[A-Za-z]+$")), "REF is not a base sequence")
        flag(_np_bool(pc.match_substring_regex(alt, r"(^|,)(,|$)|\s")), "ALT has an empty allele or a space")
        qual, bad_qual = _numbers(qual_text, _NUMERIC, pa.float32())
        flag(bad_qual, "QUAL is not a number")
        flag(_np_bool(pc.match_substring(filters, " ")), "FILTER contains a space")
        flag(_np_bool(pc.or_(pc.match_substring(info, " "), pc.or_(pc.starts_with(info, "="), pc.match_substring(info, ";=")))),
             "INFO contains a space or an entry without a key")

        alts = pc.split_pattern(alt, ",")
        no_alt = ~_present(alt)
        n_alts = np.where(no_alt, 0, np.diff(alts.offsets.to_numpy()))
        per_sample = self._sample_fields(column[8:], n_alts, flag) if self.sample_count else []

        ok = sub_reasons == None  # noqa: E711
        if not ok.all():
            bad_lines = line_numbers[good][~ok]
            reasons[np.flatnonzero(good)[~ok]] = sub_reasons[~ok]
            del bad_lines
        bad = reasons != None  # noqa: E711
        if bad.any():
            self._quarantine(stats, quarantine, line_numbers[bad], reasons[bad])
        if not self._roles_resolved:
            self._resolve_vardict_roles(info, ok)
        stats.records_without_alt += int((no_alt & ok).sum())
        return self._expand(stats, ok, chrom, pos, vid, ref, alts, n_alts, qual, filters, info, per_sample)

    def _resolve_vardict_roles(self, info: pa.Array, ok: np.ndarray) -> None:
        names = pc.struct_field(pc.extract_regex(info.filter(pa.array(ok)), r"(?:^|;)SAMPLE=(?P<s>[^;]*)"), "s").drop_null()
        if len(names):
            assign_vardict_tumour(self.profile, names[0].as_py())
        self._roles_resolved = True

    def _sample_fields(self, columns: list[pa.Array], n_alts: np.ndarray, flag) -> list[dict]:
        """Per sample: the FORMAT values radplan reads, parsed and validated column-wise (record level)."""
        fmt = columns[0]
        encoded = pc.dictionary_encode(fmt)
        formats = [f.split(":") for f in encoded.dictionary.to_pylist()]
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        n_keys = np.array([len(f) for f in formats])[codes]
        key_position = {key: np.array([f.index(key) if key in f else -1 for f in formats])[codes] for key in _FORMAT_KEYS}
        duplicated = np.array([len(set(f)) != len(f) for f in formats])[codes]
        flag(duplicated, "FORMAT lists a key twice")
        samples = []
        for s, text in enumerate(columns[1:], start=1):
            lists = pc.split_pattern(text, ":")
            flag(np.diff(lists.offsets.to_numpy()) > n_keys, f"sample column {s} has more values than FORMAT keys")
            value = {key: _subfield(lists, key_position[key]) for key in _FORMAT_KEYS if (key_position[key] >= 0).any()}
            value.setdefault("GT", pa.nulls(len(text), text.type))
            parsed: dict = {}
            gt = value["GT"]
            if (key_position["GT"] >= 0).any():
                encoded_gt = pc.dictionary_encode(gt)
                uniques = [_parse_genotype(g) for g in encoded_gt.dictionary.to_pylist()]
                gt_codes = encoded_gt.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                invalid = np.array([u is None for u in uniques] + [False])[gt_codes]
                flag(invalid, f"sample column {s}: GT is not a genotype")
                top = np.array([max(u[0]) if u else -1 for u in uniques] + [-1])[gt_codes]
                flag(top > n_alts, f"sample column {s}: GT names an allele beyond the record's ALT alleles")
                parsed["gt"] = (gt_codes, uniques)
            for key in ("AD", *STRELKA_SNV_COUNTS, *STRELKA_INDEL_COUNTS):
                if (key_position[key] >= 0).any():
                    counts = _CountList(value[key])
                    flag(counts.bad, f"sample column {s}: {key} is not a list of whole numbers")
                    parsed[key] = counts
            for key, pattern, kind in (("DP", _INTEGER, pa.int64()), ("RD", _INTEGER, pa.int64())):
                if key == "RD" and not self._varscan_counts:  # VarDict's RD is forward,reverse REF reads: not read
                    continue
                if (key_position[key] >= 0).any():
                    numbers, bad = _numbers(value[key], pattern, kind)
                    flag(bad, f"sample column {s}: {key} is not a whole number")
                    parsed[key] = numbers
            for key in ("AF", "FA"):
                if (key_position[key] >= 0).any():
                    lists_af = pc.split_pattern(value[key], ",")
                    numbers, bad = _numbers(lists_af.values, _NUMERIC, pa.float64())
                    if len(bad):
                        offsets = lists_af.offsets.to_numpy()
                        flag(np.logical_or.reduceat(bad, offsets[:-1]) & (np.diff(offsets) > 0),
                             f"sample column {s}: {key} is not a list of numbers")
                    parsed[key] = (lists_af.offsets.to_numpy(), numbers, _present(value[key]))
            if self._varscan_counts and (key_position["FREQ"] >= 0).any():
                freq_text = pc.replace_substring_regex(value["FREQ"], "%$", "")
                numbers, bad = _numbers(freq_text, _NUMERIC, pa.float64())
                flag(bad, f"sample column {s}: FREQ is not a percentage")
                parsed["FREQ"] = numbers
            samples.append(parsed)
        return samples

    # ----------------------------------------------------------------- records -> rows

    def _expand(self, stats: VcfStats, ok, chrom, pos, vid, ref, alts, n_alts, qual, filters, info, per_sample) -> pa.Table:
        records = np.flatnonzero(ok)
        alt_counts = n_alts[records]
        rec = np.repeat(records, alt_counts)  # one entry per (record, ALT)
        starts = alts.offsets.to_numpy()[records]
        k = np.arange(len(rec)) - np.repeat(np.cumsum(alt_counts) - alt_counts, alt_counts) + 1
        alt_values = alts.values.take(pa.array(np.repeat(starts, alt_counts) + k - 1)) if len(rec) else pa.array([], pa.large_string())
        star = _np_bool(pc.equal(alt_values, "*"))
        non_ref = _np_bool(pc.is_in(alt_values, pa.array(_NON_REF_ALLELES, pa.large_string())))
        stats.spanning_deletion_alleles += int(star.sum())
        stats.non_ref_alleles += int(non_ref.sum())
        only_non_ref = np.bincount(rec[non_ref], minlength=len(ok))[records] == alt_counts
        stats.reference_blocks += int((only_non_ref & (alt_counts > 0)).sum())
        filter_ok = _np_bool(pc.equal(filters, "PASS"))
        stats.pass_records += int((filter_ok[records] & (alt_counts > 0)).sum())

        annotation_columns = self._annotations(info, ref, alts, records, alt_counts, len(rec))
        keep = ~(star | non_ref)
        rec, k, alt_values = rec[keep], k[keep], alt_values.filter(pa.array(keep))
        annotation_columns = [c.filter(pa.array(keep)) for c in annotation_columns]
        n_alleles = len(rec)
        rec_index = pa.array(rec)
        ref_values = ref.take(rec_index)

        vtype, vtype_codes, transition = _variant_types(ref_values, alt_values)
        stats.alleles += n_alleles
        for name, count in zip(_VARIANT_TYPES, np.bincount(vtype_codes, minlength=len(_VARIANT_TYPES))):
            if count:
                stats.variant_types[name] = stats.variant_types.get(name, 0) + int(count)
        ti = _np_bool(transition)
        stats.transitions += int(ti.sum())
        stats.transversions += int((_np_bool(pc.is_valid(transition)) & ~ti).sum())

        record_columns = {  # record level: taken once per output row
            "chrom": chrom, "pos": pos, "ref": ref, "qual": qual,
            "id": pc.if_else(pc.equal(vid, "."), pa.scalar(None, vid.type), vid),
            "filter": pc.if_else(pc.equal(filters, "."), pa.scalar(None, filters.type), filters),
        }
        allele_columns = {
            "alt": alt_values, "alt_index": pa.array(k.astype(np.int16)),
            "variant_type": vtype, "is_transition": transition,
            **dict(zip(_ANNOTATION_FIELDS, annotation_columns)),
        }
        n_samples = self.sample_count
        if n_samples == 0:
            sample_columns = {name: pa.nulls(n_alleles, VARIANT_SCHEMA.field(name).type) for name in _SAMPLE_FIELDS}
            repeat = np.arange(n_alleles)
        else:
            per = [self._sample_allele_values(per_sample[s], rec, k, ref_values, alt_values) for s in range(n_samples)]
            order = (np.arange(n_alleles)[:, None] + np.arange(n_samples)[None, :] * n_alleles).ravel()
            order_index = pa.array(order)
            sample_columns = {}
            for name in _SAMPLE_FIELDS:
                if name in ("sample", "sample_role"):
                    values = [self.samples[s] for s in range(n_samples)] if name == "sample" else self.sample_roles
                    sample_columns[name] = _dictionary_array(np.tile(np.arange(n_samples), n_alleles), values)
                else:
                    joined = pa.concat_arrays([p[name] if name in ("gt", "zygosity") else p[name].cast(VARIANT_SCHEMA.field(name).type)
                                               for p in per])
                    sample_columns[name] = joined.take(order_index)
            repeat = np.repeat(np.arange(n_alleles), n_samples)
        repeat_index = pa.array(repeat)
        record_index = pa.array(rec[repeat])
        arrays = []
        for f in VARIANT_SCHEMA:
            if f.name in sample_columns:
                arrays.append(sample_columns[f.name])
            elif f.name == "genome_build":
                arrays.append(pa.DictionaryArray.from_arrays(np.zeros(len(repeat), np.int32), pa.array([self.build])))
            elif f.name in record_columns:
                column = record_columns[f.name]
                if f.name in _DICTIONARY_COLUMNS:  # encoded once per record; rows then take small indices
                    column = pc.dictionary_encode(column)
                arrays.append(column.take(record_index))
            else:
                column = allele_columns[f.name]
                if f.name in _DICTIONARY_COLUMNS and not pa.types.is_dictionary(column.type):
                    column = pc.dictionary_encode(column)
                arrays.append(column.take(repeat_index))
        arrays = [a.cast(f.type) for a, f in zip(arrays, BATCH_SCHEMA)]
        stats.rows += len(repeat)
        return pa.Table.from_arrays(arrays, schema=BATCH_SCHEMA)

    def _sample_allele_values(self, parsed: dict, rec, k, ref_values, alt_values) -> dict:
        """One sample's per-allele columns: gt, zygosity, depth, ref/alt depth, allele fraction."""
        n = len(rec)
        out: dict = {}
        if "gt" in parsed:
            gt_codes, uniques = parsed["gt"]
            width = int(k.max()) + 1 if n else 1
            key = (gt_codes[rec] + 1) * width + k  # >= 0: code -1 (no GT) shifts to 0
            seen = np.bincount(key)  # few distinct keys: a lookup table instead of sorting
            distinct = np.flatnonzero(seen)
            lookup = np.zeros(len(seen), np.int64)
            lookup[distinct] = np.arange(len(distinct))
            inverse = lookup[key]
            distinct = distinct - width
            gts, zygosities = [], []
            for value in distinct:
                code, kk = divmod(int(value), width)
                if code < 0 or uniques[code] is None:
                    gts.append(None)
                    zygosities.append(None)
                else:
                    g, z = _split_genotype(uniques[code][0], uniques[code][1], kk)
                    gts.append(g)
                    zygosities.append(z)
            out["gt"] = _dictionary_array(inverse.ravel(), gts)
            out["zygosity"] = _dictionary_array(inverse.ravel(), zygosities)
        else:  # no GT in FORMAT (Strelka2): the genotype is not reported, so it stays unknown
            out["gt"] = out["zygosity"] = pa.nulls(n, _DICTIONARY)

        ref_depth = alt_depth = np.zeros(n, np.int64)
        ref_ok = alt_ok = np.zeros(n, bool)
        total, total_ok = np.zeros(n, np.int64), np.zeros(n, bool)
        if self._varscan_counts and "RD" in parsed and "AD" in parsed:
            rd = parsed["RD"].take(pa.array(rec))
            ref_ok, ref_depth = _np_bool(pc.is_valid(rd)), rd.fill_null(0).to_numpy()
            alt_depth, alt_ok = parsed["AD"].element(rec, np.zeros(n, np.int64))
            alt_ok &= k == 1
            total, total_ok = ref_depth + alt_depth, ref_ok & alt_ok
        elif "AD" in parsed:
            counts: _CountList = parsed["AD"]
            ref_depth, ref_ok = counts.element(rec, np.zeros(n, np.int64))
            alt_depth, alt_ok = counts.element(rec, k)
            sums, first = counts.sums()
            total, total_ok = sums[rec], first[rec]
        elif self._strelka_counts:
            ref_depth, ref_ok, alt_depth, alt_ok = _strelka_tier1(parsed, rec, ref_values, alt_values)
            total, total_ok = ref_depth + alt_depth, ref_ok & alt_ok
        if "DP" in parsed:
            dp = parsed["DP"].take(pa.array(rec))
            dp_ok = _np_bool(pc.is_valid(dp))
            depth = np.where(dp_ok, dp.fill_null(0).to_numpy(), total)
            depth_ok = dp_ok | (total_ok & (not self._strelka_counts))
        else:
            depth, depth_ok = total, total_ok & (not self._strelka_counts)
        out["depth"] = _int32_array(depth, depth_ok)
        out["ref_depth"] = _int32_array(ref_depth, ref_ok)
        out["alt_depth"] = _int32_array(alt_depth, alt_ok)

        fraction = np.full(n, np.nan)
        for key in ("AF", "FA"):
            if key in parsed:
                offsets, numbers, present = parsed[key]
                lengths = np.diff(offsets)
                ok = present[rec] & (k - 1 < lengths[rec])
                at = np.where(ok, offsets[rec] + k - 1, 0)
                values = numbers.fill_null(np.nan).to_numpy() if len(numbers) else np.zeros(1)
                picked = np.where(ok, values[at], np.nan)
                fraction = np.where(np.isnan(fraction), picked, fraction)
                break
        if "FREQ" in parsed and self._varscan_counts:
            freq = parsed["FREQ"].take(pa.array(rec)).fill_null(np.nan).to_numpy() / 100.0
            fraction = np.where(np.isnan(fraction) & (k == 1), freq, fraction)
        counted = alt_ok & total_ok & (total > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            from_counts = np.where(counted, alt_depth / np.where(total > 0, total, 1), np.nan)
        fraction = np.where(np.isnan(fraction), from_counts, fraction)
        out["allele_fraction"] = pa.array(fraction.astype(np.float32), mask=np.isnan(fraction))
        return out

    def _annotations(self, info, ref, alts, records, alt_counts, n_alleles) -> list[pa.Array]:
        """The picked CSQ/ANN/EFF annotation of every (record, ALT), aligned with the allele rows."""
        types = [VARIANT_SCHEMA.field(name).type for name in _ANNOTATION_FIELDS]
        if self.annotation is None or n_alleles == 0:
            return [pa.nulls(n_alleles, t) for t in types]
        tag = self.annotation.tag
        info = info.take(pa.array(records))
        # A substring search first (fast); the regex runs only on the records that can carry the tag.
        candidates = np.flatnonzero(_np_bool(pc.match_substring(info, f"{tag}=")))
        found = pc.struct_field(pc.extract_regex(info.take(pa.array(candidates)), f"(?:^|;){tag}=(?P<v>[^;]*)"), "v")
        where = np.full(len(records), -1, np.int64)
        where[candidates] = np.arange(len(candidates))
        values = found.take(pa.array(np.where(where >= 0, where, 0), mask=where < 0)) if len(candidates) \
            else pa.nulls(len(records), info.type)
        multi = np.flatnonzero(pc.is_valid(values).to_numpy(zero_copy_only=False) & (alt_counts > 1))
        refs, alt_lists = [None] * len(records), [None] * len(records)  # spelled out only where ALTs need matching
        for i, r, a in zip(multi, ref.take(pa.array(records[multi])).to_pylist(), alts.take(pa.array(records[multi])).to_pylist()):
            refs[i], alt_lists[i] = r, a
        rows, picked = self.annotation.pick(values, refs, alt_lists, alt_counts)
        index = np.full(n_alleles, -1, np.int64)
        index[rows] = np.arange(len(rows))
        take = pa.array(np.where(index >= 0, index, 0), mask=index < 0)
        hgvsp = picked["hgvsp"]
        encoded = pc.dictionary_encode(hgvsp)
        short = pa.array([short_protein_change(v) for v in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)
        columns = [*(picked[c] for c in PICKED_COLUMNS), short, pa.array(np.full(len(rows), tag, dtype=object), pa.string())]
        if len(rows) == 0:
            return [pa.nulls(n_alleles, t) for t in types]
        return [c.take(take).cast(t) for c, t in zip(columns, types)]


_PARSE_THREADS = 2


class _HeaderLineAmongRecords(Exception):
    def __init__(self, records_before: int):
        self.records_before = records_before


def _dictionary_array(codes: np.ndarray, values: list) -> pa.DictionaryArray:
    """``values[codes[i]]`` per element as a dictionary array; a ``None`` value becomes a null element.

    (Parquet cannot write a null inside a dictionary, so distinct non-null values form the dictionary.)
    """
    distinct = sorted({v for v in values if v is not None})
    position = {v: i for i, v in enumerate(distinct)}
    remap = np.array([position.get(v, -1) for v in values] + [-1], dtype=np.int32)
    mapped = remap[codes] if len(values) else np.full(len(codes), -1, np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(mapped, mask=mapped < 0), pa.array(distinct, pa.string()))


def _done(value):
    """``value`` as an already-completed future."""
    future: Future = Future()
    future.set_result(value)
    return future


_ANNOTATION_FIELDS = ["gene", "consequence", "impact", "transcript", "hgvsc", "hgvsp", "hgvsp_short", "annotation_source"]
_SAMPLE_FIELDS = ["sample", "sample_role", "gt", "zygosity", "depth", "ref_depth", "alt_depth", "allele_fraction"]


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_VARIANT_TYPES = ["SV", "BND", "SNV", "MNV", "INS", "DEL"]


def _variant_types(ref: pa.Array, alt: pa.Array) -> tuple[pa.DictionaryArray, np.ndarray, pa.Array]:
    """(variant_type per allele, its code in :data:`_VARIANT_TYPES`, is_transition: SNVs only, null otherwise),
    as :func:`variant_type` defines them."""
    ref_len = pc.utf8_length(ref).to_numpy(zero_copy_only=False)
    alt_len = pc.utf8_length(alt).to_numpy(zero_copy_only=False)
    symbolic = _np_bool(pc.starts_with(alt, "<"))
    breakend = _np_bool(pc.match_substring_regex(alt, r"[\[\]]|^\.|\.$")) & ~symbolic
    codes = np.select(
        [symbolic, breakend, (ref_len == alt_len) & (ref_len == 1), ref_len == alt_len, alt_len > ref_len],
        [0, 1, 2, 3, 4], 5).astype(np.int32)
    pair = pc.binary_join_element_wise(pc.utf8_upper(ref), pc.utf8_upper(alt), pa.scalar("", ref.type))
    is_snv = pa.array(codes == 2)
    transition = pc.if_else(is_snv, pc.is_in(pair, pa.array(["AG", "GA", "CT", "TC"], pair.type)), pa.scalar(None, pa.bool_()))
    return pa.DictionaryArray.from_arrays(codes, pa.array(_VARIANT_TYPES)), codes, transition


def _strelka_tier1(parsed: dict, rec, ref_values: pa.Array, alt_values: pa.Array):
    """REF and ALT tier-1 read counts as Strelka2 defines them: SNVs from ``{REF}U``/``{ALT}U``, indels TAR/TIR."""
    n = len(rec)
    zero = np.zeros(n, np.int64)
    ref_depth, ref_ok, alt_depth, alt_ok = zero.copy(), np.zeros(n, bool), zero.copy(), np.zeros(n, bool)
    ref_upper, alt_upper = pc.utf8_upper(ref_values), pc.utf8_upper(alt_values)
    if all(key in parsed for key in STRELKA_SNV_COUNTS):
        for base, key in zip("ACGT", STRELKA_SNV_COUNTS):
            values, ok = parsed[key].element(rec, zero)
            is_ref, is_alt = _np_bool(pc.equal(ref_upper, base)), _np_bool(pc.equal(alt_upper, base))
            ref_depth, ref_ok = np.where(is_ref, values, ref_depth), np.where(is_ref, ok, ref_ok)
            alt_depth, alt_ok = np.where(is_alt, values, alt_depth), np.where(is_alt, ok, alt_ok)
    if all(key in parsed for key in STRELKA_INDEL_COUNTS):
        tar, tar_ok = parsed["TAR"].element(rec, zero)
        tir, tir_ok = parsed["TIR"].element(rec, zero)
        indel = pc.utf8_length(ref_values).to_numpy(zero_copy_only=False) != pc.utf8_length(alt_values).to_numpy(zero_copy_only=False)
        ref_depth, ref_ok = np.where(indel, tar, ref_depth), np.where(indel, tar_ok, ref_ok)
        alt_depth, alt_ok = np.where(indel, tir, alt_depth), np.where(indel, tir_ok, alt_ok)
    return ref_depth, ref_ok, alt_depth, alt_ok

def iter_variant_batches(vcf_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                         batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Record batches in :data:`VARIANT_SCHEMA`, streamed from ``vcf_path``."""
    yield from VariantReader(Path(vcf_path), sample_pseudonym=sample_pseudonym, batch_size=batch_size).batches()


def vcf_to_parquet(vcf_path: Path, out_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                   batch_size: int = 50_000, progress: Callable[[int], None] | None = None,
                   genome_build: str | None = None,
                   on_quarantine: Callable[[QuarantinedRecord], None] | None = None,
                   quarantine_dir: Path | None = None) -> dict:
    """Convert a VCF/BCF to Parquet atomically; returns a PHI-free summary.

    ``genome_build`` overrides header detection (for VCFs whose header names no
    build). On a file-level problem raises :class:`InvalidVcfError` and leaves no output.
    Each malformed record left out is passed to ``on_quarantine`` (with the file name, which may be PHI:
    send it to the lake's quarantine, not to run metadata) and, with a ``quarantine_dir`` (PHI zone), written
    there as ``<file>.rejected.jsonl`` (file, sha256, stage, error_class, message, line, caller: one JSON object a
    line, as the EHR readers write theirs).
    Summary keys: records, rows, samples, build, annotation, pass_fraction, titv,
    alleles, variant_types, records_without_alt, blank_lines, spanning_deletion_alleles, non_ref_alleles,
    reference_blocks, caller, sample_roles (tumor | normal | None per sample, in column order),
    quarantined_records and quarantine (up to 1000 ``{caller, line, reason}``; reasons name columns, never values).
    """
    reader = VariantReader(Path(vcf_path), sample_pseudonym=sample_pseudonym, batch_size=batch_size,
                           genome_build=genome_build)
    annotation = reader.annotation.tag if reader.annotation else None
    metadata = {
        b"radplan.schema_version": SCHEMA_VERSION.encode(),
        b"radplan.genome_build": reader.build.encode(),
        b"radplan.annotation_source": (annotation or "").encode(),
    }
    rows = 0
    with atomic_path(out_path) as tmp:
        # store_schema=False: the file's Arrow type is the Parquet one (string), not the batches' dictionary type.
        # Column statistics only where a reader filters (contig, position, sample): elsewhere they cost time.
        with pq.ParquetWriter(tmp, BATCH_SCHEMA, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS,
                              write_statistics=["chrom", "pos", "sample"], store_schema=False) as writer:
            writer.add_key_value_metadata(metadata)
            # Parquet encoding releases the GIL: it runs in a worker thread while the next block is parsed.
            # At most two batches wait, so memory stays bounded.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending: deque = deque()
                for batch in reader.batches():
                    pending.append(pool.submit(writer.write_batch, batch))
                    while len(pending) > 2:
                        pending.popleft().result()
                    rows += batch.num_rows
                    if progress is not None:
                        progress(reader.stats.records)
                while pending:
                    pending.popleft().result()
    if on_quarantine is not None:
        for record in reader.quarantine:
            on_quarantine(record)
    if quarantine_dir is not None and reader.quarantine:
        digest = file_sha256(reader.path)  # ties the records to the delivered file when the lake renamed it
        rejected = [{"file": q.file, "sha256": digest, "stage": InvalidVcfError.stage, "error_class": InvalidVcfError.__name__,
                     "message": q.reason, "line": q.line, "caller": q.caller} for q in reader.quarantine]
        atomic_write_text(Path(quarantine_dir) / f"{reader.path.name}.rejected.jsonl",
                          "".join(json.dumps(r) + "\n" for r in rejected))
    stats = reader.stats
    snvs = stats.transitions + stats.transversions
    return {
        "records": stats.records,
        "rows": rows,
        "samples": reader.sample_count,
        "build": reader.build,
        "annotation": annotation,
        "pass_fraction": stats.pass_records / stats.records if stats.records else None,
        "titv": stats.transitions / stats.transversions if stats.transversions else None,
        "snv_alleles": snvs,
        "alleles": stats.alleles,
        "variant_types": dict(sorted(stats.variant_types.items())),
        "records_without_alt": stats.records_without_alt,
        "blank_lines": stats.blank_lines,
        "spanning_deletion_alleles": stats.spanning_deletion_alleles,
        "non_ref_alleles": stats.non_ref_alleles,
        "reference_blocks": stats.reference_blocks,
        "caller": reader.caller,
        "sample_roles": reader.sample_roles,
        "quarantined_records": stats.quarantined_records,
        "quarantine": [{k: v for k, v in q.as_dict().items() if k != "file"} for q in reader.quarantine],
    }
