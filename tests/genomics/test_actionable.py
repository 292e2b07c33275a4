"""Actionable-variant matching: knowledge-base validation and end-to-end VCF -> Parquet -> matches."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from radplan.genomics.actionable import KnowledgeBaseError, load_knowledge_base, match_actionable
from radplan.genomics.vcf import vcf_to_parquet

CSQ_FIELDS = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|EXON|INTRON|HGVSc|HGVSp|CANONICAL"
HEADER = f"""##fileformat=VCFv4.2
##reference=GRCh38
##contig=<ID=chr3,length=198295559>
##contig=<ID=chr7,length=159345973>
##contig=<ID=chr12,length=133275309>
##contig=<ID=chr13,length=114364328>
##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {CSQ_FIELDS}">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">
##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tTUMOUR
"""


def _csq(*entries: str) -> str:
    return "CSQ=" + ",".join(entries)


# GRCh38 records; annotations written the way VEP writes them
RECORDS = [
    ("chr7", 55191822, "T", "G", _csq(  # EGFR L858R; a non-canonical transcript listed first
        "G|missense_variant|MODERATE|EGFR|ENSG00000146648|Transcript|ENST00000454757|protein_coding|20/28||ENST00000454757.7:c.2420T>G|ENSP00000395243.3:p.Leu807Arg|",
        "G|missense_variant|MODERATE|EGFR|ENSG00000146648|Transcript|ENST00000275493|protein_coding|21/28||ENST00000275493.7:c.2573T>G|ENSP00000275493.2:p.Leu858Arg|YES")),
    ("chr7", 55174771, "AGGAATTAAGAGAAGC", "A", _csq(  # EGFR exon 19 deletion E746_A750del
        "-|inframe_deletion|MODERATE|EGFR|ENSG00000146648|Transcript|ENST00000275493|protein_coding|19/28||ENST00000275493.7:c.2236_2250del|ENSP00000275493.2:p.Glu746_Ala750del|YES")),
    ("chr12", 25245351, "C", "A", "."),  # KRAS G12C without annotation: matched by position
    ("chr13", 32340300, "GT", "G", _csq(  # BRCA2 frameshift
        "-|frameshift_variant|HIGH|BRCA2|ENSG00000139618|Transcript|ENST00000380152|protein_coding|11/27||ENST00000380152.8:c.5946del|ENSP00000369497.3:p.Ser1982ArgfsTer22|YES")),
    ("chr3", 179218303, "G", "A", "."),  # PIK3CA E545K, but the sample is hom-ref
]


@pytest.fixture()
def annotated_variants(tmp_path):
    genotypes = ["0/1:30,12:42", "0/1:40,20:60", "0/1:50,10:60", "1/1:0,30:30", "0/0:40,0:40"]
    lines = [f"{c}\t{p}\t.\t{r}\t{a}\t.\tPASS\t{info}\tGT:AD:DP\t{gt}" for (c, p, r, a, info), gt in zip(RECORDS, genotypes)]
    vcf = tmp_path / "somatic.vcf"
    vcf.write_text(HEADER + "\n".join(lines) + "\n")
    out = tmp_path / "somatic.parquet"
    summary = vcf_to_parquet(vcf, out)
    assert summary["build"] == "GRCh38" and summary["annotation"] == "CSQ"
    return pq.read_table(out).to_pandas()


def test_canonical_transcript_is_picked(annotated_variants):
    egfr = annotated_variants[annotated_variants["pos"] == 55191822].iloc[0]
    assert (egfr["transcript"], egfr["hgvsp_short"]) == ("ENST00000275493", "p.L858R")


def test_end_to_end_matches(annotated_variants):
    kb = load_knowledge_base()
    matches = match_actionable(annotated_variants, tumour_type="nsclc", kb=kb)
    found = {(m.kb_entry_id, m.match_basis) for m in matches.itertuples()}
    assert ("EGFR_L858R", "protein_change") in found
    assert ("EGFR_EXON19_DEL", "exon_rule") in found
    assert ("KRAS_G12C_NSCLC", "genomic_position") in found and ("KRAS_G12C_CRC", "genomic_position") in found
    assert ("BRCA2_LOF", "exon_rule") in found
    assert not any(entry.startswith("PIK3CA") for entry, _ in found)  # hom-ref sample does not carry it
    assert not any(entry == "EGFR_T790M" for entry, _ in found)
    by_id = matches.set_index("kb_entry_id")
    assert by_id.loc["KRAS_G12C_NSCLC", "tumour_type_match"] and by_id.loc["KRAS_G12C_NSCLC", "effective_tier"] == "Tier I-A"
    assert not by_id.loc["KRAS_G12C_CRC", "tumour_type_match"] and by_id.loc["KRAS_G12C_CRC", "effective_tier"] == "Tier II-C"
    assert set(matches["kb_version"]) == {kb.kb_version}


def test_grch37_position_match_on_vcf2maf_sample(shared_data, tmp_path):
    out = tmp_path / "v.parquet"
    vcf_to_parquet(shared_data / "genomics/vcf/vcf2maf_test.vcf", out, genome_build="GRCh37")
    variants = pq.read_table(out).to_pandas()
    matches = match_actionable(variants, tumour_type="breast", kb=load_knowledge_base())
    # vcf2maf's expected MAF annotates 3:178936091 G>A as PIK3CA p.E545K; the VCF itself carries no annotation
    assert list(zip(matches["sample"], matches["kb_entry_id"], matches["match_basis"])) == [("TUMOR", "PIK3CA_E545K", "genomic_position")]
    unknown_build = variants.assign(genome_build="unknown")
    assert match_actionable(unknown_build, tumour_type="breast", kb=load_knowledge_base()).empty


def test_tmb_high_biomarker(annotated_variants):
    kb = load_knowledge_base()
    # 3 carried non-synonymous coding mutations (missense, inframe deletion, frameshift) over 0.2 Mb = 15/Mb
    matches = match_actionable(annotated_variants, tumour_type="melanoma", kb=kb, callable_megabases=0.2)
    assert "TMB_HIGH" in set(matches["kb_entry_id"])
    matches = match_actionable(annotated_variants, tumour_type="melanoma", kb=kb, callable_megabases=1.0)
    assert "TMB_HIGH" not in set(matches["kb_entry_id"])


def test_kb_covers_required_alterations():
    kb = load_knowledge_base()
    have = {(e.gene, e.alteration) for e in kb.entries}
    for required in [("EGFR", "L858R"), ("EGFR", "exon 19 deletion"), ("EGFR", "T790M"), ("EGFR", "exon 20 insertion"),
                     ("ALK", "fusion"), ("ROS1", "fusion"), ("BRAF", "V600E"), ("KRAS", "G12C"), ("ERBB2", "amplification"),
                     ("PIK3CA", "H1047R"), ("PIK3CA", "E545K"), ("PIK3CA", "E542K"), ("MET", "exon 14 skipping"),
                     ("MET", "amplification"), ("RET", "fusion"), ("NTRK1", "fusion")]:
        assert required in have, required
    assert {"BRCA1", "BRCA2"} <= {e.gene for e in kb.entries if e.kind == "loss_of_function"}


def test_invalid_kb_names_the_bad_entry(tmp_path):
    data = yaml.safe_load(Path(load_knowledge_base.__code__.co_filename).with_name("data").joinpath("actionable_kb.yaml").read_text())
    data["entries"][1]["tier"] = "Level 1"
    bad = tmp_path / "kb.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(KnowledgeBaseError, match="EGFR_T790M.*tier"):
        load_knowledge_base(bad)
    del data["entries"][1]["tier"]
    data["entries"][1]["tier"] = "Tier I-A"
    del data["entries"][1]["coordinates"]["GRCh37"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(KnowledgeBaseError, match="EGFR_T790M.*GRCh37"):
        load_knowledge_base(bad)


def test_unannotated_records_match_by_genomic_region():
    import pandas as pd

    from radplan.genomics.actionable import load_knowledge_base, match_actionable
    from radplan.genomics.vcf import VARIANT_SCHEMA

    def row(**values):
        base = {name: None for name in VARIANT_SCHEMA.names} | {"sample": "p0000000000000001", "chrom": "chr7", "pos": 1, "ref": "N", "alt": "N", "variant_type": "SNV",
                "gene": None, "consequence": None, "hgvsp_short": None, "hgvsc": None, "genome_build": "GRCh38",
                "filter": "PASS", "allele_fraction": 0.3, "depth": 100}
        return {**base, **values}

    variants = pd.DataFrame([
        row(pos=55174771, ref="AGGAATTAAGAGAAGC", alt="A", variant_type="DEL"),        # EGFR E746_A750del, no CSQ
        row(chrom="chr2", pos=42299231, alt="N]chr2:29223612]", variant_type="BND"),  # EML4 breakend, mate in ALK
        row(chrom="chr17", pos=39688094, alt="<DUP>", variant_type="SV"),             # ERBB2 duplication
        row(pos=55100000, ref="AG", alt="A", variant_type="DEL"),                     # EGFR intron: no match
    ])
    kb = load_knowledge_base()
    found = {(m["gene"], m["alteration"], m["match_basis"]) for m in match_actionable(variants, tumour_type=None, kb=kb).to_dict("records")}
    assert ("EGFR", "exon 19 deletion", "genomic_region") in found
    assert ("ALK", "fusion", "genomic_region") in found
    assert ("ERBB2", "amplification", "genomic_region") in found
    assert not any(g == "EGFR" and a != "exon 19 deletion" for g, a, _ in found)


def test_somatic_calls_without_genotype_match_in_the_tumour_only(tmp_path):
    """Strelka2 writes no GT: the tumour's rows with ALT reads are carried, the NORMAL sample's never are."""
    from radplan.genomics.actionable import tumour_mutational_burden

    strelka = Path(__file__).parent / "data" / "callers" / "strelka2_somatic.snvs.vcf"
    vcf_to_parquet(strelka, tmp_path / "v.parquet")
    variants = pq.read_table(tmp_path / "v.parquet").to_pandas()
    matches = match_actionable(variants, tumour_type="melanoma", kb=load_knowledge_base())
    # BRAF V600E (chr7:140753336 A>T) and PIK3CA E545K (chr3:179218303 G>A) are KB hotspots (GRCh38 positions)
    assert {(m.sample, m.gene) for m in matches.itertuples()} >= {("TUMOR", "BRAF"), ("TUMOR", "PIK3CA")}
    assert set(matches["sample"]) == {"TUMOR"}
    tmb = tumour_mutational_burden(variants.assign(consequence="missense_variant"), callable_megabases=1.0)
    # every tumour row with tier-1 ALT reads counts (the last call has no tumour reads, FILTER LowEVS anyway)
    tumour = variants[(variants["sample"] == "TUMOR") & (variants["alt_depth"] > 0) & (variants["filter"] == "PASS")]
    assert tmb.to_dict() == {"TUMOR": len(tumour)}
