"""``radplan vcf-to-parquet`` and ``radplan pgx``: the genomics library's code paths from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radplan.errors import RadplanInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    vcf = subparsers.add_parser("vcf-to-parquet", help="convert a VCF/BCF to normalized Parquet (one row per allele x sample)")
    vcf.add_argument("vcf", type=Path, help="input .vcf, .vcf.gz or .bcf")
    vcf.add_argument("out", type=Path, help="output .parquet (written atomically)")
    vcf.add_argument("--no-pseudonymize", dest="pseudonymize", action="store_false",
                     help="keep raw sample names (default: replace them with the patient key from RADPLAN key/demo key)")
    vcf.add_argument("--build", choices=["GRCh37", "GRCh38"], help="genome build when the header names none")
    vcf.add_argument("--batch-size", type=int, default=50_000, help="rows per Parquet batch (default 50000)")
    vcf.set_defaults(func=run_vcf_to_parquet)

    pgx = subparsers.add_parser("pgx", help="pharmacogenomic diplotypes/phenotypes (CPIC) from a germline VCF")
    pgx.add_argument("vcf", type=Path, help="GRCh38 germline VCF (every sample is called unless --sample)")
    pgx.add_argument("--outside-call", type=Path, help="PharmCAT outside-call TSV (e.g. CYP2D6)")
    pgx.add_argument("--sample", help="sample name in a multi-sample VCF")
    pgx.add_argument("--min-depth", type=int, default=0, help="FORMAT DP below this at a defining position makes the gene indeterminate")
    pgx.add_argument("--out", type=Path, required=True, help="report TSV, one row per sample and gene: call_status (called | indeterminate | no_call), "
                     "diplotype, phenotype, activity_score, genotype/interpretation (VKORC1, CYP4F2, IFNL3), missing positions")
    pgx.set_defaults(func=run_pgx)


def run_vcf_to_parquet(args: argparse.Namespace) -> int:
    from radplan import progress
    from radplan.genomics.vcf import vcf_to_parquet

    pseudonym = None
    if args.pseudonymize:
        from radplan.pseudonym import Pseudonymizer

        pseudonym = Pseudonymizer.from_environment().patient_key

    def report(record) -> None:  # the user's own shell: the file name is theirs to see
        print(f"quarantined: {record.file}:{record.line}: {record.reason} ({record.caller})", file=sys.stderr)

    try:
        with progress.task("VCF records") as bar:
            summary = vcf_to_parquet(args.vcf, args.out, sample_pseudonym=pseudonym, batch_size=args.batch_size,
                                     genome_build=args.build, progress=bar.callback, on_quarantine=report)
    except RadplanInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


PGX_REPORT_COLUMNS = ["sample_index", "gene", "call_status", "diplotype", "phenotype", "activity_score", "genotype",
                      "interpretation", "possible_diplotypes", "missing_positions", "no_call_reason", "source",
                      "allele_definition_version"]


def run_pgx(args: argparse.Namespace) -> int:
    from radplan.genomics.pgx import call_pgx
    from radplan.lake import atomic_write_text

    try:
        calls = call_pgx(args.vcf, sample=args.sample, outside_calls=args.outside_call, min_depth=args.min_depth)
    except (RadplanInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = calls[PGX_REPORT_COLUMNS].copy()
    for column in ("possible_diplotypes", "missing_positions"):
        report[column] = report[column].map("; ".join)
    atomic_write_text(args.out, report.to_csv(sep="\t", index=False, na_rep=""))
    # an indeterminate gene must never read as a normal result: say so, with the positions, on stderr
    for row in calls[calls["call_status"] != "called"].itertuples():
        detail = "; ".join(row.missing_positions) if row.missing_positions else row.no_call_reason
        print(f"{row.call_status}: sample {row.sample_index} {row.gene}: {row.no_call_reason}"
              + (f" ({detail})" if detail and detail != row.no_call_reason else ""), file=sys.stderr)
    counts = calls["call_status"].value_counts()
    print(json.dumps({"samples": int(calls["sample_index"].nunique()), "genes": int(calls["gene"].nunique()),
                      **{status: int(counts.get(status, 0)) for status in ("called", "indeterminate", "no_call")},
                      "knowledge_base": calls["allele_definition_version"].iloc[0]}))
    return 0
