"""Benchmark: radplan vcf_to_parquet vs bcftools query / view on a generated 1M-record VCF.

Generates (deterministically, seed 42) a realistic single-sample GRCh38 VCF: SNVs with
a real Ti/Tv mix, indels, ~2% multi-allelic sites, INFO with DP/AF and a VEP-like CSQ on
~10% of records, FORMAT GT:AD:DP:GQ. Measures variants (records) per second, median of
3 runs each, the bare cyvcf2 iteration rate (the ceiling for any cyvcf2-based converter),
and radplan's peak RSS (separate child processes) on 250k vs 1M records.
Writes benchmarks/results/vcf.json.

Run: .venv/bin/python benchmarks/bench_vcf.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, result_row, write_results
QUERY_FORMAT = r"%CHROM\t%POS\t%REF\t%ALT\t%FILTER[\t%GT\t%AD\t%DP]\n"
CSQ_FORMAT = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|HGVSc|HGVSp|CANONICAL"
GENES = ["EGFR", "KRAS", "TP53", "PIK3CA", "BRAF", "APC", "BRCA1", "BRCA2", "MET", "ALK"]
CONSEQUENCES = [("missense_variant", "MODERATE"), ("synonymous_variant", "LOW"), ("intron_variant", "MODIFIER"),
                ("stop_gained", "HIGH"), ("3_prime_UTR_variant", "MODIFIER")]


def generate_vcf(path: Path, n_records: int, seed: int = 42) -> None:
    rng = random.Random(seed)
    bases = "ACGT"
    transitions = {"A": "G", "G": "A", "C": "T", "T": "C"}
    header = [
        "##fileformat=VCFv4.2",
        "##reference=GRCh38",
        *[f"##contig=<ID=chr{c},length={n}>" for c, n in (("1", 248956422), ("2", 242193529), ("3", 198295559))],
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total depth">',
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
        f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {CSQ_FORMAT}">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
        '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tSAMPLE1",
    ]
    per_chrom = n_records // 3 + 1
    with open(path, "w") as fh:
        fh.write("\n".join(header) + "\n")
        written = 0
        for chrom in ("chr1", "chr2", "chr3"):
            pos = 10_000
            for _ in range(per_chrom):
                if written == n_records:
                    break
                pos += rng.randint(20, 200)
                ref = rng.choice(bases)
                kind = rng.random()
                if kind < 0.85:
                    alt = transitions[ref] if rng.random() < 0.67 else rng.choice([b for b in bases if b not in (ref, transitions[ref])])
                    alts = [alt]
                elif kind < 0.92:
                    alts = [ref + "".join(rng.choice(bases) for _ in range(rng.randint(1, 6)))]
                elif kind < 0.98:
                    ref = ref + "".join(rng.choice(bases) for _ in range(rng.randint(1, 6)))
                    alts = [ref[0]]
                else:
                    alts = [b for b in bases if b != ref][:2]
                dp = rng.randint(10, 120)
                ad_alt = [rng.randint(0, dp // 2) for _ in alts]
                ad = [dp - sum(ad_alt)] + ad_alt
                gt = "0/1" if len(alts) == 1 else "1/2"
                if ad_alt[0] > dp * 0.45 and len(alts) == 1:
                    gt = "1/1"
                info = f"DP={dp};AF=" + ",".join(f"{a / dp:.3f}" for a in ad_alt)
                if rng.random() < 0.10:
                    entries = []
                    for alt in alts:
                        gene = rng.choice(GENES)
                        cons, impact = rng.choice(CONSEQUENCES)
                        vep_allele = alt[1:] or "-" if len(alt) != len(ref) else alt
                        entries.append(f"{vep_allele}|{cons}|{impact}|{gene}|ENSG0000{rng.randint(100000, 999999)}|Transcript|"
                                       f"ENST0000{rng.randint(100000, 999999)}|protein_coding|c.{rng.randint(1, 3000)}A>G||YES")
                    info += ";CSQ=" + ",".join(entries)
                qual = f"{rng.uniform(10, 3000):.1f}"
                flt = "PASS" if rng.random() < 0.9 else "LowQual"
                fh.write(f"{chrom}\t{pos}\t.\t{ref}\t{','.join(alts)}\t{qual}\t{flt}\t{info}\tGT:AD:DP:GQ\t"
                         f"{gt}:{','.join(map(str, ad))}:{dp}:{rng.randint(1, 99)}\n")
                written += 1


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _radplan_child(vcf: Path, out: Path) -> dict:
    """Run vcf_to_parquet in a fresh interpreter; returns its wall time and peak RSS."""
    code = (
        "import json,resource,sys,time\n"
        "from radplan.genomics.vcf import vcf_to_parquet\n"
        "t=time.perf_counter(); s=vcf_to_parquet(sys.argv[1], sys.argv[2]); t=time.perf_counter()-t\n"
        "print(json.dumps({'seconds': t, 'records': s['records'], 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(vcf), str(out)], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cyvcf2_iteration_seconds(vcf: Path) -> float:
    """Bare cyvcf2 iteration touching the fields radplan reads: the ceiling for any cyvcf2-based converter."""
    code = (
        "import cyvcf2,sys,time\n"
        "t=time.perf_counter()\n"
        "for v in cyvcf2.VCF(sys.argv[1], lazy=True):\n"
        "    x=(v.CHROM,v.POS,v.REF,v.ALT,v.ID,v.QUAL,v.FILTERS,v.INFO.get('CSQ'),v.genotypes,v.format('AD'),v.format('DP'))\n"
        "print(time.perf_counter()-t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(vcf)], check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000 if QUICK else 1_000_000)
    parser.add_argument("--small-records", type=int, default=25_000 if QUICK else 250_000)
    parser.add_argument("--runs", type=int, default=1 if QUICK else 3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.vcf", tmp / "small.vcf"
        generate_vcf(big, args.records)
        generate_vcf(small, args.small_records)
        radplan_runs = [_radplan_child(big, tmp / "big.parquet") for _ in range(args.runs)]
        query_runs = [_timed(["bcftools", "query", "-f", QUERY_FORMAT, "-o", os.devnull, str(big)]) for _ in range(args.runs)]
        view_runs = [_timed(["bcftools", "view", "-Ov", "-o", os.devnull, str(big)]) for _ in range(args.runs)]
        ceiling_runs = [_cyvcf2_iteration_seconds(big) for _ in range(args.runs)]
        small_run = _radplan_child(small, tmp / "small.parquet")
    n = args.records
    radplan_rate = n / statistics.median(r["seconds"] for r in radplan_runs)
    query_rate = n / statistics.median(query_runs)
    view_rate = n / statistics.median(view_runs)
    ceiling_rate = n / statistics.median(ceiling_runs)
    common = {"unit": "variants/s", "runs": args.runs, "records": n, "timing": "wall time, median of runs"}
    peak_big = max(r["peak_rss_mb"] for r in radplan_runs)
    results = [
        result_row("vcf_vs_bcftools", radplan=round(radplan_rate), peer=round(query_rate),
                   ratio=round(radplan_rate / query_rate, 3), target=">= 1.0",
                   peer_tool="bcftools query -f '" + QUERY_FORMAT.replace("\n", "\\n") + "'", **common),
        result_row("vcf_vs_bcftools_view", radplan=round(radplan_rate), peer=round(view_rate),
                   ratio=round(radplan_rate / view_rate, 3), peer_tool="bcftools view -Ov", **common),
        result_row("vcf_cyvcf2_ceiling_vs_bcftools", radplan=round(ceiling_rate), peer=round(query_rate),
                   ratio=round(ceiling_rate / query_rate, 3), peer_tool="bcftools query (as above)",
                   note="bare cyvcf2 iteration reading the same fields, no conversion: the bound for a cyvcf2 converter",
                   **common),
        result_row("vcf_peak_rss", radplan=round(peak_big, 1), peer=round(small_run["peak_rss_mb"], 1), unit="MB",
                   ratio=round(peak_big / small_run["peak_rss_mb"], 3), runs=args.runs, records=n, target="~1 (flat)",
                   note=f"radplan peak RSS converting {n} records (radplan) vs {args.small_records} records (peer): "
                        "a ratio near 1 means memory is flat in file size"),
    ]
    write_results("vcf.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
