"""PGx calling against PharmCAT's expected report, and CPIC rules on edited genotypes."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from radplan.genomics.pgx import call_pgx, cpic_recommendations


@pytest.fixture(scope="module")
def pgx_dir(shared_data) -> Path:
    return shared_data / "genomics" / "pgx"


def _pharmcat_report(path: Path) -> dict[str, dict]:
    with open(path) as fh:
        next(fh)  # "PharmCAT v3.1.0..." banner
        return {row["Gene"]: row for row in csv.DictReader(fh, delimiter="\t")}


def test_agrees_with_pharmcat_report_for_every_supported_gene(pgx_dir):
    ours = call_pgx(pgx_dir / "pharmcat.example.vcf", outside_calls=pgx_dir / "pharmcat.example.outsideCall.tsv")
    expected = _pharmcat_report(pgx_dir / "pharmcat.example.report.tsv")
    assert len(ours) == 9
    for row in ours.itertuples():
        truth = expected[row.gene]
        assert row.diplotype == truth["Source Diplotype"], row.gene
        assert row.phenotype == truth["Phenotype"], row.gene
        truth_score = float(truth["Activity Score"]) if truth["Activity Score"] else None
        assert (None if pd.isna(row.activity_score) else row.activity_score) == truth_score, row.gene
        assert row.missing_positions == [] and row.no_call_reason is None
        assert row.source == ("outside_call" if truth["Outside Call"] == "yes" else "vcf")


def _edited_vcf(source: Path, tmp_path: Path, genotypes: dict[str, str], drop: set[str] = frozenset()) -> Path:
    """Copy of the example VCF with some rsIDs' genotypes replaced and some lines removed."""
    out_lines = []
    for line in source.read_text().splitlines(keepends=True):
        if not line.startswith("#"):
            cols = line.rstrip("\n").split("\t")
            if cols[2] in drop:
                continue
            if cols[2] in genotypes:
                cols[9] = genotypes[cols[2]]
                line = "\t".join(cols) + "\n"
        out_lines.append(line)
    path = tmp_path / "edited.vcf"
    path.write_text("".join(out_lines))
    return path


def _by_gene(frame: pd.DataFrame) -> dict:
    return {row.gene: row for row in frame.itertuples()}


def test_cpic_phenotypes_for_variant_genotypes(pgx_dir, tmp_path):
    vcf = _edited_vcf(pgx_dir / "pharmcat.example.vcf", tmp_path, {
        # CYP2C19 *1/*2: the *1 tag rs3758581 is on both haplotypes, *2's core variants het
        "rs3758581": "1/1", "rs12769205": "0/1", "rs4244285": "0/1",
        "rs1057910": "0/1",                      # CYP2C9 *1/*3
        "rs9923231": "0/1",                      # VKORC1 -1639 GA
        "rs67376798": "0/1",                     # DPYD c.2846A>T heterozygous
        "rs1800460": "0/1", "rs1142345": "0/1",  # TPMT *1/*3A (not the *3B/*3C alternative)
        "rs116855232": "1/1",                    # NUDT15 *3/*3
        "rs4149056": "0/1",                      # SLCO1B1 *1/*5
        "rs3064744": "0/2",                      # UGT1A1 (TA)7 = *28 heterozygous
    })
    calls = _by_gene(call_pgx(vcf))
    expected = {
        "CYP2C19": ("*1/*2", "Intermediate Metabolizer", None),
        "CYP2C9": ("*1/*3", "Intermediate Metabolizer", 1.0),
        "VKORC1": ("rs9923231 reference (C)/rs9923231 variant (T)", "-1639 GA", None),
        "DPYD": ("Reference/c.2846A>T", "Intermediate Metabolizer", 1.5),
        "TPMT": ("*1/*3A", "Intermediate Metabolizer", None),
        "NUDT15": ("*3/*3", "Poor Metabolizer", None),
        "SLCO1B1": ("*1/*5", "Decreased Function", None),
        "UGT1A1": ("*1/*28", "Intermediate Metabolizer", None),
    }
    for gene, (diplotype, phenotype, score) in expected.items():
        row = calls[gene]
        assert (row.diplotype, row.phenotype) == (diplotype, phenotype), gene
        assert (None if pd.isna(row.activity_score) else row.activity_score) == score, gene
    assert calls["CYP2D6"].no_call_reason == "requires an outside call"


def test_missing_positions_are_reported_not_assumed(pgx_dir, tmp_path):
    vcf = _edited_vcf(pgx_dir / "pharmcat.example.vcf", tmp_path, {"rs12248560": "./."}, drop={"rs4244285"})
    row = _by_gene(call_pgx(vcf))["CYP2C19"]
    assert row.missing_positions == ["chr10:94761900 (rs12248560)", "chr10:94781859 (rs4244285)"]
    # *2 and *17 need the missing positions, so they cannot be called; the call rests on the rest
    assert row.diplotype == "*38/*38"
    assumed = _by_gene(call_pgx(vcf, assume_reference_when_missing=True))["CYP2C19"]
    assert assumed.missing_positions == [] and assumed.diplotype == "*38/*38"


def test_low_depth_positions_are_no_calls(pgx_dir):
    depth = pd.DataFrame({"chrom": ["chr16"], "pos": [31096368], "depth": [5]})
    row = _by_gene(call_pgx(pgx_dir / "pharmcat.example.vcf", depth_by_position=depth, min_depth=20))["VKORC1"]
    assert row.diplotype is None and row.no_call_reason == "no defining position callable"
    assert row.missing_positions == ["chr16:31096368 (rs9923231)"]


def test_unexplained_genotype_is_a_no_call(pgx_dir, tmp_path):
    # rs4244285 alone (without the *2 companions) matches no defined CYP2C19 allele
    vcf = _edited_vcf(pgx_dir / "pharmcat.example.vcf", tmp_path, {"rs4244285": "0/1"})
    row = _by_gene(call_pgx(vcf))["CYP2C19"]
    assert row.diplotype is None and "not explained" in row.no_call_reason


def test_cpic_recommendations(pgx_dir):
    calls = call_pgx(pgx_dir / "pharmcat.example.vcf", outside_calls=pgx_dir / "pharmcat.example.outsideCall.tsv")
    recs = cpic_recommendations(calls)
    assert list(recs.columns) == ["gene", "phenotype", "drug", "recommendation", "classification", "cpic_guideline"]
    tamoxifen = recs[(recs["gene"] == "CYP2D6") & (recs["drug"] == "tamoxifen")].iloc[0]
    assert tamoxifen["phenotype"] == "Intermediate Metabolizer" and "aromatase" in tamoxifen["recommendation"]
    assert set(recs["gene"]) == set(calls["gene"])


def test_outside_call_replaces_vcf_call_for_a_defined_gene(pgx_dir, tmp_path):
    outside = tmp_path / "outside.tsv"
    outside.write_text("CYP2C19\t*2/*17\nCYP2D6\t*4/*4\n")
    calls = _by_gene(call_pgx(pgx_dir / "pharmcat.example.vcf", outside_calls=outside))
    assert (calls["CYP2C19"].diplotype, calls["CYP2C19"].phenotype, calls["CYP2C19"].source) == ("*2/*17", "Intermediate Metabolizer", "outside_call")
    assert (calls["CYP2D6"].phenotype, calls["CYP2D6"].activity_score) == ("Poor Metabolizer", 0.0)


def test_indexed_bgzipped_vcf_gives_the_same_calls(pgx_dir, tmp_path):
    gz = tmp_path / "example.vcf.gz"
    subprocess.run(["bcftools", "view", "-Oz", "-o", str(gz), str(pgx_dir / "pharmcat.example.vcf")], check=True, capture_output=True)
    subprocess.run(["bcftools", "index", "-t", str(gz)], check=True, capture_output=True)
    outside = pgx_dir / "pharmcat.example.outsideCall.tsv"
    assert call_pgx(gz, outside_calls=outside).equals(call_pgx(pgx_dir / "pharmcat.example.vcf", outside_calls=outside))
