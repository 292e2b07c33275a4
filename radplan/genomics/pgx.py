"""Pharmacogenomic diplotypes and phenotypes from a germline VCF, from PharmCAT's published definitions.

Knowledge base
--------------
Allele definitions (``data/pharmcat/alleles/<GENE>_translation.json``) and the CPIC
allele-function / diplotype-phenotype tables (``data/pharmcat/phenotype/<GENE>.json``) are
PharmCAT's own files, shipped unmodified (MPL-2.0; version and origin in
``data/pharmcat/manifest.json``). Every named allele in them is callable. The version goes
into every row (``allele_definition_version``) so every recommendation that uses a call
can show it. CYP2D6 cannot be called from short-read VCFs: it comes from a PharmCAT-format
outside-call TSV (``GENE<TAB>DIPLOTYPE``), scored with the CPIC activity values in
``data/pgx/phenotypes.yaml``; an outside call for a VCF gene replaces the VCF call, as in
PharmCAT.

Matching (PharmCAT's Named Allele Matcher rules)
-------------------------------------------------
A named allele's blank position means the reference allele; its *score* is the number of
positions it spells out (the reference allele spells out all). A pair of alleles is
consistent with the sample when, at every position, the two alleles can account for the
two observed alleles (unphased: in either order per position; phased, when every
heterozygous call is phased within one phase set (FORMAT PS): each allele on one whole
haplotype). The highest-scoring consistent pairs are the call; several of them
(unphased heterozygotes) are all reported in ``possible_diplotypes`` with ``ambiguous``
set, and the phenotype is given only when they agree.

DPYD follows CPIC and PharmCAT: each named variant found is counted (multi-position
alleles such as HapB3 first), and the activity score is the sum of the two lowest
activity values, missing copies being Reference (1.0). Phase is not used for DPYD: two
decreased/no-function variants are presumed to be on different copies (CPIC), the
conservative reading.

Missing data is never reference: a defined position absent from the VCF, with a missing
genotype, with a REF that differs from the definition, or below ``min_depth`` makes the
gene ``call_status = "indeterminate"`` with the positions named in ``missing_positions``.

Genotype-only genes (VKORC1, CYP4F2, IFNL3) have no CPIC phenotype: ``phenotype`` is null,
``genotype`` holds the genotype (``rs9923231 C/T`` for single-position genes, else the
diplotype) and ``interpretation`` the CPIC term from PharmCAT's table where one exists
(VKORC1 ``-1639 AG``; IFNL3 the allele functions; CYP4F2 none).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import combinations_with_replacement
from pathlib import Path

import pandas as pd
import yaml

from radplan.errors import InvalidVcfError
from radplan.genomics.vcf import build_from_header, cyvcf2_reader, open_vcf

OUTPUT_COLUMNS = [
    "gene", "diplotype", "phenotype", "activity_score", "genotype", "interpretation", "call_status",
    "possible_diplotypes", "ambiguous", "missing_positions", "no_call_reason", "source",
    "allele_definition_version", "sample_index",
]
OUTSIDE_CALL_GENES = ("CYP2D6",)
# CPIC gives these genes a genotype-based interpretation, not a metabolizer/function phenotype.
GENOTYPE_ONLY_GENES = frozenset({"VKORC1", "CYP4F2", "IFNL3"})
CALLED, INDETERMINATE, NO_CALL = "called", "indeterminate", "no_call"

_IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT",
          "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT"}


def _kb_file(relative: str):
    return resources.files("radplan.genomics").joinpath(f"data/pharmcat/{relative}")


@lru_cache(maxsize=1)
def knowledge_base_manifest() -> dict:
    """Origin, licence and version of the shipped PharmCAT files (``data/pharmcat/manifest.json``)."""
    return json.loads(_kb_file("manifest.json").read_text())


def knowledge_base_version() -> str:
    manifest = knowledge_base_manifest()
    return f"PharmCAT definitions {manifest['data_version']} ({manifest['source_repository']}@{manifest['source_commit'][:8]})"


@lru_cache(maxsize=1)
def _cyp2d6_rules() -> dict:
    return yaml.safe_load(resources.files("radplan.genomics").joinpath("data/pgx/phenotypes.yaml").read_text())


@lru_cache(maxsize=1)
def recommendation_table() -> dict:
    return yaml.safe_load(resources.files("radplan.genomics").joinpath("data/pgx/cpic_recommendations.yaml").read_text())


# --------------------------------------------------------------------------- definitions

@dataclass(frozen=True)
class Position:
    index: int
    chrom: str
    pos: int
    rsid: str | None
    ref: str

    def label(self) -> str:
        return f"{self.chrom}:{self.pos}" + (f" ({self.rsid})" if self.rsid else "")


@dataclass(frozen=True)
class NamedAllele:
    name: str
    order: int
    reference: bool
    bases: tuple[frozenset[str], ...]  # per position, the VCF alleles it accepts (reference filled in)
    defined: tuple[int, ...]           # positions the definition spells out
    score: int


@dataclass(frozen=True)
class GeneDefinition:
    gene: str
    positions: tuple[Position, ...]
    alleles: tuple[NamedAllele, ...]
    function: dict[str, str | None]              # allele -> CPIC function
    activity: dict[str, float | None]            # allele -> CPIC activity value
    phenotype_by_pair: dict[frozenset, tuple[str | None, float | None]]
    phenotype_by_score: dict[float, str]


def _accepted(base: str) -> frozenset[str]:
    return frozenset(_IUPAC[base]) if len(base) == 1 and base in _IUPAC else frozenset({base})


def _float(value) -> float | None:
    return None if value in (None, "", "n/a") else float(value)


@lru_cache(maxsize=None)
def gene_definition(gene: str) -> GeneDefinition:
    spec = json.loads(_kb_file(f"alleles/{gene}_translation.json").read_text())
    positions = tuple(Position(i, v["chromosome"], int(v["position"]), v.get("rsid"), v["ref"])
                      for i, v in enumerate(spec["variants"]))
    reference = next(a for a in spec["namedAlleles"] if a.get("reference"))
    alleles = []
    for order, allele in enumerate(spec["namedAlleles"]):
        if allele.get("structuralVariant"):
            continue  # copy-number alleles cannot be seen in a short-variant VCF
        defined = tuple(i for i, b in enumerate(allele["alleles"]) if b is not None)
        bases = tuple(_accepted(b if b is not None else reference["alleles"][i]) for i, b in enumerate(allele["alleles"]))
        alleles.append(NamedAllele(allele["name"], order, bool(allele.get("reference")), bases, defined, len(defined)))
    function: dict[str, str | None] = {}
    activity: dict[str, float | None] = {}
    by_pair: dict[frozenset, tuple[str | None, float | None]] = {}
    by_score: dict[float, str] = {}
    phenotype_path = _kb_file(f"phenotype/{gene}.json")
    if phenotype_path.is_file():
        table = json.loads(phenotype_path.read_text())
        for allele in table["namedAlleles"]:
            function[allele["name"]] = allele.get("functionValue")
            activity[allele["name"]] = _float(allele.get("activityValue"))
        for row in table["diplotypes"]:
            key = frozenset(row["diplotypekey"].items())
            by_pair[key] = (row.get("generesult"), _float(row.get("activityScore")))
            score = _float(row.get("activityScore"))
            if score is not None:
                by_score[score] = row["generesult"]
    return GeneDefinition(gene, positions, tuple(alleles), function, activity, by_pair, by_score)


def vcf_genes() -> tuple[str, ...]:
    return tuple(knowledge_base_manifest()["genes"])


def allele_definitions() -> dict:
    """Positions that define alleles, per VCF-called gene: ``{"version", "build", "genes": {gene: {"positions": [...]}}}``."""
    return {
        "version": knowledge_base_version(),
        "build": knowledge_base_manifest()["genome_build"],
        "genes": {gene: {"positions": [{"id": p.rsid, "chrom": p.chrom, "pos": p.pos, "ref": p.ref}
                                       for p in gene_definition(gene).positions]}
                  for gene in vcf_genes()},
    }


def _norm_chrom(chrom: str) -> str:
    return chrom[3:] if chrom.lower().startswith("chr") else chrom


def _allele_sort_key(allele: NamedAllele) -> tuple:
    if allele.reference:
        return (0, 0, "", allele.order)
    star = re.fullmatch(r"\*(\d+)(.*)", allele.name)
    return (1, int(star.group(1)), star.group(2), allele.order) if star else (2, 0, "", allele.order)


# --------------------------------------------------------------------------- reading the VCF

@dataclass
class SiteCall:
    ref: str
    alleles: tuple[str, ...] | None  # in GT order; None when any allele is missing
    phased: bool
    depth: int | None
    phase_set: int | None = None  # FORMAT PS: phased calls pair up only within one phase set


def _last_line(path: Path, size: int) -> bytes:
    """The bytes after the file's last newline, read backwards in chunks (never the whole file)."""
    chunk, tail = 1 << 16, b""
    with open(path, "rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - chunk)
            fh.seek(start)
            tail = fh.read(end - start) + tail
            if b"\n" in tail:
                return tail[tail.rfind(b"\n") + 1:]
            end = start
    return tail


def _open(vcf_path: Path):
    """cyvcf2 reader; a plain-text VCF whose last record lacks only its final newline is accepted.

    The generic reader (:func:`radplan.genomics.vcf.open_vcf`) rejects a missing final newline as a
    sign of truncation. Here the last line is accepted when it has every column the header names
    (8 fixed, FORMAT and one per sample), which a record cut short would not.
    """

    from radplan.genomics.vcf import _check_no_empty_fields

    path = Path(vcf_path)
    if not path.is_file() or path.stat().st_size == 0:
        return open_vcf(path)  # its error names the problem
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(3)
        fh.seek(size - 1)
        last = fh.read(1)
    if magic[:2] == b"\x1f\x8b" or magic == b"BCF" or last == b"\n":
        return open_vcf(path)
    _check_no_empty_fields(path, compressed=False)  # the guard open_vcf applies before htslib sees the text
    reader = cyvcf2_reader(path)
    columns = 8 + (1 + len(reader.samples) if reader.samples else 0)
    tail = _last_line(path, size)
    if tail.startswith(b"#") or tail.count(b"\t") + 1 != columns:
        raise InvalidVcfError(f"{path.name}: truncated VCF (last line is incomplete)")
    return reader


def _candidate_records(reader, path: Path, wanted: set[tuple[str, int]]):
    """Records that may sit at the wanted positions: region queries on an indexed VCF, else a full scan."""
    indexed = any(Path(f"{path}{suffix}").is_file() for suffix in (".tbi", ".csi"))
    if not indexed:
        yield from reader
        return
    contigs = set(reader.seqnames)
    for chrom, pos in sorted(wanted):
        name = next((c for c in (chrom, f"chr{chrom}") if c in contigs), None)
        if name is not None:
            yield from reader(f"{name}:{pos}-{pos}")


def _read_sites(vcf_path: Path, genes: tuple[str, ...]) -> tuple[list[str], list[dict[tuple[str, int], list[SiteCall]]], str]:
    """Sample names, per sample ``(chrom, pos) -> [SiteCall per record]`` at defining positions, and the build."""
    wanted = {(_norm_chrom(p.chrom), p.pos) for g in genes for p in gene_definition(g).positions}
    reader = _open(Path(vcf_path))
    samples = list(reader.samples)
    if not samples:
        raise InvalidVcfError(f"{Path(vcf_path).name}: VCF has no sample columns")
    has_dp = "##FORMAT=<ID=DP," in reader.raw_header
    has_ps = "##FORMAT=<ID=PS," in reader.raw_header
    sites: list[dict[tuple[str, int], list[SiteCall]]] = [{} for _ in samples]
    try:
        for variant in _candidate_records(reader, Path(vcf_path), wanted):
            key = (_norm_chrom(variant.CHROM), variant.POS)
            if key not in wanted:
                continue
            alleles = [variant.REF, *variant.ALT]
            depths = variant.format("DP") if has_dp else None
            phase_sets = variant.format("PS") if has_ps else None
            for index, call in enumerate(variant.genotypes):
                indexes, phased = call[:-1], bool(call[-1])
                observed = None if any(i < 0 for i in indexes) else tuple(alleles[i] for i in indexes)
                depth = None
                if depths is not None and depths[index][0] >= 0:
                    depth = int(depths[index][0])
                phase_set = None
                if phase_sets is not None and phase_sets[index][0] >= 0:
                    phase_set = int(phase_sets[index][0])
                sites[index].setdefault(key, []).append(SiteCall(variant.REF, observed, phased, depth, phase_set))
    except InvalidVcfError:
        raise
    except Exception as exc:  # htslib parse errors
        raise InvalidVcfError(f"{Path(vcf_path).name}: malformed record ({exc})") from exc
    return samples, sites, build_from_header(reader.raw_header)


def _site_genotype(position: Position, records: list[SiteCall] | None, depth: int | None,
                   min_depth: int) -> tuple[SiteCall | None, str | None]:
    """The usable call at a defining position, or None and why it is missing."""
    if not records:
        return None, "not in the VCF"
    matching = [r for r in records if r.ref == position.ref]
    if not matching:
        return None, f"REF {records[0].ref} differs from the definition's {position.ref}"
    if any(r.alleles is None for r in matching):
        return None, "no-call genotype"
    # split multi-allelic records: the one carrying a non-reference allele holds the genotype
    carrying = [r for r in matching if any(a != r.ref for a in r.alleles)]
    if len(carrying) > 1 and len({tuple(sorted(r.alleles)) for r in carrying}) > 1:
        return None, "conflicting records"
    call = carrying[0] if carrying else matching[0]
    if len(call.alleles) != 2:
        return None, f"ploidy {len(call.alleles)}"
    if min_depth > 0:
        depth = depth if depth is not None else call.depth
        if depth is None or depth < min_depth:
            return None, f"depth {depth if depth is not None else 'unknown'} < {min_depth}"
    return call, None


# --------------------------------------------------------------------------- calling one gene

def _consistent_pairs(definition: GeneDefinition, observed: dict[int, tuple[str, str]], phased: bool):
    candidates = [a for a in definition.alleles
                  if all(a.bases[i] & set(obs) for i, obs in observed.items())]
    pairs = []
    for a, b in combinations_with_replacement(candidates, 2):
        if phased:
            ok = (all(o[0] in a.bases[i] and o[1] in b.bases[i] for i, o in observed.items())
                  or all(o[1] in a.bases[i] and o[0] in b.bases[i] for i, o in observed.items()))
        else:
            ok = all((o[0] in a.bases[i] and o[1] in b.bases[i]) or (o[1] in a.bases[i] and o[0] in b.bases[i])
                     for i, o in observed.items())
        if ok:
            pairs.append(tuple(sorted((a, b), key=_allele_sort_key)))
    return pairs


def _pair_name(pair) -> str:
    return f"{pair[0].name}/{pair[1].name}"


def _lookup(definition: GeneDefinition, names: tuple[str, str]) -> tuple[str | None, float | None]:
    return definition.phenotype_by_pair.get(frozenset(Counter(names).items()), (None, None))


def _empty_row(gene: str) -> dict:
    return {"gene": gene, "diplotype": None, "phenotype": None, "activity_score": None, "genotype": None,
            "interpretation": None, "call_status": NO_CALL, "possible_diplotypes": [], "ambiguous": False,
            "missing_positions": [], "no_call_reason": None}


def _genotype_only(definition: GeneDefinition, row: dict, names: tuple[str, str], observed: dict[int, tuple[str, str]]) -> None:
    if len(definition.positions) == 1:
        position = definition.positions[0]
        bases = sorted(observed[0], key=lambda b: (b != position.ref, b))
        row["genotype"] = f"{position.rsid or position.label()} {bases[0]}/{bases[1]}"
    else:
        row["genotype"] = row["diplotype"]
    result, _ = _lookup(definition, names)
    if result is None and all(definition.function.get(n) for n in names):
        result = " / ".join(definition.function[n] for n in names)
    row["interpretation"] = result  # None where PharmCAT's data carry no CPIC term (CYP4F2)


def _call_dpyd(definition: GeneDefinition, row: dict, observed: dict[int, tuple[str, str]]) -> None:
    """CPIC DPYD: count each named variant, activity score from the two lowest-activity copies."""
    reference = next(a for a in definition.alleles if a.reference)
    remaining = {i: Counter(b for b in obs if b not in reference.bases[i]) for i, obs in observed.items()}
    copies: list[NamedAllele] = []
    for allele in sorted((a for a in definition.alleles if not a.reference), key=lambda a: (-a.score, a.order)):
        variant_positions = [i for i in allele.defined if allele.bases[i] != reference.bases[i]]
        if not variant_positions:
            continue
        count = min(sum(remaining[i][b] for b in allele.bases[i]) for i in variant_positions)
        for _ in range(count):
            copies.append(allele)
            for i in variant_positions:
                base = next(b for b in allele.bases[i] if remaining[i][b] > 0)
                remaining[i][base] -= 1
    unexplained = [definition.positions[i].label() for i, left in remaining.items() if sum(left.values()) > 0]
    if unexplained:
        row["no_call_reason"] = f"genotype not explained by the DPYD allele definitions at {', '.join(unexplained)}"
        return
    while len(copies) < 2:
        copies.append(reference)
    values = {a.name: definition.activity.get(a.name) for a in copies}
    if any(v is None for v in values.values()):
        row["no_call_reason"] = "DPYD allele without a CPIC activity value: " + ", ".join(n for n, v in values.items() if v is None)
        return
    ranked = sorted(copies, key=lambda a: (values[a.name], _allele_sort_key(a)))
    lowest = tuple(sorted(ranked[:2], key=_allele_sort_key))
    score = values[lowest[0].name] + values[lowest[1].name]
    pairs = {_pair_name(tuple(sorted(p, key=_allele_sort_key))) for p in combinations_with_replacement(copies, 2)
             if Counter(p) <= Counter(copies)} if len(copies) > 2 else {_pair_name(lowest)}
    row.update(diplotype=_pair_name(lowest), activity_score=score, call_status=CALLED,
               phenotype=definition.phenotype_by_score.get(score), possible_diplotypes=sorted(pairs),
               ambiguous=len(copies) > 2)
    if row["phenotype"] is None:
        row["call_status"] = NO_CALL
        row["no_call_reason"] = f"DPYD activity score {score} not in the CPIC table"


def call_gene(gene: str, sites: dict[tuple[str, int], list[SiteCall]], *, depth_lookup: dict | None = None,
              min_depth: int = 0) -> dict:
    """One gene's call for one sample (see the module docstring); keys as :data:`OUTPUT_COLUMNS` minus lineage."""
    definition = gene_definition(gene)
    depth_lookup = depth_lookup or {}
    row = _empty_row(gene)
    observed: dict[int, tuple[str, str]] = {}
    het_phase: set[tuple[bool, int | None]] = set()
    for position in definition.positions:
        key = (_norm_chrom(position.chrom), position.pos)
        call, why = _site_genotype(position, sites.get(key), depth_lookup.get(key), min_depth)
        if call is None:
            row["missing_positions"].append(f"{position.label()}: {why}")
            continue
        observed[position.index] = call.alleles
        if call.alleles[0] != call.alleles[1]:
            het_phase.add((call.phased, call.phase_set))
    if row["missing_positions"]:
        row["call_status"] = INDETERMINATE
        row["no_call_reason"] = (f"{len(row['missing_positions'])} of {len(definition.positions)} defining positions "
                                 "missing or no-call; never assumed reference")
        return row
    if gene == "DPYD":
        _call_dpyd(definition, row, observed)
        return row
    # phase is used only when every heterozygous call is phased within one phase set
    phased = len(het_phase) == 1 and next(iter(het_phase))[0]
    pairs = _consistent_pairs(definition, observed, phased)
    if not pairs:
        row["no_call_reason"] = "genotype not explained by any pair of defined alleles"
        return row
    best = max(a.score + b.score for a, b in pairs)
    top = sorted({p for p in pairs if p[0].score + p[1].score == best}, key=lambda p: (_allele_sort_key(p[0]), _allele_sort_key(p[1])))
    row["possible_diplotypes"] = [_pair_name(p) for p in top]
    row["ambiguous"] = len(top) > 1
    row["diplotype"] = " or ".join(row["possible_diplotypes"])
    row["call_status"] = CALLED
    if gene in GENOTYPE_ONLY_GENES:
        if row["ambiguous"]:
            row["call_status"] = INDETERMINATE
            row["no_call_reason"] = "ambiguous diplotype"
        else:
            _genotype_only(definition, row, (top[0][0].name, top[0][1].name), observed)
        return row
    results = {_lookup(definition, (a.name, b.name)) for a, b in top}
    if len(results) == 1:
        row["phenotype"], row["activity_score"] = next(iter(results))
        if row["phenotype"] is None:
            row["call_status"] = NO_CALL
            row["no_call_reason"] = "diplotype not in the CPIC phenotype table (allele without an assigned function)"
    else:
        row["call_status"] = INDETERMINATE
        row["no_call_reason"] = "ambiguous diplotype with different phenotypes: " + "; ".join(
            f"{_pair_name(p)} {_lookup(definition, (p[0].name, p[1].name))[0]}" for p in top)
    return row


# --------------------------------------------------------------------------- outside calls

def _outside_call(gene: str, diplotype: str) -> dict:
    """Phenotype for an outside diplotype: VCF genes by PharmCAT's table, CYP2D6 by CPIC activity values."""
    row = {**_empty_row(gene), "diplotype": diplotype, "possible_diplotypes": [diplotype]}
    names = tuple(diplotype.split("/"))
    if gene in vcf_genes():
        definition = gene_definition(gene)
        if len(names) == 2 and all(n in {a.name for a in definition.alleles} for n in names):
            if gene in GENOTYPE_ONLY_GENES:
                row["genotype"] = diplotype
                row["interpretation"] = _lookup(definition, names)[0]
                row["call_status"] = CALLED
                return row
            row["phenotype"], row["activity_score"] = _lookup(definition, names)
            if gene == "DPYD" and all(definition.activity.get(n) is not None for n in names):
                row["activity_score"] = definition.activity[names[0]] + definition.activity[names[1]]
                row["phenotype"] = definition.phenotype_by_score.get(row["activity_score"])
            row["call_status"] = CALLED if row["phenotype"] else NO_CALL
            if row["phenotype"] is None:
                row["no_call_reason"] = "outside-call diplotype not in the CPIC phenotype table"
        else:
            row["no_call_reason"] = "outside-call allele not in the allele definitions"
        return row
    rule = _cyp2d6_rules()["genes"].get(gene, {})
    values = [rule.get("activity_values", {}).get(h) for h in names]
    if len(names) != 2 or any(v is None for v in values):
        row["no_call_reason"] = "outside-call allele without a known activity value"
        return row
    score = float(sum(values))
    row["activity_score"] = score
    row["phenotype"] = next((band["phenotype"] for band in rule["ranges"] if band["min"] <= score <= band["max"]), None)
    row["call_status"] = CALLED if row["phenotype"] else NO_CALL
    return row


def read_outside_calls(path: Path) -> dict[str, str]:
    """PharmCAT outside-call TSV: ``GENE<TAB>DIPLOTYPE[<TAB>...]``; ``#`` lines are comments."""
    calls: dict[str, str] = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if not row or row[0].startswith("#") or not row[0].strip():
                continue
            if len(row) < 2 or not row[1].strip():
                raise InvalidVcfError(f"{Path(path).name}: outside call for {row[0]} has no diplotype")
            calls[row[0].strip()] = row[1].strip()
    return calls


# --------------------------------------------------------------------------- entry points

def _depth_lookup(depths: pd.DataFrame) -> dict[tuple[str, int], int]:
    """(chrom, pos) -> depth from a chrom/pos/depth table or :func:`radplan.genomics.reads.coverage_qc` output."""
    if "pos" not in depths and {"kind", "start"} <= set(depths.columns):
        depths = depths[depths["kind"] == "pgx_position"].rename(columns={"start": "pos"})
    missing = {"chrom", "pos", "depth"} - set(depths.columns)
    if missing:
        raise ValueError(f"depth_by_position lacks column(s) {sorted(missing)}")
    return {(_norm_chrom(str(c)), int(p)): int(d) for c, p, d in depths[["chrom", "pos", "depth"]].itertuples(index=False)
            if not pd.isna(d)}


def call_pgx(vcf_path: Path, *, sample: str | None = None, outside_calls: Path | None = None,
             depth_by_position: pd.DataFrame | None = None, min_depth: int = 0) -> pd.DataFrame:
    """One row per gene and sample; columns :data:`OUTPUT_COLUMNS`.

    Every sample of a multi-sample VCF is called (``sample_index``: its 0-based column in the VCF,
    so no sample name reaches the output); ``sample=`` restricts the call to one named sample.
    ``depth_by_position``: DataFrame with chrom, pos, depth (e.g. from
    :func:`radplan.genomics.reads.depth_at_positions`) or the output of
    :func:`radplan.genomics.reads.coverage_qc`; without it FORMAT DP is used.
    Outside calls (PharmCAT TSV) apply to every sample.
    """
    genes = vcf_genes()
    samples, sites, build = _read_sites(Path(vcf_path), genes)
    if sample is not None:
        if sample not in samples:
            raise ValueError("requested sample is not in the VCF")
        selected = [samples.index(sample)]
    else:
        selected = list(range(len(samples)))
    depth_lookup = _depth_lookup(depth_by_position) if depth_by_position is not None else {}
    outside = read_outside_calls(Path(outside_calls)) if outside_calls else {}
    kb_build = knowledge_base_manifest()["genome_build"]
    rows = []
    for index in selected:
        for gene in genes:
            if gene in outside:
                row = {**_outside_call(gene, outside[gene]), "source": "outside_call"}
            elif build not in (kb_build, "unknown"):
                row = {**_empty_row(gene), "no_call_reason": f"VCF is {build}; allele definitions are {kb_build}", "source": "vcf"}
            else:
                row = {**call_gene(gene, sites[index], depth_lookup=depth_lookup, min_depth=min_depth), "source": "vcf"}
            rows.append({**row, "sample_index": index})
        for gene in OUTSIDE_CALL_GENES:
            if gene in outside:
                row = {**_outside_call(gene, outside[gene]), "source": "outside_call"}
            else:
                row = {**_empty_row(gene), "no_call_reason": "requires an outside call", "source": "outside_call"}
            rows.append({**row, "sample_index": index})
    frame = pd.DataFrame(rows)
    frame["allele_definition_version"] = knowledge_base_version()
    frame["activity_score"] = frame["activity_score"].astype("Float64")
    frame["ambiguous"] = frame["ambiguous"].astype(bool)
    return frame[OUTPUT_COLUMNS]


def vcf_sample_names(vcf_path: Path) -> list[str]:
    """Sample column names, in order (for a user-facing report; never written to the lake)."""
    return list(_open(Path(vcf_path)).samples)


def cpic_recommendations(phenotypes: pd.DataFrame) -> pd.DataFrame:
    """CPIC recommendations for each called row: by phenotype, or by interpretation for genotype-only genes."""
    table = recommendation_table()
    columns = ["gene", "phenotype", "drug", "recommendation", "classification", "cpic_guideline"]
    rows = []
    interpretation = phenotypes["interpretation"] if "interpretation" in phenotypes else pd.Series([None] * len(phenotypes))
    for gene, phenotype, interpreted in zip(phenotypes["gene"], phenotypes["phenotype"], interpretation):
        key = phenotype if isinstance(phenotype, str) else interpreted if gene in GENOTYPE_ONLY_GENES else None
        if not isinstance(key, str):
            continue
        for entry in table["recommendations"]:
            if entry["gene"] != gene:
                continue
            rec = entry["by_phenotype"].get(key)
            rows.append({"gene": gene, "phenotype": key, "drug": entry["drug"],
                         "recommendation": rec["recommendation"] if rec else "No CPIC recommendation for this phenotype",
                         "classification": rec["classification"] if rec else "No recommendation",
                         "cpic_guideline": entry["cpic_guideline"]})
    return pd.DataFrame(rows, columns=columns)
