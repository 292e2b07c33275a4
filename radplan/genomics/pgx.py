"""Pharmacogenomic diplotypes and phenotypes from a germline VCF, plus CPIC drug recommendations.

Genes called from the VCF: CYP2C19, CYP2C9, VKORC1, DPYD, TPMT, NUDT15, SLCO1B1,
UGT1A1 (definitions in ``data/pgx/allele_definitions.yaml``, GRCh38). CYP2D6 cannot
be called from short-read VCFs and is taken from a PharmCAT-format outside-call TSV
(``GENE<TAB>DIPLOTYPE``); an outside call for any supported gene replaces the VCF call,
as in PharmCAT.

Diplotype calling from unphased genotypes
-----------------------------------------
Every unordered pair of defined alleles predicts a genotype at each defining position.
A pair is *consistent* when it predicts exactly the observed genotype at every
callable position. Among consistent pairs the most specific wins, scored like
PharmCAT's match score: an allele scores the number of positions it defines (the
reference allele defines them all). Equal best scores with different phenotypes are
reported as ``A/B or C/D`` with phenotype ``Indeterminate`` and a no-call reason.

Missing data: a position absent from the VCF, with a missing genotype, or with depth
below ``min_depth`` is listed in ``missing_positions`` and never assumed reference
(unless ``assume_reference_when_missing``); alleles that need a variant at a missing
position cannot be called. A genotype no pair explains is a no-call.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import combinations_with_replacement
from pathlib import Path

import pandas as pd
import yaml

from radplan.errors import InvalidVcfError
from radplan.genomics.vcf import open_vcf, build_from_header

OUTPUT_COLUMNS = ["gene", "diplotype", "phenotype", "activity_score", "missing_positions", "no_call_reason",
                  "source", "allele_definition_version"]
OUTSIDE_CALL_GENES = ("CYP2D6",)


def _load_data(name: str) -> dict:
    return yaml.safe_load(resources.files("radplan.genomics").joinpath(f"data/pgx/{name}").read_text())


@lru_cache(maxsize=1)
def allele_definitions() -> dict:
    return _load_data("allele_definitions.yaml")


@lru_cache(maxsize=1)
def phenotype_rules() -> dict:
    return _load_data("phenotypes.yaml")


@lru_cache(maxsize=1)
def recommendation_table() -> dict:
    return _load_data("cpic_recommendations.yaml")


def _norm_chrom(chrom: str) -> str:
    return chrom[3:] if chrom.lower().startswith("chr") else chrom


@dataclass(frozen=True)
class Allele:
    name: str
    variants: dict[str, str]
    reference: bool
    function: str
    activity_value: float | None
    specificity: int


def _gene_alleles(gene: str) -> list[Allele]:
    spec = allele_definitions()["genes"][gene]
    n_positions = len(spec["positions"])
    return [Allele(name=name, variants=dict(a.get("variants", {})), reference=bool(a.get("reference")),
                   function=a["function"], activity_value=a.get("activity_value"),
                   specificity=n_positions if a.get("reference") else len(a.get("variants", {})))
            for name, a in spec["alleles"].items()]


def _allele_sort_key(allele: Allele, order: int) -> tuple:
    star = re.match(r"\*(\d+)(.*)", allele.name)
    return (0, int(star.group(1)), star.group(2)) if star else (1, order, "")


# --------------------------------------------------------------------------- genotypes from the VCF

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


def _read_genotypes(vcf_path: Path, sample: str | None) -> tuple[dict[tuple[str, int], tuple], str]:
    """(chrom, pos) -> (REF, observed sorted allele tuple or None, FORMAT DP or None) at defining positions."""
    wanted = {(_norm_chrom(p["chrom"]), p["pos"]) for g in allele_definitions()["genes"].values() for p in g["positions"]}
    reader = open_vcf(Path(vcf_path))
    samples = list(reader.samples)
    if sample is None:
        if len(samples) != 1:
            raise ValueError(f"VCF has {len(samples)} samples: pass sample=")
        sample_index = 0
    elif sample in samples:
        sample_index = samples.index(sample)
    else:
        raise ValueError("requested sample is not in the VCF")
    has_dp = "##FORMAT=<ID=DP," in reader.raw_header
    found: dict[tuple[str, int], tuple] = {}
    try:
        for variant in _candidate_records(reader, Path(vcf_path), wanted):
            key = (_norm_chrom(variant.CHROM), variant.POS)
            if key not in wanted:
                continue
            alleles = [variant.REF, *variant.ALT]
            call = variant.genotypes[sample_index]
            indexes = call[:-1]
            observed = None if any(i < 0 for i in indexes) else tuple(sorted(alleles[i] for i in indexes))
            depth = None
            if has_dp:
                dp = variant.format("DP")
                depth = int(dp[sample_index][0]) if dp is not None and dp[sample_index][0] >= 0 else None
            previous = found.get(key)
            # split multi-allelic sites: keep the record that carries a non-reference call
            if previous is None or previous[1] is None or set(previous[1]) == {previous[0]}:
                found[key] = (variant.REF, observed, depth)
    except Exception as exc:  # htslib parse errors
        raise InvalidVcfError(f"{Path(vcf_path).name}: malformed record ({exc})") from exc
    return found, build_from_header(reader.raw_header)


# --------------------------------------------------------------------------- calling

def _phenotype_for(gene: str, pair: tuple[Allele, Allele]) -> tuple[str, float | None]:
    rule = phenotype_rules()["genes"][gene]
    if rule["method"] == "activity_score":
        score = float(pair[0].activity_value + pair[1].activity_value)
        return _phenotype_from_score(rule, score), score
    if rule["method"] == "genotype":
        ref = allele_definitions()["genes"][gene]["positions"][0]
        bases = sorted(a.variants.get(ref["id"], ref["ref"]) for a in pair)
        return rule["genotypes"].get("/".join(bases), "Indeterminate"), None
    functions = sorted((pair[0].function, pair[1].function))
    for f1, f2, phenotype in rule["pairs"]:
        if sorted((f1, f2)) == functions:
            return phenotype, None
    return "Indeterminate", None


def _phenotype_from_score(rule: dict, score: float) -> str:
    for band in rule["ranges"]:
        if band["min"] <= score <= band["max"]:
            return band["phenotype"]
    return "Indeterminate"


def _call_gene(gene: str, genotypes: dict, depth_lookup: dict, min_depth: int,
               assume_reference_when_missing: bool) -> dict:
    positions = allele_definitions()["genes"][gene]["positions"]
    observed: dict[str, tuple[str, ...]] = {}
    missing: list[str] = []
    for p in positions:
        key = (_norm_chrom(p["chrom"]), p["pos"])
        record = genotypes.get(key)
        depth = depth_lookup.get(key, record[2] if record else None)
        callable_ = record is not None and record[1] is not None and record[0] == p["ref"]
        if callable_ and min_depth > 0 and (depth is None or depth < min_depth):
            callable_ = False
        if callable_:
            observed[p["id"]] = record[1]
        elif assume_reference_when_missing:
            observed[p["id"]] = (p["ref"], p["ref"])
        else:
            missing.append(f"{p['chrom']}:{p['pos']} ({p['id']})")
    result = {"gene": gene, "diplotype": None, "phenotype": None, "activity_score": None,
              "missing_positions": missing, "no_call_reason": None}
    if not observed:
        result["no_call_reason"] = "no defining position callable"
        return result
    alleles = [a for a in _gene_alleles(gene) if all(rsid in observed for rsid in a.variants)]
    order = {a.name: i for i, a in enumerate(alleles)}
    consistent = []
    for pair in combinations_with_replacement(alleles, 2):
        if all(tuple(sorted(a.variants.get(p["id"], p["ref"]) for a in pair)) == observed[p["id"]]
               for p in positions if p["id"] in observed):
            consistent.append(tuple(sorted(pair, key=lambda a: _allele_sort_key(a, order[a.name]))))
    if not consistent:
        result["no_call_reason"] = "genotype not explained by any pair of defined alleles"
        return result
    best_score = max(a.specificity + b.specificity for a, b in consistent)
    best = [pair for pair in consistent if pair[0].specificity + pair[1].specificity == best_score]
    calls = [(f"{a.name}/{b.name}", *_phenotype_for(gene, (a, b))) for a, b in best]
    result["diplotype"] = " or ".join(c[0] for c in calls)
    if len({(c[1], c[2]) for c in calls}) == 1:
        result["phenotype"], result["activity_score"] = calls[0][1], calls[0][2]
    else:
        result["phenotype"] = "Indeterminate"
        result["no_call_reason"] = "ambiguous diplotype with different phenotypes"
    return result


def _outside_call(gene: str, diplotype: str) -> dict:
    """Phenotype for an outside diplotype: CYP2D6 by activity values, defined genes by their allele table."""
    rule = phenotype_rules()["genes"].get(gene, {})
    result = {"gene": gene, "diplotype": diplotype, "phenotype": None, "activity_score": None,
              "missing_positions": [], "no_call_reason": None}
    if gene in allele_definitions()["genes"]:
        by_name = {a.name: a for a in _gene_alleles(gene)}
        names = diplotype.split("/")
        if len(names) == 2 and all(n in by_name for n in names):
            result["phenotype"], result["activity_score"] = _phenotype_for(gene, (by_name[names[0]], by_name[names[1]]))
        else:
            result["phenotype"] = "Indeterminate"
            result["no_call_reason"] = "outside-call allele not in the allele definitions"
    elif rule.get("method") == "activity_score" and "activity_values" in rule:
        haplotypes = diplotype.split("/")
        values = [rule["activity_values"].get(h) for h in haplotypes]
        if len(haplotypes) != 2 or any(v is None for v in values):
            result["phenotype"] = "Indeterminate"
            result["no_call_reason"] = "outside-call allele without a known activity value"
        else:
            result["activity_score"] = float(sum(values))
            result["phenotype"] = _phenotype_from_score(rule, result["activity_score"])
    return result


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


def call_pgx(vcf_path: Path, *, sample: str | None = None, outside_calls: Path | None = None,
             depth_by_position: pd.DataFrame | None = None, min_depth: int = 0,
             assume_reference_when_missing: bool = False) -> pd.DataFrame:
    """One row per supported gene (see module docstring); columns :data:`OUTPUT_COLUMNS`.

    ``depth_by_position``: DataFrame with chrom, pos, depth (e.g. from
    :func:`radplan.genomics.reads.depth_at_positions`); without it FORMAT DP is used.
    """
    definitions = allele_definitions()
    genotypes, build = _read_genotypes(Path(vcf_path), sample)
    depth_lookup: dict[tuple[str, int], int] = {}
    if depth_by_position is not None:
        depth_lookup = {(_norm_chrom(str(c)), int(p)): int(d) for c, p, d in
                        depth_by_position[["chrom", "pos", "depth"]].itertuples(index=False)}
    outside = read_outside_calls(Path(outside_calls)) if outside_calls else {}
    rows = []
    for gene in definitions["genes"]:
        if gene in outside:
            row = {**_outside_call(gene, outside[gene]), "source": "outside_call"}
        elif build not in (definitions["build"], "unknown"):
            row = {"gene": gene, "diplotype": None, "phenotype": None, "activity_score": None,
                   "missing_positions": [], "no_call_reason": f"VCF is {build}; allele definitions are {definitions['build']}",
                   "source": "vcf"}
        else:
            row = {**_call_gene(gene, genotypes, depth_lookup, min_depth, assume_reference_when_missing), "source": "vcf"}
        rows.append(row)
    for gene in OUTSIDE_CALL_GENES:
        if gene in outside:
            rows.append({**_outside_call(gene, outside[gene]), "source": "outside_call"})
        else:
            rows.append({"gene": gene, "diplotype": None, "phenotype": None, "activity_score": None,
                         "missing_positions": [], "no_call_reason": "requires an outside call", "source": "outside_call"})
    frame = pd.DataFrame(rows)
    frame["allele_definition_version"] = definitions["version"]
    frame["activity_score"] = frame["activity_score"].astype("Float64")
    return frame[OUTPUT_COLUMNS]


def cpic_recommendations(phenotypes: pd.DataFrame) -> pd.DataFrame:
    """CPIC recommendations for each (gene, phenotype) row; genes without a phenotype are skipped."""
    table = recommendation_table()
    rows = []
    for gene, phenotype in phenotypes[["gene", "phenotype"]].itertuples(index=False):
        if not isinstance(phenotype, str):
            continue
        for entry in table["recommendations"]:
            if entry["gene"] != gene:
                continue
            rec = entry["by_phenotype"].get(phenotype)
            rows.append({"gene": gene, "phenotype": phenotype, "drug": entry["drug"],
                         "recommendation": rec["recommendation"] if rec else "No CPIC recommendation for this phenotype",
                         "classification": rec["classification"] if rec else "No recommendation",
                         "cpic_guideline": entry["cpic_guideline"]})
    return pd.DataFrame(rows, columns=["gene", "phenotype", "drug", "recommendation", "classification", "cpic_guideline"])
