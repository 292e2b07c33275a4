"""VCF/BCF -> normalized, streamed Parquet (one row per variant allele x sample), with cyvcf2.

Reads plain, bgzipped or BCF files, indexed or not, record by record (memory is
flat in file size: rows are built column-wise in batches of ``batch_size`` and
written with ``pyarrow.parquet.ParquetWriter``). Multi-allelic records are split
into one row per ALT, like ``bcftools norm -m-``: per-allele AD/AF are picked,
and in each split genotype the other ALT alleles become ``0`` (so a ``1/2``
genotype is ``0/1`` for ALT 1 and for ALT 2). ``*`` (spanning deletion) alleles
and records without any ALT are skipped and counted in the summary, as are blank lines.

Output columns (:data:`VARIANT_SCHEMA`)
---------------------------------------
sample            pseudonymized sample (callback applied; raw name only when no callback); null for sites-only VCFs
chrom, pos        contig as written in the VCF; 1-based POS
ref, alt          REF and this row's single ALT, as written (not left-normalized)
alt_index         1-based index of ``alt`` among the record's ALTs
id                the ID column (dbSNP rs etc.), null for ``.``
qual              QUAL, null for ``.``
filter            ``PASS``, or the ``;``-joined filter names, null for ``.`` (unfiltered)
gt                this allele's genotype: ``0/1``, ``1/1``, ``0|1`` (phase kept), ``.`` for missing alleles
zygosity          hom_ref | het | hom_alt | hemizygous (haploid ALT) | missing
depth             FORMAT DP, else the sum of AD
ref_depth         AD of REF;  alt_depth: AD of this ALT
allele_fraction   FORMAT AF, else FA (MuTect), else alt_depth / sum(AD)
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
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from radplan.errors import InvalidVcfError
from radplan.genomics.annotation import ANNOTATION_TAGS, AnnotationParser, pick_annotation, short_protein_change
from radplan.lake import atomic_path

SCHEMA_VERSION = "1"

VARIANT_SCHEMA = pa.schema([
    ("sample", pa.string()),
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

_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_TRANSITIONS = {("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")}
# (REF, ALT) -> is_transition for upper-case single-base changes: the common case, looked up in one step
_SNV_TRANSITION = {(r, a): (r, a) in _TRANSITIONS for r in "ACGT" for a in "ACGT" if r != a}
_NO_ANNOTATION = (None,) * 8  # gene .. annotation_source
_INT_MISSING = -2147483647  # htslib int32 missing (-2^31) and vector-end (-2^31+1) are both below this


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
    return build_from_header(open_vcf(Path(vcf_path)).raw_header)


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


def _check_complete(path: Path) -> None:
    """Reject files that end mid-way (BGZF without its EOF block, text without a final newline) and
    records with empty fields (see :func:`_check_no_empty_fields`)."""
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
        if not binary:
            _check_no_empty_fields(path, compressed=True)
    elif magic[:3] == b"BCF":  # uncompressed BCF: binary, no line structure to check
        return
    elif not tail.endswith(b"\n"):
        raise InvalidVcfError(f"{path.name}: truncated VCF (last line has no newline)")
    else:
        _check_no_empty_fields(path, compressed=False)


def open_vcf(path: Path):
    """A validated cyvcf2 reader (complete file, parseable header) or :class:`InvalidVcfError`."""
    import cyvcf2

    _check_complete(path)
    try:
        reader = cyvcf2.VCF(str(path), lazy=True, threads=None)
    except Exception as exc:  # cyvcf2 raises bare Exception/OSError for unreadable headers
        raise InvalidVcfError(f"{path.name}: cannot parse VCF header ({exc})") from exc
    if not reader.raw_header.startswith("##fileformat=VCF"):
        raise InvalidVcfError(f"{path.name}: missing ##fileformat=VCF header line")
    return reader


def _detect_annotation(reader) -> AnnotationParser | None:
    for tag in ANNOTATION_TAGS:
        try:
            info = reader.get_header_type(tag)
        except KeyError:
            continue
        try:
            return AnnotationParser(tag, info.get("Description", ""))
        except ValueError as exc:
            raise InvalidVcfError(f"{tag} header: {exc}") from exc
    return None


# --------------------------------------------------------------------------- per-record helpers

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
    blank_lines: int = 0
    spanning_deletion_alleles: int = 0
    variant_types: dict[str, int] = field(default_factory=dict)


class _BatchBuilder:
    """Rows of one batch as plain tuples in schema order (one append per row), transposed once per batch."""

    def __init__(self):
        self.rows: list[tuple] = []

    def __len__(self) -> int:
        return len(self.rows)

    def to_batch(self) -> pa.RecordBatch:
        columns = list(zip(*self.rows)) if self.rows else [() for _ in VARIANT_SCHEMA]
        arrays = [pa.array(values, type=f.type) for values, f in zip(columns, VARIANT_SCHEMA)]
        return pa.RecordBatch.from_arrays(arrays, schema=VARIANT_SCHEMA)


class VariantReader:
    """Streams a VCF as Arrow record batches and keeps :class:`VcfStats`."""

    def __init__(self, vcf_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                 batch_size: int = 50_000, genome_build: str | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.path = Path(vcf_path)
        self.reader = open_vcf(self.path)
        self.build = genome_build or build_from_header(self.reader.raw_header)
        self.annotation = _detect_annotation(self.reader)
        raw_samples = list(self.reader.samples)
        self.samples: list[str | None] = [sample_pseudonym(s) for s in raw_samples] if sample_pseudonym else raw_samples
        self.sample_count = len(raw_samples)
        self.batch_size = batch_size
        self.stats = VcfStats()
        format_ids = set(re.findall(r"##FORMAT=<ID=([^,>]+)", self.reader.raw_header))
        self._has = {key: key in format_ids for key in ("AD", "DP", "AF", "FA")}
        self._split_cache: dict[tuple, tuple[str, str]] = {}

    def batches(self) -> Iterator[pa.RecordBatch]:
        builder = _BatchBuilder()
        yielded = 0
        try:
            for variant in self.reader:
                self._add_record(variant, builder.rows)
                if len(builder) >= self.batch_size:
                    yielded += 1
                    yield builder.to_batch()
                    builder = _BatchBuilder()
        except InvalidVcfError:
            raise
        except Exception as exc:  # htslib parse errors surface as bare Exception
            raise InvalidVcfError(
                f"{self.path.name}: malformed record after record {self.stats.records} ({exc})") from exc
        if len(builder) or not yielded:  # an empty VCF still yields one (empty) batch with the schema
            yield builder.to_batch()

    def _format_rows(self, variant, key: str) -> list | None:
        """FORMAT ``key`` as per-sample Python lists (one ``tolist`` per record: cheaper than numpy scalars)."""
        if not self._has[key]:
            return None
        values = variant.format(key)
        return None if values is None else values.tolist()

    def _add_record(self, variant, rows: list[tuple]) -> None:
        # Hot loop: one call per cyvcf2 property, plain lists, memoized genotype strings.
        stats = self.stats
        alts = variant.ALT
        chrom = variant.CHROM
        if chrom[:1] == "#":
            raise InvalidVcfError(f"{self.path.name}: a header line after record {stats.records} (VCFs concatenated "
                                  "without merging?)")
        if not alts:
            if not chrom:  # a blank line: htslib returns an empty record (reading its REF crashes cyvcf2)
                stats.blank_lines += 1
                return
            stats.records += 1
            stats.records_without_alt += 1
            return
        stats.records += 1
        ref = variant.REF
        pos, vid, qual = variant.POS, variant.ID, variant.QUAL
        filters = variant.FILTERS
        filter_text = ";".join(filters) if filters and filters != ["."] else None
        if filter_text == "PASS":
            stats.pass_records += 1

        annotations = None
        if self.annotation is not None:
            value = variant.INFO.get(self.annotation.tag)
            if value:
                if isinstance(value, tuple):
                    value = ",".join(value)
                annotations = [pick_annotation(c) for c in self.annotation.per_allele(value, ref, alts)]

        n_samples = self.sample_count
        if n_samples:
            genotypes = variant.genotypes
            has = self._has
            ad = self._format_rows(variant, "AD") if has["AD"] else None
            dp = self._format_rows(variant, "DP") if has["DP"] else None
            af = None
            if has["AF"] or has["FA"]:
                af = self._format_rows(variant, "AF") or self._format_rows(variant, "FA")
        n_alts = len(alts)
        sample_range = range(n_samples) if n_samples else (None,)
        split_cache = self._split_cache
        build = self.build
        tag = self.annotation.tag if self.annotation is not None else None
        for k, alt in enumerate(alts, start=1):
            if alt == "*":
                stats.spanning_deletion_alleles += 1
                continue
            snv = _SNV_TRANSITION.get((ref, alt))
            if snv is not None:
                vtype, is_transition = "SNV", snv
            else:
                vtype = variant_type(ref, alt)
                is_transition = (ref.upper(), alt.upper()) in _TRANSITIONS if vtype == "SNV" else None
            stats.alleles += 1
            stats.variant_types[vtype] = stats.variant_types.get(vtype, 0) + 1
            if is_transition:
                stats.transitions += 1
            elif is_transition is not None:
                stats.transversions += 1
            picked = annotations[k - 1] if annotations else None
            if picked is None:
                annotation_values = _NO_ANNOTATION
            else:
                annotation_values = (picked.gene, picked.consequence, picked.impact, picked.transcript, picked.hgvsc,
                                     picked.hgvsp, short_protein_change(picked.hgvsp), tag)
            append = rows.append
            for s in sample_range:
                if s is None:
                    append((None, chrom, pos, ref, alt, k, vid, qual, filter_text, None, None, None, None, None, None,
                            vtype, is_transition, *annotation_values, build))
                    continue
                call = genotypes[s]
                key = (*call, k, n_alts)
                split = split_cache.get(key)
                if split is None:
                    if max(call[:-1], default=-1) > n_alts:
                        raise InvalidVcfError(f"{self.path.name}: record {stats.records} has a genotype allele index beyond its "
                                              f"{n_alts} ALT allele(s)")
                    split = split_cache[key] = _split_genotype(call[:-1], bool(call[-1]), k)
                ref_depth = alt_depth = ad_sum = None
                if ad is not None:
                    row = ad[s]
                    ref_depth = row[0] if row[0] > _INT_MISSING else None
                    alt_depth = row[k] if k < len(row) and row[k] > _INT_MISSING else None
                    if ref_depth is not None:  # plain sum unless AD holds missing/vector-end values
                        ad_sum = sum(row) if min(row) >= 0 else sum(x for x in row if x > _INT_MISSING)
                depth = dp[s][0] if dp is not None and dp[s][0] > _INT_MISSING else ad_sum
                fraction = None
                if af is not None and k - 1 < len(af[s]) and af[s][k - 1] == af[s][k - 1]:  # NaN = missing
                    fraction = af[s][k - 1]
                elif alt_depth is not None and ad_sum:
                    fraction = alt_depth / ad_sum
                # tuple in VARIANT_SCHEMA column order
                append((self.samples[s], chrom, pos, ref, alt, k, vid, qual, filter_text, split[0], split[1], depth,
                        ref_depth, alt_depth, fraction, vtype, is_transition, *annotation_values, build))


def iter_variant_batches(vcf_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                         batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
    """Record batches in :data:`VARIANT_SCHEMA`, streamed from ``vcf_path``."""
    yield from VariantReader(Path(vcf_path), sample_pseudonym=sample_pseudonym, batch_size=batch_size).batches()


def vcf_to_parquet(vcf_path: Path, out_path: Path, *, sample_pseudonym: Callable[[str], str] | None = None,
                   batch_size: int = 50_000, progress: Callable[[int], None] | None = None,
                   genome_build: str | None = None) -> dict:
    """Convert a VCF/BCF to Parquet atomically; returns a PHI-free summary.

    ``genome_build`` overrides header detection (for VCFs whose header names no
    build). On malformed input raises :class:`InvalidVcfError` and leaves no output.
    Summary keys: records, rows, samples, build, annotation, pass_fraction, titv,
    alleles, variant_types, records_without_alt, blank_lines, spanning_deletion_alleles.
    """
    reader = VariantReader(Path(vcf_path), sample_pseudonym=sample_pseudonym, batch_size=batch_size,
                           genome_build=genome_build)
    annotation = reader.annotation.tag if reader.annotation else None
    metadata = {
        b"radplan.schema_version": SCHEMA_VERSION.encode(),
        b"radplan.genome_build": reader.build.encode(),
        b"radplan.annotation_source": (annotation or "").encode(),
    }
    schema = VARIANT_SCHEMA.with_metadata(metadata)
    rows = 0
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in reader.batches():
                writer.write_batch(batch)
                rows += batch.num_rows
                if progress is not None:
                    progress(reader.stats.records)
    stats = reader.stats
    stats.rows = rows
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
    }
