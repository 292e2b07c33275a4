"""The patient's pharmacogenomic profile: every gene called, what it means, which drugs it affects.

Alerts are raised only for drugs in play (current medications and candidate
therapies, see ``recommend``). Everything else the genotype implies goes here,
the way PharmCAT reports it: per gene the diplotype, the phenotype, the drugs the
gene affects and the guideline, and - where a result would change prescribing -
which drug it concerns and whether that drug is in play for this patient.

VKORC1 has no phenotype: it is reported as its rs9923231 genotype with the
interpretation CPIC gives it (``data/pgx_profile.yaml``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from radplan.decision.rules import RuleBase, evaluate_rules

PROFILE_PATH = Path(__file__).with_name("data") / "pgx_profile.yaml"
GENE_FACT = re.compile(r"^pgx_([A-Z0-9]+)_(phenotype|diplotype|activity_score)$")


@dataclass(frozen=True)
class GeneResult:
    gene: str
    diplotype: str | None
    phenotype: str | None          # None for VKORC1 (a genotype, no phenotype) and for a missing call
    genotype: str | None           # VKORC1 only
    interpretation: str            # plain words
    drugs: tuple[str, ...]         # drugs the rule base links to this gene
    guideline: str
    actionable: tuple[dict, ...] = field(default_factory=tuple)  # {drugs, title, in_play}

    @property
    def called(self) -> bool:
        return self.diplotype is not None or self.phenotype is not None or self.genotype is not None


@lru_cache(maxsize=1)
def profile_spec() -> dict:
    return yaml.safe_load(PROFILE_PATH.read_text(encoding="utf-8"))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _genes_of(condition: Mapping[str, Any]) -> set[str]:
    if "fact" in condition:
        match = GENE_FACT.match(condition["fact"])
        return {match.group(1)} if match else set()
    children = condition.get("all") or condition.get("any") or [condition["not"]]
    return set().union(*(_genes_of(child) for child in children))


def pgx_genes(rule_base: RuleBase) -> list[str]:
    """Genes with a phenotype fact in the fact schema, in schema order."""
    genes = []
    for fact in rule_base.fact_types:
        match = GENE_FACT.match(fact)
        if match and match.group(1) not in genes:
            genes.append(match.group(1))
    return genes


def pgx_profile(facts: Mapping[str, Any], rule_base: RuleBase, drugs_in_play: Iterable[str]) -> list[GeneResult]:
    """One entry per pharmacogene; genotype-actionable results say which drug and whether it is in play."""
    spec = profile_spec()
    in_play = {str(d).casefold() for d in drugs_in_play}
    pgx_rules = [rule for rule in rule_base.rules if rule.category == "pgx"]
    rule_drugs = {rule.id: rule.drugs for rule in pgx_rules}
    # What the genotype implies whatever the patient takes: evaluate as if every pgx drug were prescribed.
    hypothetical = dict(facts)
    current = facts.get("current_medications")
    current = [] if current is None or isinstance(current, float) else list(current)
    hypothetical["current_medications"] = current + sorted({d for drugs in rule_drugs.values() for d in drugs})
    matches = [m for m in evaluate_rules(hypothetical, rule_base) if m.category == "pgx" and m.matched]
    results = []
    for gene in pgx_genes(rule_base):
        gene_rules = [rule for rule in pgx_rules if gene in _genes_of(rule.condition)]
        drugs = tuple(dict.fromkeys(d for rule in gene_rules for d in rule.drugs))
        diplotype = facts.get(f"pgx_{gene}_diplotype")
        phenotype = facts.get(f"pgx_{gene}_phenotype")
        diplotype = None if _missing(diplotype) else str(diplotype)
        phenotype = None if _missing(phenotype) else str(phenotype)
        genotype = None
        if gene == "VKORC1" and phenotype is not None:
            known = spec["vkorc1_genotypes"].get(phenotype)
            genotype = known["genotype"] if known else phenotype
            interpretation = known["interpretation"] if known else (
                "Genotype not in the CPIC interpretation table: no interpretation given.")
            phenotype = None
        elif phenotype is None and diplotype is None:
            interpretation = "Not tested or no call: this result is missing, not normal."
        elif phenotype is None or phenotype == "Indeterminate":
            interpretation = "Indeterminate: the diplotype does not determine a phenotype; treat as unknown."
        else:
            interpretation = phenotype
        actionable = []
        for match in matches:
            # only where this gene's result made the rule match (CYP2C9 normal + VKORC1 variant: VKORC1's note)
            this_gene = any((m := GENE_FACT.match(fact)) and m.group(1) == gene for fact in match.matched_facts)
            if match.rule_id in {rule.id for rule in gene_rules} and this_gene:
                actionable.append({"drugs": list(match.drugs), "title": match.title, "action": match.action,
                                   "in_play": bool(set(match.drugs) & in_play)})
        results.append(GeneResult(gene=gene, diplotype=diplotype, phenotype=phenotype, genotype=genotype,
                                  interpretation=interpretation, drugs=drugs,
                                  guideline=spec["guidelines"].get(gene, ""), actionable=tuple(actionable)))
    return results
