"""Reads QC against samtools' own expected pileup and the samtools CLI (real 1000 Genomes reads)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from radplan.errors import InvalidAlignmentError
from radplan.genomics.reads import alignment_summary, coverage_qc, depth_at_positions, pileup_lines


@pytest.fixture(scope="module")
def reads_dir(shared_data) -> Path:
    return shared_data / "genomics" / "reads"


@pytest.mark.parametrize("name", ["mpileup.1.bam", "mpileup.1.cram"])
def test_pileup_equals_samtools_expected_output(reads_dir, name):
    expected = (reads_dir / "mpileup.out.3").read_text().splitlines()
    ours = pileup_lines(reads_dir / name, "17:1050-1060", reference_fasta=reads_dir / "mpileup.ref.fa")
    assert ours == expected


def _samtools_depth(bam: Path, region: str) -> dict[int, int]:
    out = subprocess.run(["samtools", "depth", "-a", "-r", region, str(bam)], check=True, capture_output=True, text=True).stdout
    return {int(pos): int(depth) for _, pos, depth in (line.split("\t") for line in out.splitlines())}


def test_depth_equals_samtools_depth(reads_dir):
    expected = _samtools_depth(reads_dir / "mpileup.1.bam", "17:900-1200")
    positions = [("17", p) for p in range(900, 1201, 7)]
    for name in ("mpileup.1.bam", "mpileup.1.cram"):
        ours = depth_at_positions(reads_dir / name, positions, reference_fasta=reads_dir / "mpileup.ref.fa")
        assert dict(zip(ours["pos"], ours["depth"])) == {p: expected[p] for _, p in positions}, name


def test_coverage_qc(reads_dir):
    expected = _samtools_depth(reads_dir / "mpileup.1.bam", "17:1000-1999")
    qc = coverage_qc(reads_dir / "mpileup.1.bam", [("17", 1000, 1999)], [("17", 1050), ("17", 4199)], min_depth=10)
    region = qc[qc["kind"] == "region"].iloc[0]
    values = list(expected.values())
    assert region["mean_depth"] == pytest.approx(sum(values) / len(values))
    assert region["fraction_at_min_depth"] == pytest.approx(sum(v >= 10 for v in values) / len(values))
    positions = qc[qc["kind"] == "pgx_position"].set_index("start")
    assert positions.loc[1050, "depth"] == expected[1050] and bool(positions.loc[1050, "callable"]) == (expected[1050] >= 10)


def test_alignment_summary(reads_dir):
    bam = alignment_summary(reads_dir / "mpileup.1.bam")
    cram = alignment_summary(reads_dir / "mpileup.1.cram", reference_fasta=reads_dir / "mpileup.ref.fa")
    flagstat = subprocess.run(["samtools", "view", "-c", "-F", "0x904", str(reads_dir / "mpileup.1.bam")],
                              check=True, capture_output=True, text=True).stdout
    assert bam["mapped"] == int(flagstat) and bam["indexed"] and not cram["indexed"]
    assert bam["samples"] == cram["samples"] == ["HG00100"]
    header_rgs = subprocess.run(["samtools", "view", "-H", str(reads_dir / "mpileup.1.bam")],
                                check=True, capture_output=True, text=True).stdout.count("\n@RG\t")
    assert len(bam["read_groups"]) == header_rgs
    for key in ("mapped", "unmapped", "read_groups"):
        assert bam[key] == cram[key]


def test_unindexed_bam_is_read_sequentially_or_rejected_clearly(reads_dir, tmp_path):
    bam = tmp_path / "noindex.bam"
    shutil.copy(reads_dir / "mpileup.1.bam", bam)
    expected = (reads_dir / "mpileup.out.3").read_text().splitlines()
    assert pileup_lines(bam, "17:1050-1060", reference_fasta=reads_dir / "mpileup.ref.fa") == expected
    with pytest.raises(InvalidAlignmentError, match="no index"):
        depth_at_positions(bam, [("17", 1050)], allow_sequential=False)
    unsorted = tmp_path / "unsorted.sam"
    text = (reads_dir / "mpileup.1.sam").read_text().replace("SO:coordinate", "SO:unsorted")
    unsorted.write_text(text)
    with pytest.raises(InvalidAlignmentError, match="coordinate-sorted"):
        depth_at_positions(unsorted, [("17", 1050)])


def test_bad_inputs(reads_dir, tmp_path):
    with pytest.raises(InvalidAlignmentError, match="CRAM needs reference"):
        alignment_summary(reads_dir / "mpileup.1.cram")
    with pytest.raises(InvalidAlignmentError, match="not found"):
        alignment_summary(tmp_path / "missing.bam")
    garbage = tmp_path / "garbage.bam"
    garbage.write_bytes(b"\x1f\x8b" + b"not really a bam" * 10)
    with pytest.raises(InvalidAlignmentError):
        alignment_summary(garbage)
    truncated = tmp_path / "truncated.bam"
    data = (reads_dir / "mpileup.1.bam").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAlignmentError):
        alignment_summary(truncated)
