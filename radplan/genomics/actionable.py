"""Match annotated variants to the local, versioned actionable-variant knowledge base.

The knowledge base (``data/actionable_kb.yaml``) is validated on load. For each
variant row carried by its sample (:func:`carried_rows`: zygosity het/hom_alt/hemizygous, or
no genotype with ALT reads or no counts; never the normal of a tumour/normal pair) the
matcher tries, per knowledge-base entry:

1. ``protein_change``: annotated gene + one-letter protein change (``hgvsp_short``);
2. ``genomic_position``: only for rows without a protein annotation, the hotspot's
   coordinates for the row's ``genome_build`` (GRCh38 or GRCh37; rows of unknown
   build are never matched by position);
3. ``exon_rule``: rule entries (exon deletions/insertions by protein range, exon
   skipping by splice HGVSc, truncating loss-of-function, fusions/amplifications on
   structural-variant rows).

``tumour_type_match`` says whether the entry's tumour types include the patient's
(or ``any``); ``effective_tier`` downgrades a non-matching Tier I entry to Tier II-C
(evidence in another tumour type), following AMP/ASCO/CAP 2017.
TMB-high is matched (``match_basis='tumour_mutational_burden'``, one row per sample) when
``callable_megabases`` is given; MSI-H is never derivable here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

KINDS = {"protein_change", "exon_deletion", "exon_insertion", "exon_skipping", "loss_of_function",
         "fusion", "amplification", "biomarker"}
TIERS = {"Tier I-A", "Tier I-B", "Tier II-C", "Tier II-D"}
BUILDS = ("GRCh38", "GRCh37")
CARRIER_ZYGOSITIES = {"het", "hom_alt", "hemizygous"}
# Consequences counted towards TMB (non-synonymous coding and canonical splice sites).
TMB_CONSEQUENCES = {"missense_variant", "stop_gained", "stop_lost", "start_lost", "frameshift_variant",
                    "inframe_insertion", "inframe_deletion", "protein_altering_variant",
                    "splice_acceptor_variant", "splice_donor_variant"}
OUTPUT_COLUMNS = ["sample", "gene", "alteration", "match_basis", "tier", "effective_tier", "drugs", "citation",
                  "kb_version", "tumour_type_match", "kb_entry_id", "chrom", "pos", "ref", "alt", "hgvsp_short"]


class KnowledgeBaseError(ValueError):
    """The knowledge-base file is invalid (a packaging/configuration error, not patient input)."""


@dataclass(frozen=True)
class KbEntry:
    id: str
    gene: str | None
    alteration: str
    kind: str
    tumour_types: tuple[str, ...]
    drugs: tuple[str, ...]
    tier: str
    citation: str
    coordinates: dict = field(default_factory=dict)
    protein_range: tuple[int, int] | None = None
    consequences: frozenset[str] = frozenset()
    hgvsc_pattern: re.Pattern | None = None
    threshold_mut_per_mb: float | None = None
    # {build: (chrom, start, end)}: where an unannotated record (no gene/HGVS from VEP or SnpEff) must lie.
    regions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KnowledgeBase:
    kb_version: str
    release_date: str
    entries: tuple[KbEntry, ...]


def _validate_entry(raw: dict, tumour_types: set[str]) -> KbEntry:
    entry_id = raw.get("id", "<no id>")

    def fail(reason: str):
        raise KnowledgeBaseError(f"knowledge base entry {entry_id!r}: {reason}")

    for key in ("id", "alteration", "kind", "tumour_types", "drugs", "tier", "citation"):
        if not raw.get(key):
            fail(f"missing {key}")
    if raw["kind"] not in KINDS:
        fail(f"unknown kind {raw['kind']!r}")
    if raw["kind"] != "biomarker" and not raw.get("gene"):
        fail("missing gene")
    if raw["tier"] not in TIERS:
        fail(f"tier {raw['tier']!r} is not on the AMP/ASCO/CAP scale {sorted(TIERS)}")
    unknown = set(raw["tumour_types"]) - tumour_types
    if unknown:
        fail(f"unknown tumour types {sorted(unknown)}")
    if raw["kind"] == "protein_change":
        if not re.fullmatch(r"[A-Z]\d+[A-Z*]", raw["alteration"]):
            fail("protein_change alteration must look like L858R")
        coordinates = raw.get("coordinates") or {}
        for build in BUILDS:
            c = coordinates.get(build)
            if not c or not all(k in c for k in ("chrom", "pos", "ref", "alt")):
                fail(f"hotspot needs {build} coordinates (chrom, pos, ref, alt)")
    if raw["kind"] in ("exon_deletion", "exon_insertion") and (not raw.get("protein_range") or not raw.get("consequences")):
        fail("exon rule needs protein_range and consequences")
    if raw["kind"] == "exon_skipping" and not raw.get("hgvsc_pattern"):
        fail("exon_skipping needs hgvsc_pattern")
    if raw["kind"] == "loss_of_function" and not raw.get("consequences"):
        fail("loss_of_function needs consequences")
    return KbEntry(
        id=raw["id"], gene=raw.get("gene"), alteration=raw["alteration"], kind=raw["kind"],
        tumour_types=tuple(raw["tumour_types"]), drugs=tuple(raw["drugs"]), tier=raw["tier"],
        citation=raw["citation"], coordinates=raw.get("coordinates") or {},
        protein_range=tuple(raw["protein_range"]) if raw.get("protein_range") else None,
        consequences=frozenset(raw.get("consequences") or ()),
        hgvsc_pattern=re.compile(raw["hgvsc_pattern"]) if raw.get("hgvsc_pattern") else None,
        threshold_mut_per_mb=raw.get("threshold_mut_per_mb"),
        regions={build: (str(r["chrom"]), int(r["start"]), int(r["end"])) for build, r in (raw.get("regions") or {}).items()})


def load_knowledge_base(path: Path | None = None) -> KnowledgeBase:
    """Load and validate the knowledge base (the packaged one by default)."""
    text = Path(path).read_text() if path else resources.files("radplan.genomics").joinpath("data/actionable_kb.yaml").read_text()
    data = yaml.safe_load(text)
    for key in ("kb_version", "release_date", "tumour_types", "entries"):
        if not data or key not in data:
            raise KnowledgeBaseError(f"knowledge base is missing {key}")
    entries = tuple(_validate_entry(raw, set(data["tumour_types"])) for raw in data["entries"])
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise KnowledgeBaseError(f"duplicate knowledge base entry ids {duplicates}")
    return KnowledgeBase(kb_version=str(data["kb_version"]), release_date=str(data["release_date"]), entries=entries)


def _norm_chrom(chrom: str) -> str:
    return chrom[3:] if isinstance(chrom, str) and chrom.lower().startswith("chr") else chrom


def _protein_start(hgvsp_short: str | None) -> int | None:
    match = re.match(r"p\.[A-Z*](\d+)", hgvsp_short or "")
    return int(match.group(1)) if match else None


def _consequence_terms(consequence: str | None) -> set[str]:
    return set(re.split(r"[&+,]", consequence)) if consequence else set()


def _rule_matches(entry: KbEntry, row) -> bool:
    terms = _consequence_terms(row.consequence)
    if entry.kind in ("exon_deletion", "exon_insertion"):
        start = _protein_start(row.hgvsp_short)
        return bool(terms & entry.consequences) and start is not None and entry.protein_range[0] <= start <= entry.protein_range[1]
    if entry.kind == "exon_skipping":
        return bool(terms & entry.consequences) and bool(row.hgvsc) and bool(entry.hgvsc_pattern.search(row.hgvsc))
    if entry.kind == "loss_of_function":
        return bool(terms & entry.consequences)
    if entry.kind == "fusion":
        return row.variant_type in ("SV", "BND") and any("fusion" in t for t in terms)
    if entry.kind == "amplification":
        return row.variant_type == "SV" and str(row.alt).upper().startswith(("<DUP", "<AMP", "<CN"))
    return False


_BREAKEND_MATE = re.compile(r"[\[\]](?:chr)?([^:\[\]]+):(\d+)[\[\]]")


def _in_region(region: tuple[str, int, int], chrom: str, pos: int) -> bool:
    return _norm_chrom(chrom) == _norm_chrom(region[0]) and region[1] <= pos <= region[2]


def _region_matches(entry: KbEntry, row) -> bool:
    """Unannotated records: the alteration's kind of record, inside the entry's genomic region for this build."""
    region = entry.regions.get(row.genome_build)
    if region is None:
        return False
    if entry.kind == "exon_deletion":
        return row.variant_type == "DEL" and _in_region(region, row.chrom, int(row.pos) + 1)
    if entry.kind == "exon_insertion":
        return row.variant_type == "INS" and _in_region(region, row.chrom, int(row.pos))
    if entry.kind == "fusion":
        mate = _BREAKEND_MATE.search(str(row.alt))
        ends = [(row.chrom, int(row.pos))] + ([(mate.group(1), int(mate.group(2)))] if mate else [])
        return row.variant_type in ("SV", "BND") and any(_in_region(region, c, p) for c, p in ends)
    if entry.kind == "amplification":
        return row.variant_type == "SV" and str(row.alt).upper().startswith(("<DUP", "<AMP", "<CN")) and _in_region(region, row.chrom, int(row.pos))
    return False


def _match_row(entry: KbEntry, row) -> str | None:
    if entry.kind == "protein_change":
        if isinstance(row.hgvsp_short, str) and row.hgvsp_short:
            return "protein_change" if row.gene == entry.gene and row.hgvsp_short == f"p.{entry.alteration}" else None
        c = entry.coordinates.get(row.genome_build)
        if c and _norm_chrom(row.chrom) == str(c["chrom"]) and row.pos == c["pos"] and row.ref == c["ref"] and row.alt == c["alt"]:
            return "genomic_position"
        return None
    if entry.gene == row.gene and _rule_matches(entry, row):
        return "exon_rule"
    if not isinstance(row.gene, str) and _region_matches(entry, row):
        return "genomic_region"
    return None


def _tumour_match(entry: KbEntry, tumour_type: str | None) -> bool:
    return "any" in entry.tumour_types or (tumour_type is not None and tumour_type.lower() in entry.tumour_types)


def _result(entry: KbEntry, kb: KnowledgeBase, tumour_type: str | None, basis: str, sample, row=None) -> dict:
    matched = _tumour_match(entry, tumour_type)
    effective = entry.tier if matched or not entry.tier.startswith("Tier I-") else "Tier II-C"
    return {"sample": sample, "gene": entry.gene, "alteration": entry.alteration, "match_basis": basis,
            "tier": entry.tier, "effective_tier": effective, "drugs": list(entry.drugs), "citation": entry.citation,
            "kb_version": kb.kb_version, "tumour_type_match": matched, "kb_entry_id": entry.id,
            "chrom": getattr(row, "chrom", None), "pos": getattr(row, "pos", None), "ref": getattr(row, "ref", None),
            "alt": getattr(row, "alt", None), "hgvsp_short": getattr(row, "hgvsp_short", None)}


def carried_rows(variants: pd.DataFrame) -> pd.Series:
    """Rows whose sample carries the ALT: a het/hom_alt/hemizygous genotype; without a genotype (sites-only
    VCFs, Strelka2) any ALT reads or no counts at all. A sample the header names as the normal of a
    tumour/normal pair (``sample_role``) carries nothing actionable for the tumour."""
    zygosity = variants["zygosity"]
    alt_depth = pd.to_numeric(variants["alt_depth"], errors="coerce") if "alt_depth" in variants \
        else pd.Series(float("nan"), index=variants.index)
    without_genotype = zygosity.isna() & (alt_depth.isna() | (alt_depth > 0))
    normal = variants["sample_role"].eq("normal") if "sample_role" in variants else False
    return (zygosity.isin(CARRIER_ZYGOSITIES) | without_genotype) & ~normal


def tumour_mutational_burden(variants: pd.DataFrame, callable_megabases: float) -> pd.Series:
    """Non-synonymous coding mutations per callable megabase, per sample (PASS or unfiltered carried rows)."""
    if callable_megabases <= 0:
        raise ValueError("callable_megabases must be positive")
    passed = variants["filter"].isna() | (variants["filter"] == "PASS")
    carried = variants[carried_rows(variants) & passed]
    coding = carried["consequence"].map(lambda c: bool(_consequence_terms(c) & TMB_CONSEQUENCES))
    return carried[coding].groupby("sample").size() / callable_megabases


def match_actionable(variants: pd.DataFrame, *, tumour_type: str | None, kb: KnowledgeBase,
                     callable_megabases: float | None = None) -> pd.DataFrame:
    """One row per (variant, KB entry) match; columns :data:`OUTPUT_COLUMNS` (see module docstring)."""
    variant_entries = [e for e in kb.entries if e.kind != "biomarker"]
    genes = {e.gene for e in variant_entries}
    positions = {(str(c["chrom"]), int(c["pos"])) for e in variant_entries for c in e.coordinates.values()}
    carried = carried_rows(variants)
    # vectorized pre-filter: only rows in a KB gene, at a KB hotspot position or unannotated reach the per-row loop
    at_hotspot = pd.Series(list(zip(variants["chrom"].map(_norm_chrom), variants["pos"])), index=variants.index).isin(positions)
    # unannotated indels and structural records may still fall in a KB entry's genomic region
    unannotated = variants["gene"].isna() & variants["variant_type"].isin(["DEL", "INS", "SV", "BND"])
    candidates = variants[carried & (variants["gene"].isin(genes) | at_hotspot | unannotated)]
    results = []
    for row in candidates.itertuples(index=False):
        for entry in variant_entries:
            basis = _match_row(entry, row)
            if basis:
                results.append(_result(entry, kb, tumour_type, basis, row.sample, row))
    if callable_megabases is not None:
        burden = tumour_mutational_burden(variants, callable_megabases)
        for entry in kb.entries:
            if entry.kind == "biomarker" and entry.threshold_mut_per_mb is not None:
                for sample, tmb in burden.items():
                    if tmb >= entry.threshold_mut_per_mb:
                        results.append(_result(entry, kb, tumour_type, "tumour_mutational_burden", sample))
    return pd.DataFrame(results, columns=OUTPUT_COLUMNS)
