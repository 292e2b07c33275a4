"""BAM/CRAM/SAM reads: header summary, depth at positions, coverage QC and samtools-style pileup (pysam).

Coordinates are 1-based and inclusive everywhere (positions ``(chrom, pos)``,
regions ``(chrom, start, end)``), as in VCF and samtools.

CRAM always needs ``reference_fasta`` (no download from the EBI reference server:
a missing reference is an :class:`InvalidAlignmentError`). A file without an
index (.bai/.crai/.csi) is read sequentially from the start and the scan stops
after the last requested position, which needs a coordinate-sorted file; with
``allow_sequential=False`` a missing index is an error instead.

Read filters follow the samtools tools they mirror: :func:`depth_at_positions`
and :func:`coverage_qc` count like ``samtools depth`` (skip unmapped, secondary,
QC-fail and duplicate reads; deletions and reference skips do not count; mates
are not de-overlapped); :func:`pileup_lines` reproduces ``samtools mpileup -B
--ff 0x14`` (no BAQ, skip unmapped/reverse reads, base quality >= 13, orphan
pairs skipped, overlapping mates de-duplicated).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from radplan.errors import InvalidAlignmentError
from radplan.settings import never_fetch_cram_references

# samtools depth's default flag filter: UNMAP | SECONDARY | QCFAIL | DUP
DEPTH_FLAG_FILTER = 0x4 | 0x100 | 0x200 | 0x400
MPILEUP_MIN_BASE_QUALITY = 13  # samtools mpileup -Q default


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


def _depth_args(min_base_quality: int, min_mapping_quality: int) -> dict:
    return dict(stepper="all", flag_filter=DEPTH_FLAG_FILTER, min_base_quality=min_base_quality,
                min_mapping_quality=min_mapping_quality, ignore_overlaps=False, ignore_orphans=False,
                compute_baq=False, max_depth=1_000_000)


def _column_depth(column) -> int:
    return sum(1 for read in column.pileups if not read.is_del and not read.is_refskip)


def _depth_arrays(path: Path, reference_fasta: Path | None, requests: list[tuple[str, int, int]],
                  allow_sequential: bool, min_base_quality: int = 0, min_mapping_quality: int = 0) -> list[np.ndarray]:
    """Per-base depth arrays for each 1-based inclusive request, in request order.

    Indexed files are queried region by region; unindexed ones are scanned once
    (CRAM cannot seek back), with all requests served from the same pass.
    """
    alignment = _open(path, reference_fasta)
    arrays = [np.zeros(end - start + 1, dtype=np.int64) for _, start, end in requests]
    args = _depth_args(min_base_quality, min_mapping_quality)
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
                       allow_sequential: bool = True) -> pd.DataFrame:
    """Depth (as ``samtools depth -a``) at each 1-based position; columns chrom, pos, depth."""
    requests = [(chrom, int(pos), int(pos)) for chrom, pos in positions]
    arrays = _depth_arrays(path, reference_fasta, requests, allow_sequential, min_base_quality, min_mapping_quality)
    rows = [(chrom, start, int(depths[0])) for (chrom, start, _), depths in zip(requests, arrays)]
    return pd.DataFrame(rows, columns=["chrom", "pos", "depth"]).astype({"depth": "int64"})


def coverage_qc(path: Path, regions: list[tuple[str, int, int]], pgx_positions: list[tuple[str, int]], *,
                reference_fasta: Path | None = None, min_depth: int = 20, allow_sequential: bool = True) -> pd.DataFrame:
    """Per region: mean/median depth and fraction of bases >= ``min_depth``; per PGx position: depth and callable.

    Columns: kind ('region'|'pgx_position'), chrom, start, end, mean_depth, median_depth,
    fraction_at_min_depth, depth (positions only), callable (positions only).
    """
    for chrom, start, end in regions:
        if end < start:
            raise ValueError(f"region end before start: {chrom}:{start}-{end}")
    requests = [(c, int(s), int(e)) for c, s, e in regions] + [(c, int(p), int(p)) for c, p in pgx_positions]
    arrays = _depth_arrays(path, reference_fasta, requests, allow_sequential)
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


def pileup_lines(path: Path, region: str, *, reference_fasta: Path, allow_sequential: bool = True) -> list[str]:
    """``samtools mpileup -B --ff 0x14 -f REF -r REGION`` text lines (chrom, pos, ref, depth, bases, quals)."""
    import pysam

    chrom, start, end = _parse_region(region)
    alignment = _open(path, reference_fasta)
    fasta = pysam.FastaFile(str(reference_fasta))
    lines = []
    for column in _columns(alignment, path, chrom, start, end, allow_sequential,
                           stepper="samtools", fastafile=fasta, flag_filter=0x4 | 0x10,
                           min_base_quality=MPILEUP_MIN_BASE_QUALITY, min_mapping_quality=0,
                           compute_baq=False, ignore_overlaps=True, ignore_orphans=True, max_depth=8000):
        pos0 = column.reference_pos
        ref_base = fasta.fetch(chrom, pos0, pos0 + 1).upper() or "N"
        bases = "".join(column.get_query_sequences(mark_matches=True, mark_ends=True, add_indels=True))
        quals = "".join(chr(q + 33) for q in column.get_query_qualities())
        lines.append(f"{chrom}\t{pos0 + 1}\t{ref_base}\t{column.get_num_aligned()}\t{bases}\t{quals}")
    return lines
