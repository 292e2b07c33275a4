"""VCFs as somatic and germline callers write them: Strelka2, Mutect2, VarScan2, VarDict, a GATK gVCF.

The files in ``data/callers/`` are small, hand-written in each caller's documented output format (header lines,
FORMAT fields and sample naming as the caller writes them; no shared-data file from these callers exists).
Expected values are not hard-coded: each test reads the file with ``bcftools query`` (htslib, independent of
radplan's parser) and derives the value as the caller's documentation defines it:

* Strelka2 (docs/userGuide/README.md, "Somatic variant allele frequencies"): SNV tier-1 counts
  ``{REF}U[0]`` and ``{ALT}U[0]``, VAF = alt / (ref + alt); indels ``TAR[0]`` and ``TIR[0]``, VAF = TIR / (TAR + TIR).
  Sample columns are always named NORMAL and TUMOR; there is no GT.
* Mutect2: FORMAT AD (Number=R) and AF (Number=A, Mutect2's own allele-fraction estimate); tumour and normal
  sample names in ``##tumor_sample`` / ``##normal_sample``.
* VarScan2 somatic: RD = REF depth, AD = ALT depth (Number=1), FREQ = VAF as a percentage; NORMAL/TUMOR columns.
* VarDict paired (var2vcf_paired.pl): AD Number=R, AF Number=1; INFO SAMPLE names the tumour sample.
* GATK HaplotypeCaller ``-ERC GVCF``: ``<NON_REF>`` alleles and reference blocks (``END=``), ``*`` alleles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from radplan.errors import InvalidVcfError
from radplan.genomics.vcf import vcf_to_parquet

CALLERS = Path(__file__).parent / "data" / "callers"


def _query(path: Path, fmt: str, *extra: str) -> list[list[str]]:
    out = subprocess.run(["bcftools", "query", *extra, "-f", fmt, str(path)], check=True, capture_output=True, text=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def _convert(path: Path, tmp_path: Path):
    out = tmp_path / f"{path.name}.parquet"
    summary = vcf_to_parquet(path, out)
    return summary, pq.read_table(out).to_pandas()


def _tier1(value: str) -> int:
    return int(value.split(",")[0])


def _records(path: Path) -> int:
    return len(_query(path, "%POS\n"))


@pytest.mark.parametrize("name", ["strelka2_somatic.snvs.vcf", "strelka2_somatic.indels.vcf"])
def test_strelka2_keeps_every_record_with_tier1_vaf(tmp_path, name):
    path = CALLERS / name
    summary, df = _convert(path, tmp_path)
    assert (summary["caller"], summary["quarantined_records"]) == ("Strelka2", 0)
    assert summary["records"] == _records(path) and len(df) == 2 * summary["records"]
    # Roles from the caller's fixed sample names, not column order (Strelka2 writes NORMAL first).
    assert summary["sample_roles"] == ["normal", "tumor"]
    snv = "snvs" in name
    fmt = "%CHROM\t%POS\t%REF\t%ALT\t%FILTER[\t%DP\t%AU\t%CU\t%GU\t%TU]\n" if snv else \
        "%CHROM\t%POS\t%REF\t%ALT\t%FILTER[\t%DP\t%TAR\t%TIR]\n"
    tumour = df[df["sample_role"] == "tumor"].reset_index(drop=True)
    expected = _query(path, fmt, "-s", "TUMOR")
    assert len(tumour) == len(expected)
    for row, (chrom, pos, ref, alt, filters, dp, *counts) in zip(tumour.itertuples(), expected):
        if snv:
            by_base = dict(zip("ACGT", (_tier1(c) for c in counts)))
            ref_count, alt_count = by_base[ref], by_base[alt]
        else:
            ref_count, alt_count = _tier1(counts[0]), _tier1(counts[1])
        assert (row.chrom, row.pos, row.ref, row.alt, row.filter) == (chrom, int(pos), ref, alt, filters)
        assert (row.ref_depth, row.alt_depth, row.depth) == (ref_count, alt_count, int(dp))
        if ref_count + alt_count:
            assert row.allele_fraction == pytest.approx(alt_count / (ref_count + alt_count), rel=1e-6)
        else:  # no tier-1 reads: the VAF is unknown, not 0
            assert row.allele_fraction != row.allele_fraction
        assert row.gt is None and row.zygosity is None  # Strelka2 writes no genotype


def test_strelka2_builds_and_contig_styles(tmp_path):
    snvs, _ = _convert(CALLERS / "strelka2_somatic.snvs.vcf", tmp_path)
    indels, df = _convert(CALLERS / "strelka2_somatic.indels.vcf", tmp_path)
    assert snvs["build"] == "GRCh38"  # ##reference=.../hg38.fa, chr-prefixed contigs
    assert indels["build"] == "GRCh37"  # no reference line: GRCh37 contig lengths, no chr prefix
    assert set(df["chrom"]) == {"7", "13", "17"}


def test_mutect2_tumour_normal_from_header_af_and_filters(tmp_path):
    path = CALLERS / "mutect2_somatic.filtered.vcf"
    summary, df = _convert(path, tmp_path)
    assert (summary["caller"], summary["quarantined_records"]) == ("Mutect2", 0)
    assert summary["records"] == _records(path)
    header = subprocess.run(["bcftools", "view", "-h", str(path)], check=True, capture_output=True, text=True).stdout
    names = dict(line[2:].split("=", 1) for line in header.splitlines() if line.startswith(("##tumor_sample", "##normal_sample")))
    assert summary["sample_roles"] == ["normal", "tumor"]
    roles = dict(zip(df["sample"], df["sample_role"]))
    assert roles == {names["tumor_sample"]: "tumor", names["normal_sample"]: "normal"}
    for role, sample in (("tumor", names["tumor_sample"]), ("normal", names["normal_sample"])):
        rows = df[df["sample_role"] == role].reset_index(drop=True)
        expected = []
        for chrom, pos, ref, alts, filters, gt, ad, af, dp in _query(
                path, "%CHROM\t%POS\t%REF\t%ALT\t%FILTER[\t%GT\t%AD\t%AF\t%DP]\n", "-s", sample):
            ads, afs = [int(x) for x in ad.split(",")], [float(x) for x in af.split(",")]
            for k, alt in enumerate(alts.split(",")):
                expected.append((chrom, int(pos), ref, alt, filters.replace(",", ";"), ads[0], ads[k + 1], afs[k], int(dp)))
        got = [(r.chrom, r.pos, r.ref, r.alt, r.filter, r.ref_depth, r.alt_depth, r.allele_fraction, r.depth)
               for r in rows.itertuples()]
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected):
            assert mine[:7] == theirs[:7] and mine[8] == theirs[8]
            assert mine[7] == pytest.approx(theirs[7], rel=1e-6)  # FORMAT AF as Mutect2 wrote it
    assert {"germline;weak_evidence", "clustered_events;strand_bias", "multiallelic"} <= set(df["filter"])


def test_varscan2_ref_alt_depth_and_freq(tmp_path):
    path = CALLERS / "varscan2_somatic.snp.vcf"
    summary, df = _convert(path, tmp_path)
    assert (summary["caller"], summary["sample_roles"], summary["quarantined_records"]) == ("VarScan2", ["normal", "tumor"], 0)
    for sample in ("NORMAL", "TUMOR"):
        rows = df[df["sample_role"] == sample.lower()].reset_index(drop=True)
        expected = _query(path, "%POS[\t%RD\t%AD\t%FREQ\t%DP]\n", "-s", sample)
        assert len(rows) == len(expected)
        for row, (pos, rd, ad, freq, dp) in zip(rows.itertuples(), expected):
            # VarScan2's AD is the ALT depth alone (Number=1), not REF,ALT
            assert (row.pos, row.ref_depth, row.alt_depth, row.depth) == (int(pos), int(rd), int(ad), int(dp))
            assert row.allele_fraction == pytest.approx(float(freq.rstrip("%")) / 100, rel=1e-6)


def test_vardict_tumour_named_by_info_sample(tmp_path):
    path = CALLERS / "vardict_paired.vcf"
    summary, df = _convert(path, tmp_path)
    tumour = _query(path, "%INFO/SAMPLE\n")[0][0]
    samples = subprocess.run(["bcftools", "query", "-l", str(path)], check=True, capture_output=True, text=True).stdout.split()
    assert summary["caller"] == "VarDict" and summary["quarantined_records"] == 0
    assert summary["sample_roles"] == ["tumor" if s == tumour else "normal" for s in samples]
    rows = df[df["sample"] == tumour].reset_index(drop=True)
    for row, (pos, ad, af) in zip(rows.itertuples(), _query(path, "%POS[\t%AD\t%AF]\n", "-s", tumour)):
        ref_depth, alt_depth = (int(x) for x in ad.split(","))
        assert (row.pos, row.ref_depth, row.alt_depth) == (int(pos), ref_depth, alt_depth)
        assert row.allele_fraction == pytest.approx(float(af), rel=1e-6)


def test_gvcf_reference_blocks_non_ref_and_star_alleles(tmp_path):
    path = CALLERS / "gatk_haplotypecaller.g.vcf"
    summary, df = _convert(path, tmp_path)
    alleles = [(int(pos), alt) for pos, alts in _query(path, "%POS\t%ALT\n") for alt in alts.split(",")]
    real = [(pos, alt) for pos, alt in alleles if alt not in ("<NON_REF>", "*")]
    assert list(zip(df["pos"], df["alt"])) == real  # only real ALT alleles become rows
    assert summary["non_ref_alleles"] == sum(alt == "<NON_REF>" for _, alt in alleles)
    assert summary["spanning_deletion_alleles"] == sum(alt == "*" for _, alt in alleles)
    blocks = [alts for _, alts in _query(path, "%POS\t%ALT\n") if alts == "<NON_REF>"]
    assert summary["reference_blocks"] == len(blocks)
    assert summary["caller"] == "GATK HaplotypeCaller" and summary["records"] == _records(path)
    # T -> *,A with GT 1/2: the A row is a het call (the deletion allele counts as "other")
    a_row = df[(df["pos"] == 10482) & (df["alt"] == "A")].iloc[0]
    ad = [int(x) for x in _query(path, "[%AD]\n", "-i", "POS=10482")[0][0].split(",")]
    assert (a_row["gt"], a_row["zygosity"], a_row["alt_depth"]) == ("0/1", "het", ad[2])
    assert a_row.allele_fraction == pytest.approx(ad[2] / sum(ad))


@pytest.mark.parametrize("name", ["mutect2_somatic.filtered.vcf", "strelka2_somatic.snvs.vcf", "gatk_haplotypecaller.g.vcf"])
def test_bgzip_tabix_csi_and_bcf_give_the_same_rows(tmp_path, name):
    source = CALLERS / name
    gz, csi_gz, bcf = tmp_path / "t.vcf.gz", tmp_path / "c.vcf.gz", tmp_path / "b.bcf"
    subprocess.run(f"bgzip -c {source} > {gz} && tabix -p vcf {gz}", shell=True, check=True, capture_output=True)
    shutil.copy(gz, csi_gz)
    subprocess.run(["tabix", "--csi", "-p", "vcf", str(csi_gz)], check=True, capture_output=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(source)], check=True, capture_output=True)
    subprocess.run(["bcftools", "index", str(bcf)], check=True, capture_output=True)
    assert (tmp_path / "t.vcf.gz.tbi").exists() and (tmp_path / "c.vcf.gz.csi").exists()
    _, plain = _convert(source, tmp_path)
    for path in (gz, csi_gz, bcf):
        summary, table = _convert(path, tmp_path)
        assert summary["quarantined_records"] == 0
        cols = [c for c in plain.columns if c != "qual"]  # BCF stores QUAL as float32 like radplan; text keeps digits
        assert table[cols].equals(plain[cols]), path.name


def test_unsupported_file_names_the_caller_and_what_is_missing(tmp_path):
    text = (CALLERS / "strelka2_somatic.snvs.vcf").read_text()
    stripped = "".join(line for line in text.splitlines(keepends=True)
                       if not line.startswith(("##FORMAT=<ID=AU", "##FORMAT=<ID=GU")))
    path = tmp_path / "strelka_no_counts.vcf"
    path.write_text(stripped)
    with pytest.raises(InvalidVcfError, match=r"looks like Strelka2 output \(##source=strelka\).*AU, GU"):
        vcf_to_parquet(path, tmp_path / "out.parquet")


def test_record_missing_its_chrom_column_is_quarantined_not_the_file(tmp_path):
    lines = (CALLERS / "mutect2_somatic.filtered.vcf").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines[first + 1] = lines[first + 1].split("\t", 1)[1]  # drop CHROM
    path = tmp_path / "no_chrom.vcf"
    path.write_text("".join(lines))
    quarantined = []
    summary = vcf_to_parquet(path, tmp_path / "out.parquet", on_quarantine=quarantined.append)
    df = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert [q.as_dict() for q in quarantined] == [{"caller": "Mutect2", "file": "no_chrom.vcf", "line": first + 2,
                                                   "reason": "10 tab-separated columns where the header declares 11"}]
    assert summary["quarantine"] == [{"caller": "Mutect2", "line": first + 2,
                                      "reason": "10 tab-separated columns where the header declares 11"}]
    assert summary["records"] == 5 and len(df) == 2 * (5 - 1 + 1)  # 4 records kept, one of them with 2 ALTs


def test_quarantined_records_are_written_beside_the_other_rejected_lines(tmp_path):
    lines = (CALLERS / "varscan2_somatic.snp.vcf").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines[first + 2] = lines[first + 2].replace("\t0/1:.:34:27:7:", "\t0/1:.:34:27:seven:")
    path = tmp_path / "varscan_bad_ad.vcf"
    path.write_text("".join(lines))
    quarantine = tmp_path / "quarantine" / "vcf"
    summary = vcf_to_parquet(path, tmp_path / "out.parquet", quarantine_dir=quarantine)
    written = [json.loads(line) for line in (quarantine / "varscan_bad_ad.vcf.rejected.jsonl").read_text().splitlines()]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert written == [{"file": path.name, "sha256": digest, "stage": "vcf", "error_class": "InvalidVcfError",
                        "line": first + 3, "message": "sample column 2: AD is not a list of whole numbers",
                        "caller": "VarScan2"}]
    assert summary["rows"] == 2 * (len(lines) - first - 1)
