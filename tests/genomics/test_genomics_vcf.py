"""VCF -> Parquet against the real sample VCFs, bcftools and vcf2maf's expected MAF."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radplan.errors import InvalidVcfError
from radplan.genomics.annotation import short_protein_change
from radplan.genomics.vcf import VARIANT_SCHEMA, detect_genome_build, iter_variant_batches, vcf_to_parquet

IMPACT_ORDER = ["HIGH", "MODERATE", "LOW", "MODIFIER"]


@pytest.fixture(scope="module")
def vcf_dir(shared_data) -> Path:
    return shared_data / "genomics" / "vcf"


def _bcftools_count(path: Path, split: bool, workdir: Path) -> int:
    # bgzip + index first: bcftools norm refuses records on contigs missing from the header otherwise
    indexed = workdir / "indexed.vcf.gz"
    subprocess.run(f"bgzip -c {path} > {indexed} && tabix -f -p vcf {indexed}", shell=True, check=True, capture_output=True)
    cmd = f"bcftools norm -m- {indexed} | bcftools view -H | wc -l" if split else f"bcftools view -H {indexed} | wc -l"
    return int(subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("name", ["vcf2maf_test.vcf", "vcf2maf_test_mutect.vcf", "cyvcf2_test.snpeff.vcf", "pysam_gnomad_chr22_vep.vcf"])
def test_record_and_row_counts_match_bcftools(vcf_dir, tmp_path, name):
    out = tmp_path / "v.parquet"
    summary = vcf_to_parquet(vcf_dir / name, out)
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == VARIANT_SCHEMA
    assert summary["records"] == _bcftools_count(vcf_dir / name, False, tmp_path)
    split_alleles = _bcftools_count(vcf_dir / name, True, tmp_path)
    assert summary["alleles"] == split_alleles
    assert summary["rows"] == table.num_rows == split_alleles * max(summary["samples"], 1)


def _maf_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def _as_maf_allele(pos: int, ref: str, alt: str) -> tuple[int, str, str]:
    """VCF allele in MAF convention: the shared anchor base of an indel is dropped, empty -> '-'."""
    if len(ref) != len(alt) and ref[0] == alt[0]:
        ref, alt = ref[1:] or "-", alt[1:] or "-"
        return (pos if ref == "-" else pos + 1), ref, alt
    return pos, ref, alt


def test_positions_alleles_and_types_match_vcf2maf(vcf_dir, tmp_path):
    out = tmp_path / "v.parquet"
    vcf_to_parquet(vcf_dir / "vcf2maf_test.vcf", out)
    df = pq.read_table(out).to_pandas()
    tumour = iter(df[df["sample"] == "TUMOR"].itertuples())
    maf = _maf_rows(vcf_dir / "vcf2maf_test_output.vep_isoforms.maf")
    records = _info_entries(vcf_dir / "vcf2maf_test.vcf", "CSQ")
    assert len(maf) == len(records)  # vcf2maf writes one row per VCF record
    maf_type = {"SNP": "SNV", "DNP": "MNV", "TNP": "MNV", "ONP": "MNV", "INS": "INS", "DEL": "DEL"}
    for row, (alts, _) in zip(maf, records):
        record_rows = [next(tumour) for _ in alts]
        by_allele = {(r.chrom, *_as_maf_allele(r.pos, r.ref, r.alt)): r for r in record_rows}
        key = (row["Chromosome"], int(row["Start_Position"]), row["Reference_Allele"], row["Tumor_Seq_Allele2"])
        assert key in by_allele, key
        ours = by_allele[key]
        assert ours.variant_type == maf_type[row["Variant_Type"]], key
        # t_depth / t_alt_count in the MAF come from the same AD/DP
        assert (ours.depth, ours.alt_depth) == (int(row["t_depth"]), int(row["t_alt_count"])), key


def test_multiallelic_split_picks_per_allele_depths(vcf_dir, tmp_path):
    out = tmp_path / "v.parquet"
    vcf_to_parquet(vcf_dir / "vcf2maf_test.vcf", out)
    df = pq.read_table(out).to_pandas()
    # record 2 at 5:112174757 is GAAGA -> G,GCA with TUMOR 1/2:0,12,8
    site = df[(df["pos"] == 112174757) & (df["sample"] == "TUMOR")]
    gca = site[(site["alt"] == "GCA")].iloc[0]
    assert (gca["gt"], gca.ref_depth, gca.alt_depth, gca.depth) == ("0/1", 0, 8, 20)
    assert gca.allele_fraction == pytest.approx(8 / 20)


def _info_entries(path: Path, tag: str) -> list[tuple[list[str], list[str]]]:
    """(ALTs, raw comma-separated entries of one INFO tag) per data line, read without cyvcf2."""
    result = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            value = next((kv.split("=", 1)[1] for kv in cols[7].split(";") if kv.startswith(tag + "=")), "")
            result.append((cols[4].split(","), value.split(",") if value else []))
    return result


def test_vep_csq_fields_come_verbatim_from_the_file(vcf_dir, tmp_path):
    path = vcf_dir / "pysam_gnomad_chr22_vep.vcf"
    out = tmp_path / "v.parquet"
    summary = vcf_to_parquet(path, out)
    assert summary["annotation"] == "CSQ"
    rows = iter(pq.read_table(out).to_pandas().itertuples())
    header = next(line for line in open(path) if line.startswith("##INFO=<ID=CSQ"))
    fields = header.split("Format: ")[1].split('"')[0].split("|")
    i_num, i_symbol, i_cons, i_impact = (fields.index(n) for n in ("ALLELE_NUM", "SYMBOL", "Consequence", "IMPACT"))
    for alts, entries in _info_entries(path, "CSQ"):
        parts = [e.split("|") for e in entries]
        for allele_num in range(1, len(alts) + 1):
            row = next(rows)
            mine = [p for p in parts if int(p[i_num]) == allele_num]
            if not mine:  # VEP wrote nothing for this ALT
                assert (row.gene, row.consequence, row.impact) == (None, None, None)
                continue
            assert (row.gene, row.consequence, row.impact) in {(p[i_symbol] or None, p[i_cons], p[i_impact]) for p in mine}
            assert IMPACT_ORDER.index(row.impact) == min(IMPACT_ORDER.index(p[i_impact]) for p in mine)
    assert next(rows, None) is None  # every row accounted for (all 9 sites are intergenic: no SYMBOL)


def test_snpeff_eff_parsing(vcf_dir, tmp_path):
    path = vcf_dir / "cyvcf2_test.snpeff.vcf"
    out = tmp_path / "v.parquet"
    assert vcf_to_parquet(path, out)["annotation"] == "EFF"
    sites = pq.read_table(out).to_pandas().drop_duplicates(["chrom", "pos", "alt"])
    for (_, entries), row in zip(_info_entries(path, "EFF"), sites.itertuples()):
        parsed = [(e.split("(")[0], e.split("(")[1].split("|")) for e in entries]
        options = {(eff, fields[0], fields[5] or None) for eff, fields in parsed}
        assert (row.consequence, row.impact, row.gene) in options
        assert IMPACT_ORDER.index(row.impact) == min(IMPACT_ORDER.index(f[0]) for _, f in parsed)
        assert row.annotation_source == "EFF"


def test_mutect_filters_fa_and_haploid_genotypes(vcf_dir, tmp_path):
    path = vcf_dir / "vcf2maf_test_mutect.vcf"
    out = tmp_path / "v.parquet"
    summary = vcf_to_parquet(path, out)
    df = pq.read_table(out).to_pandas()
    lines = [line.rstrip("\n").split("\t") for line in open(path) if not line.startswith("#")]
    n_pass = sum(cols[6] == "PASS" for cols in lines)
    assert summary["pass_fraction"] == pytest.approx(n_pass / len(lines))
    assert set(df["filter"]) == {"PASS", "REJECT"}
    tumour = df[df["sample"] == "TUMOR"].reset_index(drop=True)
    fmt = lines[0][8].split(":")
    expected_fa = [float(cols[10].split(":")[fmt.index("FA")]) for cols in lines]
    assert tumour["allele_fraction"].tolist() == pytest.approx(expected_fa, abs=1e-6)
    normal = df[df["sample"] == "NORMAL"]
    assert set(normal.loc[normal["gt"] == "0", "zygosity"]) == {"hom_ref"}


def test_titv_matches_independent_count(vcf_dir, tmp_path):
    path = vcf_dir / "vcf2maf_test_mutect.vcf"
    summary = vcf_to_parquet(path, tmp_path / "v.parquet")
    pairs = [(c[3], c[4]) for c in (line.split("\t") for line in open(path) if not line.startswith("#"))]
    ts = sum(p in {("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")} for p in pairs)
    assert summary["titv"] == pytest.approx(ts / (len(pairs) - ts))


def test_bgzipped_bcf_and_indexed_inputs_give_identical_rows(vcf_dir, tmp_path):
    src = vcf_dir / "vcf2maf_test_mutect.vcf"
    gz, bcf = tmp_path / "m.vcf.gz", tmp_path / "m.bcf"
    subprocess.run(["bcftools", "view", "-Oz", "-o", str(gz), str(src)], check=True, capture_output=True)
    subprocess.run(["bcftools", "index", str(gz)], check=True, capture_output=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(src)], check=True, capture_output=True)
    raw_bcf = tmp_path / "m.u.bcf"
    subprocess.run(["bcftools", "view", "-Ou", "-o", str(raw_bcf), str(src)], check=True, capture_output=True)
    tables = []
    for i, path in enumerate((src, gz, bcf, raw_bcf)):
        vcf_to_parquet(path, tmp_path / f"{i}.parquet")
        tables.append(pq.read_table(tmp_path / f"{i}.parquet").to_pandas())
    for other in tables[1:]:
        assert other.equals(tables[0])


def test_pseudonymized_output_has_no_raw_sample_names(vcf_dir, tmp_path, pseudonymizer):
    out = tmp_path / "v.parquet"
    vcf_to_parquet(vcf_dir / "cyvcf2_test.snpeff.vcf", out, sample_pseudonym=pseudonymizer.patient_key)
    raw = out.read_bytes()
    for name in ("1094PC0005", "1094PC0009", "1094PC0012", "1094PC0013"):
        assert name.encode() not in raw
    assert set(pq.read_table(out).column("sample").to_pylist()) == {pseudonymizer.patient_key(s) for s in ("1094PC0005", "1094PC0009", "1094PC0012", "1094PC0013")}


def test_build_in_rows_and_file_metadata(shared_data, tmp_path):
    out = tmp_path / "v.parquet"
    summary = vcf_to_parquet(shared_data / "genomics/pgx/pharmcat.example.vcf", out, batch_size=100)
    assert summary["build"] == "GRCh38"
    table = pq.read_table(out)
    assert table.schema.metadata[b"radplan.genome_build"] == b"GRCh38"
    assert set(table.column("genome_build").to_pylist()) == {"GRCh38"}


def test_detect_genome_build(vcf_dir, tmp_path):
    assert detect_genome_build(vcf_dir / "cyvcf2_test.snpeff.vcf") == "GRCh37"  # hg19 contig lengths
    assert detect_genome_build(vcf_dir / "vcf2maf_test.vcf") == "unknown"  # header names no build
    body = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    cases = {
        "##contig=<ID=chr1>\n": "unknown",  # a chr prefix alone proves nothing
        "##contig=<ID=chr1,length=248956422>\n": "GRCh38",
        "##contig=<ID=1,length=249250621>\n": "GRCh37",
        "##reference=file:///ref/hs37d5.fa\n##contig=<ID=1,length=248956422>\n": "unknown",  # contradiction
    }
    for lines, expected in cases.items():
        path = tmp_path / "h.vcf"
        path.write_text("##fileformat=VCFv4.2\n" + lines + body)
        assert detect_genome_build(path) == expected, lines


def test_short_protein_change():
    assert short_protein_change("ENSP00000275493.2:p.Leu858Arg") == "p.L858R"
    assert short_protein_change("p.Glu746_Ala750del") == "p.E746_A750del"
    assert short_protein_change("p.Arg273Ter") == "p.R273*"
    assert short_protein_change("ENSP1:p.Thr125%3D") == "p.T125="
    assert short_protein_change("c.1633G>A") is None


def test_batches_are_bounded(vcf_dir):
    sizes = [b.num_rows for b in iter_variant_batches(vcf_dir / "vcf2maf_test_mutect.vcf", batch_size=64)]
    assert max(sizes) <= 64 + 1 and sum(sizes) == 1000


def _assert_rejected(path: Path, tmp_path: Path, reason: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(InvalidVcfError, match=reason):
        vcf_to_parquet(path, out_dir / "v.parquet", batch_size=10)
    assert list(out_dir.iterdir()) == []  # neither output nor temp file left


def test_truncated_bgzip_is_rejected(vcf_dir, tmp_path):
    gz = tmp_path / "m.vcf.gz"
    subprocess.run(["bgzip", "-c", str(vcf_dir / "vcf2maf_test_mutect.vcf")], check=True, stdout=open(gz, "wb"))
    data = gz.read_bytes()
    mid = tmp_path / "mid.vcf.gz"
    mid.write_bytes(data[: len(data) // 2])
    _assert_rejected(mid, tmp_path, "truncated|cannot parse")
    no_eof = tmp_path / "noeof.vcf.gz"
    no_eof.write_bytes(data[:-28])  # cut exactly at a block boundary: htslib alone would read "fine"
    _assert_rejected(no_eof, tmp_path, "truncated")


def test_truncated_plain_vcf_is_rejected(vcf_dir, tmp_path):
    text = (vcf_dir / "vcf2maf_test_mutect.vcf").read_text()
    path = tmp_path / "cut.vcf"
    path.write_text(text[: len(text) - 20])
    _assert_rejected(path, tmp_path, "truncated")


def test_broken_header_is_rejected(vcf_dir, tmp_path):
    lines = (vcf_dir / "vcf2maf_test_mutect.vcf").read_text().splitlines(keepends=True)
    path = tmp_path / "hdr.vcf"
    path.write_text("".join(line for line in lines if not line.startswith("#CHROM")).replace("##fileformat", "#fileformat"))
    _assert_rejected(path, tmp_path, "header")


def test_bad_genotype_quarantines_that_record_and_keeps_the_rest(vcf_dir, tmp_path):
    lines = (vcf_dir / "vcf2maf_test_mutect.vcf").read_text().splitlines(keepends=True)
    first_data = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    bad = first_data + 300  # after several batches were already written
    assert "\t0/1:" in lines[bad]
    lines[bad] = lines[bad].replace("\t0/1:", "\t0/X:")
    path = tmp_path / "gt.vcf"
    path.write_text("".join(lines))
    quarantined = []
    summary = vcf_to_parquet(path, tmp_path / "v.parquet", batch_size=10, on_quarantine=quarantined.append)
    assert summary["quarantined_records"] == 1
    # the header names no caller; TUMOR is the second sample column (#CHROM ... FORMAT NORMAL TUMOR)
    assert summary["quarantine"] == [{"caller": "unknown", "line": bad + 1, "reason": "sample column 2: GT is not a genotype"}]
    assert [q.as_dict() for q in quarantined] == [{**summary["quarantine"][0], "file": "gt.vcf"}]
    assert summary["records"] == 500 and summary["rows"] == 499 * 2
    rows = pq.read_table(tmp_path / "v.parquet").to_pandas()
    bad_pos = int(lines[bad].split("\t")[1])
    assert bad_pos not in set(rows["pos"]) or lines.count(lines[bad]) > 1


def test_snpeff_ann_alleles_and_pick(tmp_path):
    ann_fields = "Allele | Annotation | Annotation_Impact | Gene_Name | Gene_ID | Feature_Type | Feature_ID | Transcript_BioType | Rank | HGVS.c | HGVS.p"
    ann = ",".join([
        "T|synonymous_variant|LOW|TP53|ENSG00000141510|transcript|ENST00000269305|protein_coding|4/11|c.375G>A|p.Thr125Thr",
        "A|stop_gained|HIGH|TP53|ENSG00000141510|transcript|ENST00000269305|protein_coding|4/11|c.375G>T|p.Thr125*",
        "A|missense_variant|MODERATE|TP53|ENSG00000141510|transcript|ENST00000445888|protein_coding|4/11|c.375G>T|p.Thr125Lys",
    ])
    path = tmp_path / "ann.vcf"
    path.write_text(
        "##fileformat=VCFv4.2\n"
        f'##INFO=<ID=ANN,Number=.,Type=String,Description="Functional annotations: \'{ann_fields}\'">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        f"17\t7579312\t.\tC\tT,A\t50\tPASS\tANN={ann}\n")
    out = tmp_path / "ann.parquet"
    assert vcf_to_parquet(path, out)["annotation"] == "ANN"
    rows = pq.read_table(out).to_pandas().set_index("alt")
    assert (rows.loc["T", "consequence"], rows.loc["T", "impact"]) == ("synonymous_variant", "LOW")
    # ALT A: the HIGH-impact stop_gained wins over the MODERATE missense on another transcript
    assert (rows.loc["A", "consequence"], rows.loc["A", "transcript"], rows.loc["A", "hgvsp_short"]) == ("stop_gained", "ENST00000269305", "p.T125*")
    assert set(rows["annotation_source"]) == {"ANN"} and set(rows["gene"]) == {"TP53"}


def test_blocks_parsed_in_parallel_give_the_rows_counts_and_line_numbers_of_one_block(vcf_dir, tmp_path):
    from radplan.genomics.vcf import VariantReader

    lines = (vcf_dir / "vcf2maf_test_mutect.vcf").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    for offset in (3, 250, 497):  # early, middle and late records: they land in different small blocks
        lines[first + offset] = lines[first + offset].replace("\t0/1:", "\t0/X:")
    lines.insert(first + 100, "\n")
    path = tmp_path / "m.vcf"
    path.write_text("".join(lines))
    results = []
    for block_bytes in (1 << 23, 2048):  # one block; ~60 blocks, parsed two at a time
        reader = VariantReader(path, block_bytes=block_bytes, batch_size=1000)
        table = pa.Table.from_batches(list(reader.batches()))
        results.append((table, reader.stats, reader.quarantine))
    (one, one_stats, one_q), (many, many_stats, many_q) = results
    assert many.equals(one) and many_stats == one_stats and many_q == one_q
    assert [q.line for q in one_q] == [first + 4, first + 252, first + 499]  # 1-based, after the inserted blank line
    assert (one_stats.records, one_stats.blank_lines, one_stats.quarantined_records) == (500, 1, 3)
