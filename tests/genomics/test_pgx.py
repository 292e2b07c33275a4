"""PGx calling from PharmCAT's definitions: PharmCAT's published example report, CPIC DPYD rules, and
what real VCFs do (missing positions, no-calls, several samples, no final newline, chr prefixes).

Expected values come from PharmCAT's report (../shared/data/genomics/pgx) and from the CPIC
tables as PharmCAT publishes them, never from this caller's own output.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from radplan.errors import InvalidVcfError
from radplan.genomics.pgx import (
    call_pgx, cpic_recommendations, gene_definition, knowledge_base_manifest, knowledge_base_version,
)

SHIPPED = Path(__file__).resolve().parents[2] / "radplan" / "genomics" / "data" / "pharmcat"
RULE_BASE_AND_ISSUE_GENES = {"CYP2C19", "CYP2C9", "VKORC1", "DPYD", "TPMT", "NUDT15", "SLCO1B1", "UGT1A1",
                             "CYP2B6", "CYP3A4", "CYP4F2", "IFNL3"}


@pytest.fixture(scope="module")
def pgx_dir(shared_data) -> Path:
    return shared_data / "genomics" / "pgx"


@pytest.fixture(scope="module")
def example_vcf(pgx_dir) -> Path:
    return pgx_dir / "pharmcat.example.vcf"


def _pharmcat_report(path: Path) -> dict[str, dict]:
    with open(path) as fh:
        next(fh)  # "PharmCAT v3.1.0..." banner
        return {row["Gene"]: row for row in csv.DictReader(fh, delimiter="\t")}


def _score(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _by_gene(frame: pd.DataFrame) -> dict:
    return {row.gene: row for row in frame.itertuples()}


def _edited_vcf(source: Path, tmp_path: Path, genotypes: dict[str, str], drop: set[str] = frozenset(),
                name: str = "edited.vcf") -> Path:
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
    path = tmp_path / name
    path.write_text("".join(out_lines))
    return path


# --------------------------------------------------------------------------- the shipped knowledge base

def test_shipped_definitions_are_pharmcats_files_unmodified(shared_data):
    manifest = knowledge_base_manifest()
    assert (SHIPPED / "LICENSE-MPL-2.0.txt").read_text().startswith("Mozilla Public License Version 2.0")
    source = shared_data / "genomics" / "pgx" / "pharmcat_definitions"
    for relative, digest in manifest["sha256"].items():
        shipped = (SHIPPED / relative).read_bytes()
        assert hashlib.sha256(shipped).hexdigest() == digest, relative
        assert shipped == (source / relative).read_bytes(), relative
        assert json.loads(shipped)["version"] == manifest["data_version"], relative
    assert RULE_BASE_AND_ISSUE_GENES <= set(manifest["genes"])
    assert manifest["data_version"] in knowledge_base_version()


def test_every_defined_allele_is_loaded(shared_data):
    source = shared_data / "genomics" / "pgx" / "pharmcat_definitions" / "alleles"
    for gene in knowledge_base_manifest()["genes"]:
        published = json.loads((source / f"{gene}_translation.json").read_text())
        assert [a.name for a in gene_definition(gene).alleles] == [a["name"] for a in published["namedAlleles"]], gene
    dpyd = {a.name for a in gene_definition("DPYD").alleles}
    assert {"c.1156G>T (*12)", "c.1129-5923C>G, c.1236G>A (HapB3)", "c.1905+1G>A (*2A)"} <= dpyd and len(dpyd) == 84


# --------------------------------------------------------------------------- PharmCAT's published example

def test_agrees_with_pharmcat_report_for_every_supported_gene(pgx_dir, example_vcf):
    ours = call_pgx(example_vcf, outside_calls=pgx_dir / "pharmcat.example.outsideCall.tsv")
    expected = _pharmcat_report(pgx_dir / "pharmcat.example.report.tsv")
    assert set(ours["gene"]) == RULE_BASE_AND_ISSUE_GENES | {"CYP3A5", "CYP2D6"}
    for row in ours.itertuples():
        truth = expected[row.gene]
        assert row.diplotype == truth["Source Diplotype"], row.gene
        assert row.call_status == "called" and row.missing_positions == [] and not row.ambiguous, row.gene
        if row.gene in ("VKORC1", "CYP4F2", "IFNL3"):  # genotype-only: PharmCAT's "phenotype" is an interpretation
            assert row.phenotype is None
            interpretation = truth["Phenotype"].strip()
            if row.gene == "IFNL3":  # no CPIC lookup term: the report's allele functions stand in
                interpretation = f"{truth['Haplotype 1 Function']} / {truth['Haplotype 2 Function']}"
            assert (row.interpretation or "") == interpretation, row.gene
        else:
            assert row.phenotype == truth["Phenotype"], row.gene
        truth_score = float(truth["Activity Score"]) if truth["Activity Score"] else None
        assert _score(row.activity_score) == truth_score, row.gene
        assert row.source == ("outside_call" if truth["Outside Call"] == "yes" else "vcf")
    assert _by_gene(ours)["VKORC1"].genotype == "rs9923231 C/C"
    assert set(ours["allele_definition_version"]) == {knowledge_base_version()}


def test_cpic_phenotypes_for_variant_genotypes(example_vcf, tmp_path):
    vcf = _edited_vcf(example_vcf, tmp_path, {
        # CYP2C19 *1/*2: the *1 tag rs3758581 is on both haplotypes, *2's core variants het
        "rs3758581": "1/1", "rs12769205": "0/1", "rs4244285": "0/1",
        "rs1057910": "0/1",                      # CYP2C9 *1/*3
        "rs9923231": "0/1",                      # VKORC1 -1639 G>A heterozygous
        "rs67376798": "0/1",                     # DPYD c.2846A>T heterozygous
        "rs1800460": "0/1", "rs1142345": "0/1",  # TPMT *1/*3A (the *3B/*3C alternative scores lower)
        "rs116855232": "1/1",                    # NUDT15 *3/*3
        "rs4149056": "0/1",                      # SLCO1B1 *1/*5
        "rs3064744": "0/2",                      # UGT1A1 (TA)7 = *28 heterozygous
        "rs3745274": "0/1", "rs2279343": "0/1",  # CYP2B6 *1/*6 (516G>T + 785A>G)
    })
    calls = _by_gene(call_pgx(vcf))
    expected = {
        "CYP2C19": ("*1/*2", "Intermediate Metabolizer", None),
        "CYP2C9": ("*1/*3", "Intermediate Metabolizer", 1.0),
        "DPYD": ("Reference/c.2846A>T", "Intermediate Metabolizer", 1.5),
        "TPMT": ("*1/*3A", "Intermediate Metabolizer", None),
        "NUDT15": ("*3/*3", "Poor Metabolizer", None),
        "SLCO1B1": ("*1/*5", "Decreased Function", None),
        "UGT1A1": ("*1/*28", "Intermediate Metabolizer", None),
        "CYP2B6": ("*1/*6", "Intermediate Metabolizer", None),
    }
    for gene, (diplotype, phenotype, score) in expected.items():
        row = calls[gene]
        assert (row.diplotype, row.phenotype, row.call_status) == (diplotype, phenotype, "called"), gene
        assert _score(row.activity_score) == score, gene
    vkorc1 = calls["VKORC1"]
    assert (vkorc1.phenotype, vkorc1.genotype, vkorc1.interpretation) == (None, "rs9923231 C/T", "-1639 AG")
    assert calls["CYP2D6"].no_call_reason == "requires an outside call"


# --------------------------------------------------------------------------- DPYD (CPIC activity score)

DPYD_12, HAPB3 = "c.1156G>T (*12)", "c.1129-5923C>G, c.1236G>A (HapB3)"


@pytest.mark.parametrize("genotypes, diplotype, score, phenotype", [
    ({"rs78060119": "0/1"}, f"Reference/{DPYD_12}", 1.0, "Intermediate Metabolizer"),
    ({"rs78060119": "1/1"}, f"{DPYD_12}/{DPYD_12}", 0.0, "Poor Metabolizer"),
    ({"rs75017182": "0/1", "rs56038477": "0/1"}, f"Reference/{HAPB3}", 1.5, "Intermediate Metabolizer"),
    ({"rs75017182": "1/1", "rs56038477": "1/1"}, f"{HAPB3}/{HAPB3}", 1.0, "Intermediate Metabolizer"),
    # HapB3's deep-intronic variant alone is its own decreased-function allele
    ({"rs75017182": "0/1"}, "Reference/c.1129-5923C>G", 1.5, "Intermediate Metabolizer"),
    ({"rs78060119": "0/1", "rs75017182": "0/1", "rs56038477": "0/1"}, f"{HAPB3}/{DPYD_12}", 0.5, "Poor Metabolizer"),
])
def test_dpyd_named_variants(example_vcf, tmp_path, genotypes, diplotype, score, phenotype):
    row = _by_gene(call_pgx(_edited_vcf(example_vcf, tmp_path, genotypes)))["DPYD"]
    assert (row.diplotype, _score(row.activity_score), row.phenotype, row.call_status) == (diplotype, score, phenotype, "called")
    assert not row.ambiguous


def test_dpyd_three_variant_copies_score_the_two_lowest(example_vcf, tmp_path):
    # c.2846A>T (0.5), *12 (0.0) and HapB3 (0.5) heterozygous, unphased: CPIC sums the two lowest
    vcf = _edited_vcf(example_vcf, tmp_path, {"rs67376798": "0/1", "rs78060119": "0/1", "rs75017182": "0/1", "rs56038477": "0/1"})
    row = _by_gene(call_pgx(vcf))["DPYD"]
    assert (_score(row.activity_score), row.phenotype) == (0.5, "Poor Metabolizer")
    assert row.ambiguous
    assert {frozenset(d.split("/")) for d in row.possible_diplotypes} == {
        frozenset({HAPB3, DPYD_12}), frozenset({"c.2846A>T", DPYD_12}), frozenset({"c.2846A>T", HAPB3})}
    assert DPYD_12 in row.diplotype


# --------------------------------------------------------------------------- missing data is never reference

def test_missing_and_no_call_positions_make_the_call_indeterminate(example_vcf, tmp_path):
    vcf = _edited_vcf(example_vcf, tmp_path, {"rs12248560": "./.", "rs78060119": "./."}, drop={"rs4244285"})
    calls = _by_gene(call_pgx(vcf))
    cyp2c19 = calls["CYP2C19"]
    assert cyp2c19.call_status == "indeterminate"
    assert (cyp2c19.diplotype, cyp2c19.phenotype) == (None, None)
    assert cyp2c19.missing_positions == ["chr10:94761900 (rs12248560): no-call genotype",
                                         "chr10:94781859 (rs4244285): not in the VCF"]
    dpyd = calls["DPYD"]  # *12's position is a no-call: DPYD must not read as Normal
    assert (dpyd.call_status, dpyd.phenotype, _score(dpyd.activity_score)) == ("indeterminate", None, None)
    assert dpyd.missing_positions == ["chr1:97573943 (rs78060119): no-call genotype"]
    assert calls["CYP2C9"].call_status == "called"  # the other genes go on


def test_low_depth_positions_are_indeterminate(example_vcf):
    depth = pd.DataFrame({"chrom": ["chr16"], "pos": [31096368], "depth": [5]})
    row = _by_gene(call_pgx(example_vcf, depth_by_position=depth, min_depth=20))["VKORC1"]
    assert (row.call_status, row.diplotype, row.genotype) == ("indeterminate", None, None)
    assert row.missing_positions == ["chr16:31096368 (rs9923231): depth 5 < 20"]


def test_depth_from_coverage_qc_output(example_vcf, shared_data):
    from radplan.genomics.reads import coverage_qc

    reads = shared_data / "genomics" / "reads"  # real reads on 17:1-4200 (GRCh37): only the table's shape matters here
    qc = coverage_qc(reads / "mpileup.1.bam", [], [("17", 1050)], min_depth=20)
    qc["chrom"], qc["start"], qc["end"] = "chr16", 31096368, 31096368  # as if that column sat at VKORC1 rs9923231
    depth = int(qc["depth"].iloc[0])
    row = _by_gene(call_pgx(example_vcf, depth_by_position=qc, min_depth=depth + 1))["VKORC1"]
    assert row.missing_positions == [f"chr16:31096368 (rs9923231): depth {depth} < {depth + 1}"]
    assert _by_gene(call_pgx(example_vcf, depth_by_position=qc, min_depth=depth))["VKORC1"].call_status == "called"


def test_unexplained_genotype_is_a_no_call(example_vcf, tmp_path):
    # rs4244285 alone (without the *2 companions) matches no defined CYP2C19 allele
    vcf = _edited_vcf(example_vcf, tmp_path, {"rs4244285": "0/1"})
    row = _by_gene(call_pgx(vcf))["CYP2C19"]
    assert (row.call_status, row.diplotype, row.phenotype) == ("no_call", None, None)
    assert "not explained" in row.no_call_reason


# --------------------------------------------------------------------------- phase

SLCO1B1_DOUBLE = {"rs11045819": "0/1", "rs2306283": "0/1", "rs4149056": "0/1"}


def test_unphased_heterozygotes_report_every_top_diplotype(example_vcf, tmp_path):
    # *4 (rs11045819) with *15 (rs2306283 + rs4149056), or *5 (rs4149056) with *14 (rs2306283 + rs11045819):
    # both pairs explain the unphased genotype equally well, as PharmCAT reports
    row = _by_gene(call_pgx(_edited_vcf(example_vcf, tmp_path, SLCO1B1_DOUBLE)))["SLCO1B1"]
    assert row.ambiguous and row.possible_diplotypes == ["*4/*15", "*5/*14"]
    assert row.diplotype == "*4/*15 or *5/*14"
    # CPIC: *4 (uncertain) + *15 (no function) is Possible Decreased, *5 (no) + *14 (increased) Decreased
    assert (row.call_status, row.phenotype) == ("indeterminate", None)
    assert "*4/*15 Possible Decreased Function" in row.no_call_reason and "*5/*14 Decreased Function" in row.no_call_reason


def test_phased_genotypes_resolve_the_ambiguity(example_vcf, tmp_path):
    phased = {"rs11045819": "1|0", "rs2306283": "0|1", "rs4149056": "0|1"}
    row = _by_gene(call_pgx(_edited_vcf(example_vcf, tmp_path, phased)))["SLCO1B1"]
    assert (row.diplotype, row.ambiguous, row.possible_diplotypes) == ("*4/*15", False, ["*4/*15"])
    assert (row.call_status, row.phenotype) == ("called", "Possible Decreased Function")  # CPIC table, *4/*15


def test_phase_across_two_phase_sets_is_not_used(example_vcf, tmp_path):
    # the same phased GTs, but rs11045819 in another phase set (FORMAT PS) than the other two: the
    # relative phase is unknown, so both diplotypes stay possible
    phase_sets = {"rs11045819": ("1|0", "100"), "rs2306283": ("0|1", "200"), "rs4149056": ("0|1", "200")}
    lines = []
    for line in example_vcf.read_text().splitlines(keepends=True):
        if line.startswith("##FORMAT=<ID=GT"):
            line += '##FORMAT=<ID=PS,Number=1,Type=Integer,Description="Phase set">\n'
        elif not line.startswith("#"):
            cols = line.rstrip("\n").split("\t")
            gt, ps = phase_sets.get(cols[2], (cols[9], "."))
            cols[8], cols[9] = "GT:PS", f"{gt}:{ps}"
            line = "\t".join(cols) + "\n"
        lines.append(line)
    path = tmp_path / "two_phase_sets.vcf"
    path.write_text("".join(lines))
    row = _by_gene(call_pgx(path))["SLCO1B1"]
    assert row.ambiguous and row.possible_diplotypes == ["*4/*15", "*5/*14"]
    same_set = path.read_text().replace("1|0:100", "1|0:200")
    path.write_text(same_set)
    assert _by_gene(call_pgx(path))["SLCO1B1"].possible_diplotypes == ["*4/*15"]


# --------------------------------------------------------------------------- file quirks

def _calls_without_lineage(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["allele_definition_version"])


def test_file_without_final_newline(example_vcf, tmp_path):
    path = tmp_path / "no_newline.vcf"
    path.write_text(example_vcf.read_text().rstrip("\n"))
    assert call_pgx(path).equals(call_pgx(example_vcf))
    cut = tmp_path / "cut.vcf"
    cut.write_text(example_vcf.read_text().rstrip("\n").rsplit("\t", 2)[0])  # last record cut mid-line
    with pytest.raises(InvalidVcfError, match="cut.vcf"):
        call_pgx(cut)


def test_unprefixed_contigs_give_the_same_calls(example_vcf, tmp_path):
    text = example_vcf.read_text().replace("##contig=<ID=chr", "##contig=<ID=")
    lines = [line[3:] if line.startswith("chr") else line for line in text.splitlines(keepends=True)]
    path = tmp_path / "nochr.vcf"
    path.write_text("".join(lines))
    assert not any(line.startswith("chr") for line in lines)
    variant = {"rs78060119": "0/1"}
    assert call_pgx(path).equals(call_pgx(example_vcf))
    ours = _by_gene(call_pgx(_edited_vcf(path, tmp_path, variant, name="nochr_dpyd.vcf")))["DPYD"]
    assert (ours.diplotype, _score(ours.activity_score)) == (f"Reference/{DPYD_12}", 1.0)


def test_multi_sample_vcf_calls_each_sample(example_vcf, tmp_path):
    lines = []
    for line in example_vcf.read_text().splitlines():
        if line.startswith("#CHROM"):
            line += "\tSample_2"
        elif not line.startswith("#"):
            second = "0/1" if "\trs78060119\t" in line else "./." if "\trs9923231\t" in line else "0/0"
            line += "\t" + second
        lines.append(line)
    path = tmp_path / "two.vcf"
    path.write_text("\n".join(lines) + "\n")
    calls = call_pgx(path)
    assert sorted(set(calls["sample_index"])) == [0, 1] and "Sample_2" not in calls.to_string()
    first = {r.gene: r for r in calls[calls["sample_index"] == 0].itertuples()}
    second = {r.gene: r for r in calls[calls["sample_index"] == 1].itertuples()}
    assert (first["DPYD"].phenotype, second["DPYD"].phenotype) == ("Normal Metabolizer", "Intermediate Metabolizer")
    assert (first["VKORC1"].call_status, second["VKORC1"].call_status) == ("called", "indeterminate")
    only_second = call_pgx(path, sample="Sample_2")
    assert set(only_second["sample_index"]) == {1} and len(only_second) == len(calls) // 2


def test_indexed_bgzipped_vcf_gives_the_same_calls(pgx_dir, example_vcf, tmp_path):
    gz = tmp_path / "example.vcf.gz"
    subprocess.run(["bcftools", "view", "-Oz", "-o", str(gz), str(example_vcf)], check=True, capture_output=True)
    subprocess.run(["bcftools", "index", "-t", str(gz)], check=True, capture_output=True)
    outside = pgx_dir / "pharmcat.example.outsideCall.tsv"
    assert call_pgx(gz, outside_calls=outside).equals(call_pgx(example_vcf, outside_calls=outside))


# --------------------------------------------------------------------------- outside calls and recommendations

def test_outside_call_replaces_vcf_call_for_a_defined_gene(example_vcf, tmp_path):
    outside = tmp_path / "outside.tsv"
    outside.write_text("CYP2C19\t*2/*17\nCYP2D6\t*4/*4\n")
    calls = _by_gene(call_pgx(example_vcf, outside_calls=outside))
    assert (calls["CYP2C19"].diplotype, calls["CYP2C19"].phenotype, calls["CYP2C19"].source) == ("*2/*17", "Intermediate Metabolizer", "outside_call")
    assert (calls["CYP2D6"].phenotype, calls["CYP2D6"].activity_score) == ("Poor Metabolizer", 0.0)


def test_cpic_recommendations(pgx_dir, example_vcf, tmp_path):
    calls = call_pgx(example_vcf, outside_calls=pgx_dir / "pharmcat.example.outsideCall.tsv")
    recs = cpic_recommendations(calls)
    assert list(recs.columns) == ["gene", "phenotype", "drug", "recommendation", "classification", "cpic_guideline"]
    tamoxifen = recs[(recs["gene"] == "CYP2D6") & (recs["drug"] == "tamoxifen")].iloc[0]
    assert tamoxifen["phenotype"] == "Intermediate Metabolizer" and "aromatase" in tamoxifen["recommendation"]
    warfarin = recs[recs["gene"] == "VKORC1"].iloc[0]  # read from the interpretation, VKORC1 has no phenotype
    assert warfarin["phenotype"] == "-1639 GG" and warfarin["classification"] == "Strong"
    heterozygous = call_pgx(_edited_vcf(example_vcf, tmp_path, {"rs9923231": "0/1"}))
    assert "moderately increased" in cpic_recommendations(heterozygous).query("gene == 'VKORC1'").iloc[0]["recommendation"]
    indeterminate = call_pgx(_edited_vcf(example_vcf, tmp_path, {"rs9923231": "./."}, name="nc.vcf"))
    assert "VKORC1" not in set(cpic_recommendations(indeterminate)["gene"])


# --------------------------------------------------------------------------- the calls as the cohort and rules read them

def _patient_row(pgx: pd.DataFrame) -> dict:
    from radplan import cohort

    frame = cohort.build_patient_features("p0000000000000001", clinical=pd.DataFrame([{"current_medications": ["warfarin", "capecitabine"]}]),
                                          radiomics=pd.DataFrame(), actionable=pd.DataFrame(), pgx=pgx,
                                          findings=pd.DataFrame(), has_genomics=True, source_versions={"variants": "run-1"})
    return frame.iloc[0].to_dict()


def test_calls_reach_the_cpic_rules_with_the_knowledge_base_version(example_vcf, tmp_path):
    from radplan.decision.rules import evaluate_rules, load_rule_base

    vcf = _edited_vcf(example_vcf, tmp_path, {"rs9923231": "1/1", "rs78060119": "0/1"})  # VKORC1 -1639 AA, DPYD *12
    row = _patient_row(call_pgx(vcf))
    assert row["pgx_VKORC1_phenotype"] == "rs9923231 T/T"  # the cohort contract's VKORC1 genotype spelling
    assert row["pgx_DPYD_activity_score"] == 1.0 and row["pgx_DPYD_phenotype"] == "Intermediate Metabolizer"
    assert json.loads(row["source_versions"]) == {"variants": "run-1", "pgx_knowledge_base": knowledge_base_version()}
    facts = {k: v for k, v in row.items() if k.startswith("pgx_") or k == "current_medications"}
    fired = {m.rule_id for m in evaluate_rules(facts, load_rule_base()) if m.matched}
    assert {"pgx_cyp2c9_vkorc1_warfarin", "pgx_dpyd_intermediate_fluoropyrimidine"} <= fired
    # an indeterminate DPYD (its *12 position a no-call) fires no DPYD rule and is not a Normal call
    nocall = _patient_row(call_pgx(_edited_vcf(example_vcf, tmp_path, {"rs78060119": "./."}, name="nc.vcf")))
    assert nocall["pgx_DPYD_phenotype"] is None and nocall["pgx_DPYD_activity_score"] is None


def test_demo_cohort_vcfs_get_their_planted_phenotypes(tmp_path):
    """The synthetic cohort's VCFs (what `make demo` runs on) are called as planted: no gene of the rule
    base is indeterminate there, so the demo's PGx recommendations keep firing."""
    from radplan.synth.cohort import draw_patient
    from radplan.synth.vcf import vcf_text

    path = tmp_path / "patient.vcf"
    for index in range(40):
        plan = draw_patient(7, index)
        path.write_text("".join(vcf_text(plan, 7)))
        calls = _by_gene(call_pgx(path))
        for gene, truth in plan.pgx.items():
            row = calls[gene]
            assert row.call_status == "called", (index, gene, row.no_call_reason)
            if gene == "VKORC1":
                assert row.genotype == f"rs9923231 {truth['rs9923231_genotype']}", index
            else:
                assert row.phenotype == truth["phenotype"], (index, gene)
            if "activity_score" in truth:
                assert _score(row.activity_score) == truth["activity_score"], (index, gene)


def test_report_shows_genotype_only_and_indeterminate_calls(example_vcf, tmp_path):
    """Through the pipeline's own path (calls -> patient feature row -> report): VKORC1 as its genotype with the
    CPIC interpretation, an indeterminate DPYD never shown as a phenotype, and the knowledge-base version."""
    from radplan import cohort
    from radplan.decision.export import render_report_html
    from radplan.decision.recommend import recommend_for_patient
    from radplan.decision.rules import load_rule_base

    calls = call_pgx(_edited_vcf(example_vcf, tmp_path, {"rs9923231": "0/1", "rs78060119": "./."}))
    assert calls.set_index("gene").loc["DPYD", "call_status"] == "indeterminate"
    key = "p0000000000000001"
    empty = pd.DataFrame()
    row = cohort.build_patient_features(key, clinical=empty, radiomics=empty, actionable=empty, pgx=calls, findings=empty,
                                        has_genomics=True, source_versions={})
    facts = row.iloc[0].to_dict()
    assert facts["pgx_DPYD_phenotype"] is None or pd.isna(facts["pgx_DPYD_phenotype"])  # never a default phenotype
    rows = recommend_for_patient(facts, load_rule_base(), model_predictions=None, trials=[], versions={})
    html = render_report_html(key, facts, rows, key_slice_png=None, attribution_png=None, variants=None, pgx=calls,
                              radiomics_highlights=None)
    assert "rs9923231 C/T" in html and "-1639 G/A" in html  # VKORC1: genotype and its CPIC interpretation
    start = html.index(">DPYD<")
    dpyd = html[start:html.index("</tr>", start)]
    assert "not determined" in dpyd and "missing, not normal" in dpyd
    assert "Normal Metabolizer" not in dpyd and "Intermediate Metabolizer" not in dpyd
    assert knowledge_base_version() in str(row.iloc[0]["source_versions"])