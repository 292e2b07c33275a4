"""Per-patient GRCh38 VCF (BGZF + tabix index): PharmCAT PGx positions (every position of the genotyped genes, 0/0
where reference so "missing" differs from "reference") plus the planted somatic variants, single
sample named by MRN, FORMAT GT:AD:DP:AF, optionally VEP-style CSQ on the somatic records.

No reference FASTA ships with radplan, so the ERBB2 <DUP> and the EML4-ALK breakend records carry
REF "N" (allowed by VCF 4.2); every SNV/indel REF is the true GRCh38 base(s).
"""

from __future__ import annotations

import csv
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pysam

from radplan.lake import atomic_path
from radplan.synth.cohort import PatientPlan, knowledge, patient_rng

PGX_POSITIONS_PATH = Path(__file__).with_name("data") / "pgx_positions.tsv"
CSQ_FIELDS = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|EXON|INTRON|HGVSc|HGVSp|CANONICAL"


@lru_cache(maxsize=1)
def pgx_positions() -> list[dict]:
    with PGX_POSITIONS_PATH.open(encoding="utf-8") as handle:
        rows = [line for line in handle if not line.startswith("#")]
    return [dict(row, pos=int(row["pos"])) for row in csv.DictReader(rows, delimiter="\t")]


def _header(plan: PatientPlan, with_csq: bool) -> list[str]:
    sequenced = plan.diagnosis_date.strftime("%Y%m%d")
    lines = [
        "##fileformat=VCFv4.2",
        f"##fileDate={sequenced}",
        "##source=radplan-synth tumour-only panel (germline PGx + somatic hotspots)",
        "##reference=GRCh38",
    ]
    lines += [f"##contig=<ID={name},length={length},assembly=GRCh38>" for name, length in knowledge()["contigs_grch38"]]
    lines += [
        '##ALT=<ID=DUP,Description="Duplication / copy-number gain">',
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##INFO=<ID=PX,Number=.,Type=String,Description="PGx gene (PharmCAT position)">',
        '##INFO=<ID=SOMATIC,Number=0,Type=Flag,Description="Somatic variant">',
        '##INFO=<ID=SVTYPE,Number=1,Type=String,Description="Type of structural variant">',
        '##INFO=<ID=END,Number=1,Type=Integer,Description="End position of the variant">',
        '##INFO=<ID=SVLEN,Number=1,Type=Integer,Description="Length of the structural variant">',
        '##INFO=<ID=CN,Number=1,Type=Integer,Description="Estimated copy number">',
        '##INFO=<ID=MATEID,Number=.,Type=String,Description="ID of the mate breakend">',
    ]
    if with_csq:
        lines.append(f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {CSQ_FIELDS}">')
    lines += [
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths for the ref and alt alleles">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
        '##FORMAT=<ID=AF,Number=A,Type=Float,Description="Allele fraction of each alt allele">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", plan.mrn]),
    ]
    return lines


def _format(rng: np.random.Generator, n_alts: int, alt_indices: list[int], depth: int, vaf: float | None = None) -> str:
    """GT:AD:DP:AF for a diploid call carrying ``alt_indices`` (1-based, length 2 minus ref copies)."""
    counts = [0] * (n_alts + 1)
    if vaf is not None:  # somatic heterozygote at a tumour allele fraction
        alt_reads = int(rng.binomial(depth, vaf))
        counts[alt_indices[0]] = alt_reads
        counts[0] = depth - alt_reads
    else:
        alleles = [0] * (2 - len(alt_indices)) + alt_indices
        for read_allele in rng.choice(alleles, size=depth):
            counts[int(read_allele)] += 1
        if len(set(alleles)) == 1:  # a little sequencing error on homozygous sites
            counts[alleles[0]] -= min(int(rng.integers(0, 2)), counts[alleles[0]])
    dp = sum(counts)
    gt = "/".join(str(a) for a in sorted([0] * (2 - len(alt_indices)) + alt_indices))
    af = ",".join(f"{counts[i] / dp:.3f}" if dp else "0" for i in range(1, n_alts + 1))
    return f"GT:AD:DP:AF\t{gt}:{','.join(map(str, counts))}:{dp}:{af}"


def _csq(variant: dict) -> str:
    allele = "-" if len(variant["alt"]) < len(variant["ref"]) else variant["alt"]
    fields = [
        allele, variant["consequence"], variant["impact"], variant["gene"], variant["ensembl_gene"], "Transcript",
        variant["transcript"], "protein_coding", variant["exon"], "", f"{variant['transcript']}:{variant['hgvsc']}",
        variant["hgvsp"], "YES",
    ]
    return "|".join(fields)


def vcf_records(plan: PatientPlan, seed: int) -> list[tuple[int, int, str]]:
    """(contig rank, pos, line) for every record of the patient's VCF, unsorted."""
    rng = patient_rng(seed, plan.index, "vcf")
    rank = {name: i for i, (name, _) in enumerate(knowledge()["contigs_grch38"])}
    records = []
    for site in pgx_positions():
        alts = site["alt"].split(",")
        carried = plan.pgx_alt_alleles.get(site["id"], [])
        alt_indices = sorted(alts.index(a) + 1 for a in carried)
        sample = _format(rng, len(alts), alt_indices, int(rng.integers(25, 75)))
        line = "\t".join([site["chrom"], str(site["pos"]), site["id"], site["ref"], site["alt"], ".", "PASS", f"PX={site['gene']}", sample])
        records.append((rank[site["chrom"]], site["pos"], line))
    for variant in plan.somatic:
        depth, vaf = variant["depth"], variant["vaf"]
        if variant.get("alt") == "<DUP>":
            info = f"SOMATIC;SVTYPE=DUP;END={variant['end']};SVLEN={variant['end'] - variant['pos']};CN={variant['copy_number']}"
            line = "\t".join([variant["chrom"], str(variant["pos"]), "ERBB2_amp", "N", "<DUP>", ".", "PASS", info, "GT:AD:DP:AF\t0/1:.:.:."])
            records.append((rank[variant["chrom"]], variant["pos"], line))
        elif "mate_pos" in variant:
            ends = [(variant["chrom"], variant["pos"], variant["mate_chrom"], variant["mate_pos"]), (variant["mate_chrom"], variant["mate_pos"], variant["chrom"], variant["pos"])]
            for number, (chrom, pos, mate_chrom, mate_pos) in enumerate(ends, start=1):
                # EML4-ALK is an inversion on 2p: the left side of each breakpoint joins the reverse complement of the left side of its mate.
                alt = f"N]{mate_chrom}:{mate_pos}]"
                info = f"SOMATIC;SVTYPE=BND;MATEID=EML4_ALK_{3 - number}"
                sample = _format(rng, 1, [1], depth, vaf)
                records.append((rank[chrom], pos, "\t".join([chrom, str(pos), f"EML4_ALK_{number}", "N", alt, ".", "PASS", info, sample])))
        else:
            info = "SOMATIC" + (f";CSQ={_csq(variant)}" if plan.csq_annotated else "")
            sample = _format(rng, 1, [1], depth, vaf)
            line = "\t".join([variant["chrom"], str(variant["pos"]), ".", variant["ref"], variant["alt"], ".", "PASS", info, sample])
            records.append((rank[variant["chrom"]], variant["pos"], line))
    return records


def vcf_text(plan: PatientPlan, seed: int) -> tuple[str, str]:
    """(header, body) of the patient's VCF."""
    records = sorted(vcf_records(plan, seed), key=lambda r: (r[0], r[1], r[2]))
    return "\n".join(_header(plan, plan.csq_annotated)) + "\n", "".join(line + "\n" for _, _, line in records)


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
BGZF_MAX_INPUT = 65280  # as htslib: keeps every compressed block under 64 KiB


def bgzf_blocks(data: bytes) -> bytes:
    """BGZF blocks (gzip members with the BC extra field and MTIME 0) for ``data``, without the EOF block."""
    out = bytearray()
    for start in range(0, len(data), BGZF_MAX_INPUT):
        chunk = data[start : start + BGZF_MAX_INPUT]
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        deflated = compressor.compress(chunk) + compressor.flush()
        block_size = 18 + len(deflated) + 8
        out += b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00" + struct.pack("<H", block_size - 1)
        out += deflated + struct.pack("<II", zlib.crc32(chunk) & 0xFFFFFFFF, len(chunk))
    return bytes(out)


def vcf_bgzf(plan: PatientPlan, seed: int) -> tuple[bytes, bytes]:
    """(header blocks, record blocks) of the BGZF VCF; the header sits in its own block, as htslib writes it."""
    header, body = vcf_text(plan, seed)
    return bgzf_blocks(header.encode("utf-8")), bgzf_blocks(body.encode("utf-8"))


def write_vcf(plan: PatientPlan, seed: int, path: Path) -> None:
    """Write ``<MRN>.vcf.gz`` and its tabix index ``<MRN>.vcf.gz.tbi`` (htslib's index is deterministic)."""
    header, body = vcf_bgzf(plan, seed)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + body + BGZF_EOF)
    with atomic_path(path.with_name(path.name + ".tbi")) as tmp_index:
        pysam.tabix_index(str(path), preset="vcf", force=True, index=str(tmp_index))
