"""Per-patient VCFs: valid BGZF VCF 4.2 on GRCh38, PGx genotypes at PharmCAT's positions, somatic truth."""

from __future__ import annotations

import subprocess

import pytest
from cyvcf2 import VCF

# PharmVar/CPIC core variants of the star alleles the cohort uses (independent of the generator's table).
CORE_VARIANTS = {
    ("CYP2C19", "*2"): {"rs4244285": "A"},
    ("CYP2C19", "*3"): {"rs4986893": "A"},
    ("CYP2C19", "*17"): {"rs12248560": "T"},
    ("CYP2C9", "*2"): {"rs1799853": "T"},
    ("CYP2C9", "*3"): {"rs1057910": "C"},
    ("TPMT", "*3A"): {"rs1800460": "T", "rs1142345": "C"},
    ("TPMT", "*3B"): {"rs1800460": "T"},
    ("TPMT", "*3C"): {"rs1142345": "C"},
    ("TPMT", "*2"): {"rs1800462": "G"},
    ("NUDT15", "*3"): {"rs116855232": "T"},
    ("SLCO1B1", "*5"): {"rs4149056": "C"},
    ("SLCO1B1", "*15"): {"rs4149056": "C"},
    ("UGT1A1", "*6"): {"rs4148323": "A"},
    ("UGT1A1", "*28"): {"rs3064744": "CATAT"},
    ("DPYD", "c.1905+1G>A (*2A)"): {"rs3918290": "T"},
    ("DPYD", "c.2846A>T"): {"rs67376798": "A"},
    ("DPYD", "c.1679T>G (*13)"): {"rs55886062": "C"},
    ("DPYD", "c.1129-5923C>G, c.1236G>A (HapB3)"): {"rs75017182": "C"},
}
GENES = ("CYP2C19", "CYP2C9", "DPYD", "TPMT", "NUDT15", "SLCO1B1", "UGT1A1", "VKORC1")


@pytest.fixture(scope="module")
def pharmcat_sites(shared_data):
    sites = {}
    for line in (shared_data / "genomics" / "pgx" / "pharmcat.example.vcf").read_text().splitlines():
        if line.startswith("#"):
            continue
        chrom, pos, rsid, ref, alt, _, _, info = line.split("\t")[:8]
        gene = info.replace("PX=", "")
        if gene in GENES:
            sites[(chrom, int(pos))] = (rsid, ref, alt.split(","), gene)
    return sites


def _records(path):
    vcf = VCF(str(path))
    try:
        return vcf.samples, list(vcf), vcf.raw_header
    finally:
        vcf.close()


def test_vcfs_open_and_bcftools_agrees_on_counts(cohort, truth, tmp_path):
    for mrn in truth["patients"]:
        path = cohort / "landing" / "genomics" / f"{mrn}.vcf.gz"
        samples, records, header = _records(path)
        assert samples == [mrn]
        assert "##reference=GRCh38" in header and "##fileformat=VCFv4.2" in header
        assert "##contig=<ID=chr7,length=159345973" in header
        listed = subprocess.run(["bcftools", "view", "-H", str(path)], capture_output=True, text=True, check=True).stdout
        assert len(listed.splitlines()) == len(records)
        subprocess.run(["bgzip", "-t", str(path)], check=True)
        # Records are sorted (bcftools index refuses otherwise) and the shipped tabix index answers region queries.
        subprocess.run(["bcftools", "index", "-t", "-o", str(tmp_path / f"{mrn}.tbi"), str(path)], check=True)
        region = subprocess.run(["tabix", str(path), "chr10:94700000-95000000"], capture_output=True, text=True, check=True).stdout
        assert {line.split("\t")[7] for line in region.splitlines()} >= {"PX=CYP2C19", "PX=CYP2C9"}


def test_pgx_records_sit_on_pharmcat_positions_with_pharmcat_alleles(cohort, truth, pharmcat_sites):
    for mrn in truth["patients"]:
        _, records, _ = _records(cohort / "landing" / "genomics" / f"{mrn}.vcf.gz")
        pgx = {(r.CHROM, r.POS): r for r in records if r.INFO.get("PX")}
        # Every PharmCAT position of the genotyped genes is written (reference ones as 0/0).
        assert pgx.keys() == pharmcat_sites.keys()
        for key, record in pgx.items():
            rsid, ref, alts, gene = pharmcat_sites[key]
            assert record.REF == ref and record.ALT == alts and record.INFO["PX"] == gene
            assert (record.ID or ".") == rsid


def test_pgx_genotypes_follow_the_truth_diplotypes(cohort, truth, pharmcat_sites):
    checked = 0
    for mrn, patient in truth["patients"].items():
        _, records, _ = _records(cohort / "landing" / "genomics" / f"{mrn}.vcf.gz")
        by_id = {r.ID: r for r in records if r.ID}
        for gene, call in patient["pgx"].items():
            if gene == "VKORC1":
                expected = call["diplotype"].count("variant (T)")
                assert sum(a == 1 for a in by_id["rs9923231"].genotypes[0][:2]) == expected
                continue
            alleles = call["diplotype"].split("/") if gene != "DPYD" else _split_dpyd(call["diplotype"])
            expected_copies = {}
            for allele in alleles:
                for rsid, alt in CORE_VARIANTS.get((gene, allele), {}).items():
                    expected_copies[(rsid, alt)] = expected_copies.get((rsid, alt), 0) + 1
            for (rsid, alt), copies in expected_copies.items():
                record = by_id[rsid]
                alt_index = record.ALT.index(alt) + 1
                assert sum(a == alt_index for a in record.genotypes[0][:2]) == copies, (gene, rsid)
                checked += 1
            if all(a in ("*1", "Reference") for a in alleles) and gene not in ("CYP2C19",):
                core = {rsid for (g, _), variants in CORE_VARIANTS.items() if g == gene for rsid in variants}
                for rsid in core:
                    assert by_id[rsid].genotypes[0][:2] == [0, 0]
    assert checked > 0


def _split_dpyd(diplotype: str) -> list[str]:
    names = ["Reference", "c.1129-5923C>G, c.1236G>A (HapB3)", "c.2846A>T", "c.1905+1G>A (*2A)", "c.1679T>G (*13)"]
    for first in names:
        if diplotype.startswith(first + "/") and diplotype[len(first) + 1 :] in names:
            return [first, diplotype[len(first) + 1 :]]
    raise AssertionError(f"unparseable DPYD diplotype {diplotype}")


def test_somatic_truth_is_in_the_vcf(cohort, truth):
    for mrn, patient in truth["patients"].items():
        _, records, header = _records(cohort / "landing" / "genomics" / f"{mrn}.vcf.gz")
        somatic = [r for r in records if r.INFO.get("SOMATIC")]
        for variant in patient["somatic_variants"]:
            matches = [r for r in somatic if r.CHROM == variant["chrom"] and r.POS == variant["pos"]]
            assert matches, variant["protein_change"]
            assert matches[0].REF == variant["ref"]
        has_csq = "##INFO=<ID=CSQ" in header
        assert has_csq == patient["vcf_has_csq"]
        if has_csq:
            for record in somatic:
                if record.INFO.get("SVTYPE"):
                    continue
                fields = record.INFO["CSQ"].split("|")
                assert fields[3] in {v["gene"] for v in patient["somatic_variants"]}
                assert fields[6].startswith("ENST") and ":c." in fields[10] and fields[11].startswith("p.")


def test_known_hotspot_positions(cohort):
    """Spot-check the planted hotspots against published GRCh38 coordinates (COSMIC/ClinVar)."""
    from radplan.synth.cohort import knowledge

    hotspots = knowledge()["somatic_hotspots"]
    assert (hotspots["EGFR_L858R"]["chrom"], hotspots["EGFR_L858R"]["pos"]) == ("chr7", 55191822)
    # c.2235_2249del15 deletes chr7:55174772-55174786; the VCF anchors on the base before.
    assert hotspots["EGFR_E746_A750del"]["pos"] == 55174771 and hotspots["EGFR_E746_A750del"]["ref"][1:] == "GGAATTAAGAGAAGC"
    assert (hotspots["BRAF_V600E"]["pos"], hotspots["BRAF_V600E"]["ref"], hotspots["BRAF_V600E"]["alt"]) == (140753336, "A", "T")
    assert (hotspots["KRAS_G12C"]["pos"], hotspots["KRAS_G12C"]["ref"]) == (25245351, "C")
