"""BAM/CRAM/SAM reads: header summary, depth at positions, coverage QC and samtools-style pileup (pysam).

Coordinates are 1-based and inclusive everywhere (positions ``(chrom, pos)``,
regions ``(chrom, start, end)``), as in VCF and samtools.

CRAM always needs ``reference_fasta`` (no download from the EBI reference server:
a missing reference is an :class:`InvalidAlignmentError`). A file without an
index (.bai/.crai/.csi) is read sequentially from the start and the scan stops
after the last requested position, which needs a coordinate-sorted file; with
``allow_sequential=False`` a missing index is an error instead.

Read filters are a :class:`PileupFilters`, written as the samtools options they mirror
(:meth:`PileupFilters.from_samtools_options`, so configuration can carry them as text).
Defaults: :func:`depth_at_positions` and :func:`coverage_qc` count like ``samtools depth``
(:data:`SAMTOOLS_DEPTH`: skip unmapped, secondary, QC-fail and duplicate reads; no base or
mapping quality minimum; deletions and reference skips do not count; mates are not
de-overlapped); :func:`pileup_lines` reproduces ``samtools mpileup -B --ff 0x14``
(:data:`MPILEUP_NO_BAQ_FORWARD`: no BAQ, skip unmapped/reverse reads, base quality >= 13,
orphan pairs skipped, overlapping mates de-duplicated), the options of samtools' own
expected pileup.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from radplan.errors import InvalidAlignmentError
from radplan.settings import never_fetch_cram_references

# SAM flag names as samtools spells them (samtools flags), for --ff/-G values like "UNMAP,DUP"
SAM_FLAGS = {"PAIRED": 0x1, "PROPER_PAIR": 0x2, "UNMAP": 0x4, "MUNMAP": 0x8, "REVERSE": 0x10, "MREVERSE": 0x20,
             "READ1": 0x40, "READ2": 0x80, "SECONDARY": 0x100, "QCFAIL": 0x200, "DUP": 0x400, "SUPPLEMENTARY": 0x800}
# samtools depth's and mpileup's default flag filter: UNMAP | SECONDARY | QCFAIL | DUP
DEPTH_FLAG_FILTER = 0x4 | 0x100 | 0x200 | 0x400
MPILEUP_MIN_BASE_QUALITY = 13  # samtools mpileup -Q default


@dataclass(frozen=True)
class PileupFilters:
    """Which reads and bases a pileup counts, field by field the samtools option it mirrors.

    ``flag_filter`` (``--ff``/``-G``: skip reads with any of these flags), ``min_base_quality``
    (``-Q``), ``min_mapping_quality`` (``-q``), ``baq`` (off with ``-B``), ``ignore_overlaps``
    (de-duplicate overlapping mates; off with ``-x``), ``ignore_orphans`` (skip anomalous pairs;
    off with ``-A``), ``max_depth`` (``-d``). The defaults are ``samtools mpileup``'s own.
    """

    flag_filter: int = DEPTH_FLAG_FILTER
    min_base_quality: int = MPILEUP_MIN_BASE_QUALITY
    min_mapping_quality: int = 0
    baq: bool = True
    ignore_overlaps: bool = True
    ignore_orphans: bool = True
    max_depth: int = 8000

    @classmethod
    def from_samtools_options(cls, options: str, base: "PileupFilters | None" = None, *,
                              tool: str = "mpileup") -> "PileupFilters":
        """Filters from ``samtools mpileup`` or ``samtools depth`` option text over ``base``.

        For example ``"-B --ff 0x14 -q 20"`` (mpileup) or ``"-Q 20 -G REVERSE"`` (depth). The two
        tools spell options differently (depth's ``-q`` is base quality and its ``-G`` adds to the
        default flag filter), so ``tool`` names the one the text is for. Only options that change
        which reads/bases count are accepted; anything else is a ValueError naming it, never
        silently ignored. ``base`` defaults to the tool's own defaults.
        """
        if tool not in _OPTIONS:
            raise ValueError(f"tool must be one of {sorted(_OPTIONS)}, got {tool!r}")
        valued, switches = _OPTIONS[tool]
        filters = base or (cls() if tool == "mpileup" else SAMTOOLS_DEPTH)
        words = shlex.split(options)
        i = 0
        while i < len(words):
            word, value = words[i], None
            if "=" in word and word.startswith("--"):
                word, value = word.split("=", 1)
            if word in switches:
                filters = replace(filters, **{switches[word][0]: switches[word][1]})
            elif word in valued:
                if value is None:
                    if i + 1 >= len(words):
                        raise ValueError(f"samtools {tool} option {word} needs a value")
                    i += 1
                    value = words[i]
                field = valued[word]
                if field == "flag_filter":
                    filters = replace(filters, flag_filter=_flag_value(value))
                elif field == "add_flags":
                    filters = replace(filters, flag_filter=filters.flag_filter | _flag_value(value))
                elif field == "remove_flags":
                    filters = replace(filters, flag_filter=filters.flag_filter & ~_flag_value(value))
                else:
                    filters = replace(filters, **{field: _int_option(word, value)})
            else:
                raise ValueError(f"unsupported samtools {tool} option {word!r} "
                                 f"(supported: {', '.join(sorted([*valued, *switches]))})")
            i += 1
        return filters

    def pysam_args(self) -> dict:
        return dict(flag_filter=self.flag_filter, min_base_quality=self.min_base_quality,
                    min_mapping_quality=self.min_mapping_quality, compute_baq=self.baq,
                    ignore_overlaps=self.ignore_overlaps, ignore_orphans=self.ignore_orphans, max_depth=self.max_depth)


def _int_option(option: str, value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise ValueError(f"samtools option {option} needs an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"samtools option {option} must not be negative, got {value!r}")
    return number


def _flag_value(value: str) -> int:
    """A flag mask as samtools reads it: a number (decimal, 0x hex, 0 octal) or comma-separated names."""
    if value[:1].isdigit():
        return _int_option("--ff", value)
    mask = 0
    for name in value.split(","):
        if name.upper() not in SAM_FLAGS:
            raise ValueError(f"unknown SAM flag name {name!r} (known: {', '.join(SAM_FLAGS)})")
        mask |= SAM_FLAGS[name.upper()]
    return mask


# option -> field (valued) and option -> (field, value) (switches), per samtools tool
_OPTIONS = {
    "mpileup": ({"--ff": "flag_filter", "--excl-flags": "flag_filter", "-Q": "min_base_quality",
                 "--min-BQ": "min_base_quality", "-q": "min_mapping_quality", "--min-MQ": "min_mapping_quality",
                 "-d": "max_depth", "--max-depth": "max_depth"},
                {"-B": ("baq", False), "--no-BAQ": ("baq", False), "-x": ("ignore_overlaps", False),
                 "--ignore-overlaps-removal": ("ignore_overlaps", False), "-A": ("ignore_orphans", False),
                 "--count-orphans": ("ignore_orphans", False)}),
    "depth": ({"-G": "add_flags", "-g": "remove_flags", "-q": "min_base_quality", "--min-BQ": "min_base_quality",
               "-Q": "min_mapping_quality", "--min-MQ": "min_mapping_quality"},
              {"-s": ("ignore_overlaps", True)}),
}

# ``samtools depth`` (counts every base of every primary, non-QC-fail, non-duplicate read)
SAMTOOLS_DEPTH = PileupFilters(flag_filter=DEPTH_FLAG_FILTER, min_base_quality=0, min_mapping_quality=0, baq=False,
                               ignore_overlaps=False, ignore_orphans=False, max_depth=1_000_000)
# ``samtools mpileup -B --ff 0x14``: the options of samtools' test/dat/mpileup.out.3
MPILEUP_NO_BAQ_FORWARD = PileupFilters.from_samtools_options("-B --ff 0x14")


def _open(path: Path, reference_fasta: Path | None):
    import pysam

    path = Path(path)
    if not path.is_file():
        raise InvalidAlignmentError(f"alignment file not found: {path.name}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    is_cram = magic == b"CRAM"
    if is_cram and reference_fasta is None:
        raise InvalidAlignmentError(f"{path.name}: CRAM needs reference_fasta to decode")
    if reference_fasta is not None and not Path(reference_fasta).is_file():
        raise InvalidAlignmentError(f"reference FASTA not found: {Path(reference_fasta).name}")
    mode = "rc" if is_cram else ("rb" if magic[:2] == b"\x1f\x8b" else "r")
    try:
        # REF_PATH/REF_CACHE pointing nowhere: never fetch CRAM references over the network
        never_fetch_cram_references()
        return pysam.AlignmentFile(str(path), mode, reference_filename=str(reference_fasta) if reference_fasta else None,
                                   check_sq=False)
    except (ValueError, OSError) as exc:
        raise InvalidAlignmentError(f"{path.name}: unreadable alignment file ({exc})") from exc


def _has_index(alignment) -> bool:
    try:
        return alignment.has_index()
    except (ValueError, AttributeError):
        return False


def _check_sequential(alignment, path: Path, allow_sequential: bool) -> None:
    if not allow_sequential:
        raise InvalidAlignmentError(f"{Path(path).name}: no index (.bai/.crai/.csi) and sequential reading is disabled")
    if alignment.header.to_dict().get("HD", {}).get("SO") != "coordinate":
        raise InvalidAlignmentError(f"{Path(path).name}: neither indexed nor coordinate-sorted; cannot query regions")


def alignment_summary(path: Path, *, reference_fasta: Path | None = None) -> dict:
    """Read groups, samples (raw SM names: the caller pseudonymizes) and read counts (one full pass).

    Counts are over primary records: mapped, unmapped, plus secondary, supplementary
    and duplicate record counts.
    """
    alignment = _open(path, reference_fasta)
    header = alignment.header.to_dict()
    read_groups = [{key: rg.get(key) for key in ("ID", "SM", "LB", "PL")} for rg in header.get("RG", [])]
    counts = Counter()
    try:
        for read in alignment.fetch(until_eof=True):
            if read.is_secondary:
                counts["secondary"] += 1
            elif read.is_supplementary:
                counts["supplementary"] += 1
            else:
                counts["unmapped" if read.is_unmapped else "mapped"] += 1
            if read.is_duplicate:
                counts["duplicates"] += 1
    except (OSError, ValueError) as exc:
        raise InvalidAlignmentError(f"{Path(path).name}: truncated or corrupt alignment data ({exc})") from exc
    return {
        "format": "CRAM" if alignment.is_cram else ("BAM" if alignment.is_bam else "SAM"),
        "indexed": _has_index(alignment),
        "sort_order": header.get("HD", {}).get("SO"),
        "contigs": len(header.get("SQ", [])),
        "read_groups": read_groups,
        "samples": sorted({rg["SM"] for rg in read_groups if rg.get("SM")}),
        "mapped": counts["mapped"],
        "unmapped": counts["unmapped"],
        "secondary": counts["secondary"],
        "supplementary": counts["supplementary"],
        "duplicates": counts["duplicates"],
    }


def _columns(alignment, path: Path, chrom: str, start: int, end: int, allow_sequential: bool, **pileup_args) -> Iterator:
    """Pileup columns over chrom:start-end (1-based inclusive), indexed or sequential."""
    try:
        if _has_index(alignment):
            yield from alignment.pileup(chrom, start - 1, end, truncate=True, **pileup_args)
            return
        _check_sequential(alignment, path, allow_sequential)
        target_tid = alignment.get_tid(chrom)
        if target_tid < 0:
            return
        for column in alignment.pileup(**pileup_args):
            tid = column.reference_id
            if tid < target_tid or (tid == target_tid and column.reference_pos + 1 < start):
                continue
            if tid > target_tid or column.reference_pos + 1 > end:
                break
            yield column
    except (OSError, ValueError) as exc:
        raise InvalidAlignmentError(f"{Path(path).name}: cannot read alignments for the region ({exc})") from exc


def _depth_args(filters: PileupFilters, reference_fasta: Path | None) -> dict:
    # pysam's "samtools" stepper applies every filter field (its "all" stepper ignores min_mapping_quality)
    args = dict(stepper="samtools", **filters.pysam_args())
    if filters.baq:
        if reference_fasta is None:
            raise ValueError("BAQ needs the reference FASTA: pass reference_fasta or disable BAQ (-B)")
    if reference_fasta is not None:
        import pysam

        args["fastafile"] = pysam.FastaFile(str(reference_fasta))
    return args


def _column_depth(column) -> int:
    return sum(1 for read in column.pileups if not read.is_del and not read.is_refskip)


def _depth_arrays(path: Path, reference_fasta: Path | None, requests: list[tuple[str, int, int]],
                  allow_sequential: bool, filters: PileupFilters = SAMTOOLS_DEPTH) -> list[np.ndarray]:
    """Per-base depth arrays for each 1-based inclusive request, in request order.

    Indexed files are queried region by region; unindexed ones are scanned once
    (CRAM cannot seek back), with all requests served from the same pass.
    """
    alignment = _open(path, reference_fasta)
    arrays = [np.zeros(end - start + 1, dtype=np.int64) for _, start, end in requests]
    args = _depth_args(filters, reference_fasta)
    if _has_index(alignment):
        for (chrom, start, end), depths in zip(requests, arrays):
            for column in _columns(alignment, path, chrom, start, end, allow_sequential, **args):
                depths[column.reference_pos + 1 - start] = _column_depth(column)
        return arrays
    _check_sequential(alignment, path, allow_sequential)
    pending = sorted((alignment.get_tid(chrom), start, end, i) for i, (chrom, start, end) in enumerate(requests))
    pending = [r for r in pending if r[0] >= 0]
    active: list[tuple[int, int, int, int]] = []
    try:
        for column in alignment.pileup(**args):
            tid, pos = column.reference_id, column.reference_pos + 1
            while pending and (pending[0][0], pending[0][1]) <= (tid, pos):
                active.append(pending.pop(0))
            active = [r for r in active if r[0] == tid and r[2] >= pos]
            if not active and not pending:
                break
            hits = [r for r in active if r[0] == tid and r[1] <= pos <= r[2]]
            if hits:
                depth = _column_depth(column)
                for _, start, _, i in hits:
                    arrays[i][pos - start] = depth
    except (OSError, ValueError) as exc:
        raise InvalidAlignmentError(f"{Path(path).name}: cannot read alignments ({exc})") from exc
    return arrays


def depth_at_positions(path: Path, positions: Iterable[tuple[str, int]], *, reference_fasta: Path | None = None,
                       min_base_quality: int = 0, min_mapping_quality: int = 0,
                       allow_sequential: bool = True, filters: PileupFilters | None = None) -> pd.DataFrame:
    """Depth at each 1-based position; columns chrom, pos, depth.

    Default: as ``samtools depth -a`` with ``-Q min_base_quality -q min_mapping_quality``;
    ``filters`` (which then carries the quality minimums too) counts otherwise.
    """
    if filters is None:
        filters = replace(SAMTOOLS_DEPTH, min_base_quality=min_base_quality, min_mapping_quality=min_mapping_quality)
    requests = [(chrom, int(pos), int(pos)) for chrom, pos in positions]
    arrays = _depth_arrays(path, reference_fasta, requests, allow_sequential, filters)
    rows = [(chrom, start, int(depths[0])) for (chrom, start, _), depths in zip(requests, arrays)]
    return pd.DataFrame(rows, columns=["chrom", "pos", "depth"]).astype({"depth": "int64"})


def coverage_qc(path: Path, regions: list[tuple[str, int, int]], pgx_positions: list[tuple[str, int]], *,
                reference_fasta: Path | None = None, min_depth: int = 20, allow_sequential: bool = True,
                filters: PileupFilters = SAMTOOLS_DEPTH) -> pd.DataFrame:
    """Per region: mean/median depth and fraction of bases >= ``min_depth``; per PGx position: depth and callable.

    Reads and bases counted per ``filters`` (default ``samtools depth``; from configuration text
    with :meth:`PileupFilters.from_samtools_options`, e.g. ``"-q 20 -Q 13"`` over :data:`SAMTOOLS_DEPTH`).

    Columns: kind ('region'|'pgx_position'), chrom, start, end, mean_depth, median_depth,
    fraction_at_min_depth, depth (positions only), callable (positions only).
    """
    for chrom, start, end in regions:
        if end < start:
            raise ValueError(f"region end before start: {chrom}:{start}-{end}")
    requests = [(c, int(s), int(e)) for c, s, e in regions] + [(c, int(p), int(p)) for c, p in pgx_positions]
    arrays = _depth_arrays(path, reference_fasta, requests, allow_sequential, filters)
    rows = []
    for (chrom, start, end), depths in zip(regions, arrays):
        rows.append({"kind": "region", "chrom": chrom, "start": int(start), "end": int(end),
                     "mean_depth": float(depths.mean()), "median_depth": float(np.median(depths)),
                     "fraction_at_min_depth": float((depths >= min_depth).mean()), "depth": None, "callable": None})
    for (chrom, pos), depths in zip(pgx_positions, arrays[len(regions):]):
        depth = int(depths[0])
        rows.append({"kind": "pgx_position", "chrom": chrom, "start": int(pos), "end": int(pos),
                     "mean_depth": float(depth), "median_depth": float(depth),
                     "fraction_at_min_depth": float(depth >= min_depth), "depth": depth, "callable": depth >= min_depth})
    frame = pd.DataFrame(rows, columns=["kind", "chrom", "start", "end", "mean_depth", "median_depth",
                                        "fraction_at_min_depth", "depth", "callable"])
    return frame.astype({"depth": "Int64", "callable": "boolean"})


def _parse_region(region: str) -> tuple[str, int, int]:
    chrom, _, span = region.rpartition(":")
    if not chrom:
        raise ValueError(f"region must be CHROM:START-END, got {region!r}")
    start, _, end = span.replace(",", "").partition("-")
    return chrom, int(start), int(end or start)


def pileup_lines(path: Path, region: str, *, reference_fasta: Path, allow_sequential: bool = True,
                 filters: PileupFilters = MPILEUP_NO_BAQ_FORWARD) -> list[str]:
    """``samtools mpileup OPTIONS -f REF -r REGION`` text lines (chrom, pos, ref, depth, bases, quals).

    ``filters`` are the OPTIONS (default ``-B --ff 0x14``; others via
    :meth:`PileupFilters.from_samtools_options`).
    """
    import pysam

    chrom, start, end = _parse_region(region)
    alignment = _open(path, reference_fasta)
    fasta = pysam.FastaFile(str(reference_fasta))
    lines = []
    for column in _columns(alignment, path, chrom, start, end, allow_sequential,
                           stepper="samtools", fastafile=fasta, **filters.pysam_args()):
        pos0 = column.reference_pos
        ref_base = fasta.fetch(chrom, pos0, pos0 + 1).upper() or "N"
        bases = "".join(column.get_query_sequences(mark_matches=True, mark_ends=True, add_indels=True))
        quals = "".join(chr(q + 33) for q in column.get_query_qualities())
        lines.append(f"{chrom}\t{pos0 + 1}\t{ref_base}\t{column.get_num_aligned()}\t{bases}\t{quals}")
    return lines
