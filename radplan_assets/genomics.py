"""Genomics chain: raw VCF/BAM -> normalized variants -> actionable variants; coverage QC -> PGx phenotypes."""

import shutil
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from radplan.errors import RadplanInputError
from radplan.genomics import actionable, pgx, reads
from radplan.genomics.vcf import vcf_to_parquet
from radplan.lake import atomic_path
from radplan_assets.ingest import patient_inventory
from radplan_assets.partitions import patient_partitions
from radplan_resources import DeidKeyResource, LakeResource
from radplan_resources.io_manager import one_table_of

GENOMICS_KIND = "genomics"
INDEX_SUFFIXES = (".tbi", ".csi", ".bai", ".crai")


def _raw_files(lake: LakeResource, patient_key: str, kind: str) -> list[Path]:
    """The patient's data files of one kind; index sidecars travel with them but are not data."""
    folder = lake.zone("raw") / GENOMICS_KIND / patient_key / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(INDEX_SUFFIXES))


@asset(
    group_name="genomics",
    partitions_def=patient_partitions,
    description="The patient's VCF/BCF and BAM/CRAM files copied from the landing zone into the raw zone (PHI: sample names).",
    ins={"landing_inventory": one_table_of("genomics_files")},
)
def raw_genomics(context: AssetExecutionContext, landing_inventory: pd.DataFrame, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    files = patient_inventory(landing_inventory, patient_key)
    with lake.rebuild_patient_dir("raw", GENOMICS_KIND, patient_key) as staging:
        for index, row in enumerate(files.itertuples()):
            source = Path(row.path)
            target = staging / row.kind / f"{index:03d}{''.join(source.suffixes)}"
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            for index_suffix in INDEX_SUFFIXES:
                sidecar = source.with_name(source.name + index_suffix)
                if sidecar.exists():
                    shutil.copyfile(sidecar, target.with_name(target.name + index_suffix))
    counts = files["kind"].value_counts().to_dict() if len(files) else {}
    return MaterializeResult(metadata={"vcf_files": int(counts.get("vcf", 0)), "alignment_files": int(counts.get("alignment", 0))})


@asset(
    group_name="genomics",
    partitions_def=patient_partitions,
    deps=[raw_genomics],
    description="Variants as normalized Parquet (Arrow column-wise reader, streamed): multi-allelic records split, genotype, depth, "
    "allele fraction, FILTER, VEP CSQ / SnpEff ANN / EFF annotation; sample names pseudonymized; genome build recorded. "
    "A malformed record is quarantined with its line (quarantine/vcf/<patient>/<file>.rejected.jsonl), the rest kept; "
    "truncated or unreadable VCFs are quarantined whole.",
)
def variants(context: AssetExecutionContext, lake: LakeResource, deid_key: DeidKeyResource) -> MaterializeResult:
    patient_key = context.partition_key
    pseudonymizer = deid_key.pseudonymizer()
    summaries, quarantined = [], []
    with lake.rebuild_patient_dir("features", "variants", f"patient_key={patient_key}") as staging:
        for index, raw_path in enumerate(_raw_files(lake, patient_key, "vcf")):
            with lake.open_raw(raw_path, companions=INDEX_SUFFIXES) as path:
                try:
                    summary = vcf_to_parquet(path, staging / f"part-{index}.parquet", sample_pseudonym=pseudonymizer.patient_key,
                                             quarantine_dir=lake.zone("quarantine") / "vcf" / patient_key)
                except RadplanInputError as error:
                    quarantined.append(lake.quarantine(path, "vcf", error).safe_summary())
                    continue
            summaries.append(summary)
            context.log.info(f"VCF {index + 1}: {summary['rows']} variant rows, build {summary['build']}")
    return MaterializeResult(
        metadata={
            "vcf_files": len(summaries),
            "rows": sum(s["rows"] for s in summaries),
            "builds": MetadataValue.json(sorted({s["build"] for s in summaries})),
            "quarantined": len(quarantined),
            "quarantine_ids": MetadataValue.json(quarantined),
            "summaries": MetadataValue.json(summaries),
        }
    )


@asset(
    group_name="genomics",
    partitions_def=patient_partitions,
    description="Variants matched against radplan's versioned local knowledge base of actionable alterations "
    "(AMP/ASCO/CAP tiers, drugs, citations), by protein change, genomic position (either build) or exon rule.",
)
def annotated_variants(context: AssetExecutionContext, variants: pd.DataFrame, clinical_features: pd.DataFrame) -> MaterializeResult:
    found = variants
    clinical = clinical_features
    tumour_type = clinical["cancer_type"].iloc[0] if len(clinical) else None
    kb = actionable.load_knowledge_base()
    matches = actionable.match_actionable(found, tumour_type=tumour_type, kb=kb) if len(found) else pd.DataFrame()
    return MaterializeResult(
        value=matches,
        metadata={"actionable_matches": len(matches), "kb_version": kb.kb_version, "tumour_type": str(tumour_type)}
    )


def pgx_positions() -> list[tuple[str, int]]:
    """Every position that defines a star allele in the packaged PGx allele definitions."""
    genes = pgx.allele_definitions()["genes"]
    return sorted({(p["chrom"], int(p["pos"])) for spec in genes.values() for p in spec["positions"]})


class CoverageConfig(Config):
    min_depth: int = 20
    depth_options: str = Field(
        default="",
        description="Read and base filters as `samtools depth` options (e.g. \"-q 20 -Q 13 -G UNMAP,SECONDARY,QCFAIL,DUP\"); "
        "empty: samtools depth's defaults",
    )


@asset(
    group_name="genomics",
    partitions_def=patient_partitions,
    deps=[raw_genomics],
    description="Read depth at pharmacogenomic positions from the patient's BAM/CRAM (pysam); positions below the "
    "configured minimum depth become PGx no-calls. Empty when no alignments were delivered.",
)
def coverage_qc(context: AssetExecutionContext, config: CoverageConfig, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    alignments = _raw_files(lake, patient_key, "alignment")
    positions = pgx_positions()
    frames = []
    for raw_path in alignments:
        with lake.open_raw(raw_path, companions=INDEX_SUFFIXES) as path:
            try:
                filters = reads.PileupFilters.from_samtools_options(config.depth_options, tool="depth")
                frames.append(reads.coverage_qc(path, regions=[], pgx_positions=positions, min_depth=config.min_depth, filters=filters))
            except RadplanInputError as error:
                lake.quarantine(path, "alignment", error)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["chrom", "pos", "depth", "callable"])
    return MaterializeResult(value=frame, metadata={"alignments": len(frames), "positions": len(frame), "min_depth": config.min_depth})


@asset(
    group_name="genomics",
    partitions_def=patient_partitions,
    deps=[raw_genomics],
    description="Pharmacogenomic phenotypes per CPIC: genotype -> star-allele diplotype -> phenotype (activity score "
    "where defined) for CYP2C19, CYP2C9, VKORC1, DPYD, TPMT, NUDT15, SLCO1B1, UGT1A1; missing or low-depth positions "
    "are reported as no-calls, never assumed reference.",
)
def pgx_phenotypes(context: AssetExecutionContext, config: CoverageConfig, coverage_qc: pd.DataFrame, lake: LakeResource) -> MaterializeResult:
    patient_key = context.partition_key
    coverage = coverage_qc
    frames = []
    for raw_path in _raw_files(lake, patient_key, "vcf"):
        with lake.open_raw(raw_path, companions=INDEX_SUFFIXES) as path:
            try:
                frames.append(
                    pgx.call_pgx(path, depth_by_position=coverage if len(coverage) else None, min_depth=config.min_depth if len(coverage) else 0)
                )
            except RadplanInputError:
                continue  # the variants asset has quarantined this file with its reason
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("gene") if frames else pd.DataFrame()
    called = frame[frame["phenotype"].notna()] if len(frame) else frame
    return MaterializeResult(
        value=frame,
        metadata={
            "genes": len(frame),
            "called": len(called),
            "phenotypes": MetadataValue.json(dict(zip(called["gene"], called["phenotype"])) if len(called) else {}),
        }
    )
