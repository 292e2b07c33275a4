"""Benchmark: radplan vcf_to_parquet vs oxbow VCF->Parquet and `bcftools query` on a generated 1M-record x 4-sample VCF.

Generates (deterministically, seed 42) a realistic 4-sample GRCh38 VCF: SNVs with a real Ti/Tv mix, indels,
~2% multi-allelic sites, INFO with DP/AF and a VEP-like CSQ on ~10% of records, FORMAT GT:AD:DP:GQ.
Side by side in one run (separate child processes, wall time, median of ``--runs``):

* radplan ``vcf_to_parquet`` (one row per allele x sample, CSQ picked, zstd Parquet);
* oxbow (Rust/noodles -> Arrow) writing the same content to zstd Parquet: the fixed columns, INFO CSQ and
  FORMAT GT/AD/DP of every sample (the fields radplan reads), batch by batch;
* ``bcftools query`` printing the same fields as text.

Also radplan's peak RSS converting 250k vs 1M records (flat memory: ratio near 1).
Writes benchmarks/results/vcf.json.

Run: .venv/bin/python benchmarks/bench_vcf.py [--records 1000000] [--samples 4] [--runs 1]
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
QUERY_FORMAT = r"%CHROM\t%POS\t%ID\t%REF\t%ALT\t%QUAL\t%FILTER\t%INFO/CSQ[\t%GT\t%AD\t%DP]\n"
CSQ_FORMAT = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|HGVSc|HGVSp|CANONICAL"
GENES = ["EGFR", "KRAS", "TP53", "PIK3CA", "BRAF", "APC", "BRCA1", "BRCA2", "MET", "ALK"]
CONSEQUENCES = [("missense_variant", "MODERATE"), ("synonymous_variant", "LOW"), ("intron_variant", "MODIFIER"),
                ("stop_gained", "HIGH"), ("3_prime_UTR_variant", "MODIFIER")]


def generate_vcf(path: Path, n_records: int, seed: int = 42, samples: int = 4) -> None:
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
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"SAMPLE{i + 1}" for i in range(samples)),
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
                calls = []
                for _ in range(samples):
                    dp = rng.randint(10, 120)
                    ad_alt = [rng.randint(0, dp // 2) for _ in alts]
                    ad = [dp - sum(ad_alt)] + ad_alt
                    gt = "0/1" if len(alts) == 1 else "1/2"
                    if ad_alt[0] > dp * 0.45 and len(alts) == 1:
                        gt = "1/1"
                    calls.append(f"{gt}:{','.join(map(str, ad))}:{dp}:{rng.randint(1, 99)}")
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
                         + "\t".join(calls) + "\n")
                written += 1


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


_CHILD_FOOTER = ("t=time.perf_counter()-t\n"
                 "print(json.dumps({'seconds': t, 'cpu_seconds': time.process_time(), "
                 "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))\n")
RADPLAN_CHILD = ("import json,resource,sys,time\n"
                 "from radplan.genomics.vcf import vcf_to_parquet\n"
                 "t=time.perf_counter(); vcf_to_parquet(sys.argv[1], sys.argv[2])\n" + _CHILD_FOOTER)
# oxbow with the fields radplan reads: fixed columns, INFO CSQ, FORMAT GT/AD/DP of every sample.
OXBOW_CHILD = ("import json,resource,sys,time\n"
               "import oxbow, pyarrow as pa, pyarrow.parquet as pq\n"
               "t=time.perf_counter()\n"
               "source = oxbow.from_vcf(sys.argv[1], compression=None, info_fields=['CSQ'], samples='*', "
               "genotype_fields=['GT', 'AD', 'DP'])\n"
               "writer = None\n"
               "for batch in source.batches():\n"
               "    batch = pa.record_batch(batch)\n"
               "    writer = writer or pq.ParquetWriter(sys.argv[2], batch.schema, compression='zstd')\n"
               "    writer.write_batch(batch)\n"
               "writer.close()\n" + _CHILD_FOOTER)


def _child(code: str, vcf: Path, out: Path) -> dict:
    """Run ``code`` in a fresh interpreter; returns its wall time, CPU time and peak RSS."""
    done = subprocess.run([sys.executable, "-c", code, str(vcf), str(out)], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000 if QUICK else 1_000_000)
    parser.add_argument("--small-records", type=int, default=25_000 if QUICK else 250_000)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.vcf", tmp / "small.vcf"
        generate_vcf(big, args.records, samples=args.samples)
        generate_vcf(small, args.small_records, samples=args.samples)
        radplan_runs, oxbow_runs, query_runs = [], [], []
        for _ in range(args.runs):  # interleaved, so a load spike from other processes hits all three alike
            radplan_runs.append(_child(RADPLAN_CHILD, big, tmp / "radplan.parquet"))
            oxbow_runs.append(_child(OXBOW_CHILD, big, tmp / "oxbow.parquet"))
            query_runs.append(_timed(["bcftools", "query", "-f", QUERY_FORMAT, "-o", os.devnull, str(big)]))
        small_run = _child(RADPLAN_CHILD, small, tmp / "small.parquet")
    n = args.records
    radplan_s = statistics.median(r["seconds"] for r in radplan_runs)
    oxbow_s = statistics.median(r["seconds"] for r in oxbow_runs)
    query_s = statistics.median(query_runs)
    common = {"unit": "records/s", "runs": args.runs, "records": n, "samples": args.samples,
              "timing": "wall time, median of runs (radplan and oxbow in child processes, interpreter start excluded)"}
    peak_big = max(r["peak_rss_mb"] for r in radplan_runs)
    results = [
        result_row("vcf_vs_oxbow", radplan=round(n / radplan_s), peer=round(n / oxbow_s),
                   ratio=round(oxbow_s / radplan_s, 3), target=">= 1.0",
                   peer_tool="oxbow 0.8.2 from_vcf (CSQ, GT/AD/DP of all samples) -> zstd Parquet",
                   radplan_cpu_s=round(statistics.median(r["cpu_seconds"] for r in radplan_runs), 2),
                   peer_cpu_s=round(statistics.median(r["cpu_seconds"] for r in oxbow_runs), 2),
                   peer_peak_rss_mb=round(max(r["peak_rss_mb"] for r in oxbow_runs), 1), **common),
        result_row("vcf_vs_bcftools_query", radplan=round(n / radplan_s), peer=round(n / query_s),
                   ratio=round(query_s / radplan_s, 3), target=">= 0.5",
                   peer_tool="bcftools query -f '" + QUERY_FORMAT.replace("\n", "\\n") + "' (text, no Parquet)", **common),
        result_row("vcf_peak_rss", radplan=round(peak_big, 1), peer=round(small_run["peak_rss_mb"], 1), unit="MB",
                   ratio=round(peak_big / small_run["peak_rss_mb"], 3), runs=args.runs, records=n, target="~1 (flat)",
                   note=f"radplan peak RSS converting {n} records (radplan) vs {args.small_records} records (peer), "
                        f"{args.samples} samples: a ratio near 1 means memory is flat in file size"),
    ]
    write_results("vcf.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
