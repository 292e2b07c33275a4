"""Reads QC against samtools' own expected pileup and the samtools CLI (real 1000 Genomes reads)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from radplan.errors import InvalidAlignmentError
from radplan.genomics.reads import (
    MPILEUP_NO_BAQ_FORWARD, SAMTOOLS_DEPTH, PileupFilters, alignment_summary, coverage_qc, depth_at_positions, pileup_lines,
)


@pytest.fixture(scope="module")
def reads_dir(shared_data) -> Path:
    return shared_data / "genomics" / "reads"


@pytest.mark.parametrize("name", ["mpileup.1.bam", "mpileup.1.cram"])
def test_pileup_equals_samtools_expected_output(reads_dir, name):
    expected = (reads_dir / "mpileup.out.3").read_text().splitlines()
    ours = pileup_lines(reads_dir / name, "17:1050-1060", reference_fasta=reads_dir / "mpileup.ref.fa")
    assert ours == expected


def test_default_pileup_filters_are_the_expected_outputs_options(reads_dir):
    # mpileup.out.3 is samtools' output for "-B --ff 0x14" (samtools test/test.pl)
    assert PileupFilters.from_samtools_options("-B --ff 0x14") == MPILEUP_NO_BAQ_FORWARD
    assert PileupFilters.from_samtools_options("--no-BAQ --excl-flags=UNMAP,REVERSE") == MPILEUP_NO_BAQ_FORWARD
    expected = (reads_dir / "mpileup.out.3").read_text().splitlines()
    explicit = pileup_lines(reads_dir / "mpileup.1.bam", "17:1050-1060", reference_fasta=reads_dir / "mpileup.ref.fa",
                            filters=PileupFilters.from_samtools_options("-B --ff 0x14"))
    assert explicit == expected
    unfiltered = pileup_lines(reads_dir / "mpileup.1.bam", "17:1050-1060", reference_fasta=reads_dir / "mpileup.ref.fa",
                              filters=PileupFilters.from_samtools_options("-B"))
    assert unfiltered != expected  # reverse-strand reads are back: the flags are really applied


@pytest.mark.parametrize("options", ["", "-B", "-B -Q 20 -q 10", "-B -x", "-A -B", "-B --ff UNMAP,DUP", "-B --ff 0x14 -Q 30"])
def test_pileup_options_match_the_samtools_cli(reads_dir, options):
    args = ["samtools", "mpileup", *options.split(), "-f", str(reads_dir / "mpileup.ref.fa"), "-r", "17:1000-1300",
            str(reads_dir / "mpileup.1.bam")]
    expected = subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()
    ours = pileup_lines(reads_dir / "mpileup.1.bam", "17:1000-1300", reference_fasta=reads_dir / "mpileup.ref.fa",
                        filters=PileupFilters.from_samtools_options(options))
    assert len(expected) > 200 and ours == expected


def test_unsupported_or_malformed_options_are_errors():
    with pytest.raises(ValueError, match="'--output'"):
        PileupFilters.from_samtools_options("-B --output x")
    with pytest.raises(ValueError, match="'NOTAFLAG'"):
        PileupFilters.from_samtools_options("--ff UNMAP,NOTAFLAG")
    with pytest.raises(ValueError, match="-q needs an integer"):
        PileupFilters.from_samtools_options("-q high")
    with pytest.raises(ValueError, match="-Q needs a value"):
        PileupFilters.from_samtools_options("-Q")
    assert PileupFilters.from_samtools_options("", tool="depth") == SAMTOOLS_DEPTH
    with pytest.raises(ValueError, match="depth option '-B'"):  # samtools depth has no BAQ
        PileupFilters.from_samtools_options("-B", tool="depth")


def _samtools_depth(bam: Path, region: str, *options: str) -> dict[int, int]:
    out = subprocess.run(["samtools", "depth", "-a", *options, "-r", region, str(bam)], check=True, capture_output=True, text=True).stdout
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


@pytest.mark.parametrize("options", ["-q 30", "-Q 30", "-G REVERSE", "-Q 30 -G 0x10"])
def test_coverage_qc_filters_from_configuration_match_samtools_depth(reads_dir, options):
    expected = _samtools_depth(reads_dir / "mpileup.1.bam", "17:1000-1999", *options.split())
    assert expected != _samtools_depth(reads_dir / "mpileup.1.bam", "17:1000-1999")  # the option matters here
    filters = PileupFilters.from_samtools_options(options, tool="depth")
    positions = [("17", p) for p in range(1000, 2000, 37)]
    qc = coverage_qc(reads_dir / "mpileup.1.bam", [("17", 1000, 1999)], positions, min_depth=10, filters=filters)
    values = list(expected.values())
    assert qc[qc["kind"] == "region"].iloc[0]["mean_depth"] == pytest.approx(sum(values) / len(values))
    at = qc[qc["kind"] == "pgx_position"]
    assert dict(zip(at["start"], at["depth"])) == {p: expected[p] for _, p in positions}


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
