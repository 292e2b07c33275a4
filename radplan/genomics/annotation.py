"""Parse functional annotations carried in VCF INFO: VEP ``CSQ``, SnpEff ``ANN`` and legacy SnpEff ``EFF``.

Each parser turns one record's INFO value into candidate transcript annotations
per ALT allele, and :func:`pick_annotation` chooses one per allele with a fixed,
documented rule so the output is deterministic:

1. an entry VEP flagged ``PICK=1`` wins outright;
2. otherwise the highest IMPACT (HIGH > MODERATE > LOW > MODIFIER);
3. then the canonical transcript (VEP ``CANONICAL=YES``);
4. then the most severe Sequence Ontology consequence (Ensembl ranking,
   ``data/consequence_severity.yaml``; SnpEff legacy names are mapped to SO);
5. then protein-coding biotype;
6. then the lexically smallest transcript id (the final tie-break).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import NamedTuple
from urllib.parse import unquote

import yaml

ANNOTATION_TAGS = ("CSQ", "ANN", "EFF")

# The 20 standard amino acids plus stop/unknown, for HGVS p. three- to one-letter conversion.
_AMINO_ACID_ONE_LETTER = {
    "Ala": "A", "Arg": "R", "Asn": "N", "Asp": "D", "Cys": "C", "Gln": "Q", "Glu": "E",
    "Gly": "G", "His": "H", "Ile": "I", "Leu": "L", "Lys": "K", "Met": "M", "Phe": "F",
    "Pro": "P", "Ser": "S", "Thr": "T", "Trp": "W", "Tyr": "Y", "Val": "V", "Ter": "*",
    "Sec": "U", "Pyl": "O", "Xaa": "X",
}
_THREE_LETTER = re.compile("|".join(_AMINO_ACID_ONE_LETTER))


class TranscriptAnnotation(NamedTuple):
    """One transcript-level annotation of one ALT allele (a NamedTuple: cheap to build in the hot loop)."""

    gene: str | None
    consequence: str | None
    impact: str | None
    transcript: str | None
    hgvsc: str | None
    hgvsp: str | None
    canonical: bool
    picked: bool
    biotype: str | None


@lru_cache(maxsize=1)
def _severity_tables() -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    data = yaml.safe_load(resources.files("radplan.genomics").joinpath("data/consequence_severity.yaml").read_text())
    so_rank = {term: rank for rank, term in enumerate(data["so_terms"])}
    impact_rank = {impact: rank for rank, impact in enumerate(data["impact_order"])}
    return so_rank, impact_rank, data["snpeff_legacy"]


@lru_cache(maxsize=4096)
def consequence_rank(consequence: str | None) -> int:
    """Rank of the most severe term in an ``&``/``+``-joined consequence (0 = most severe)."""
    so_rank, _, legacy = _severity_tables()
    if not consequence:
        return len(so_rank)
    ranks = [so_rank.get(legacy.get(term, term), len(so_rank)) for term in re.split(r"[&+]", consequence)]
    return min(ranks)


def short_protein_change(hgvsp: str | None) -> str | None:
    """``ENSP..:p.Leu858Arg`` -> ``p.L858R``; ``p.Glu746_Ala750del`` -> ``p.E746_A750del``; None if not p."""
    if not hgvsp:
        return None
    text = unquote(hgvsp.split(":", 1)[-1])
    if not text.startswith("p."):
        # Legacy SnpEff gives bare one-letter changes such as "L858R".
        return f"p.{text}" if re.fullmatch(r"[A-Z*]\d+[A-Z*]", text) else None
    return _THREE_LETTER.sub(lambda m: _AMINO_ACID_ONE_LETTER[m.group(0)], text)


def header_field_names(description: str, tag: str) -> list[str]:
    """Field names declared in a CSQ/ANN/EFF header Description (``Format: A|B|C``)."""
    match = re.search(r"Format:\s*'?([^'\"]+)'?", description) or re.search(r"'([^']+\|[^']+)'", description)
    if not match:
        if tag == "ANN":  # SnpEff always writes the ANN fields in this order
            return ["Allele", "Annotation", "Annotation_Impact", "Gene_Name", "Gene_ID", "Feature_Type",
                    "Feature_ID", "Transcript_BioType", "Rank", "HGVS.c", "HGVS.p"]
        raise ValueError(f"{tag} header has no 'Format:' field list")
    spec = match.group(1).strip()
    if tag == "EFF":
        # "Effect ( Effect_Impact | Functional_Class | ... [ | ERRORS | WARNINGS ] )"
        inner = spec[spec.index("(") + 1:]
        names = [n.strip(" []") for n in inner.replace(")", "").split("|")]
        return ["Effect"] + [n for n in names if n]
    return [n.strip() for n in spec.split("|")]


def vep_allele_strings(ref: str, alts: list[str]) -> list[str]:
    """The ALT spellings VEP writes in CSQ ``Allele``: a shared first base is trimmed, empty -> ``-``."""
    if all(len(a) > 0 and a[0] == ref[0] for a in alts) and any(len(a) != len(ref) for a in alts) and not any(a.startswith("<") for a in alts):
        return [a[1:] or "-" for a in alts]
    return list(alts)


class AnnotationParser:
    """Parses one annotation tag using the field order from the VCF header."""

    def __init__(self, tag: str, description: str):
        self.tag = tag
        self.fields = header_field_names(description, tag)
        self._index = {name: i for i, name in enumerate(self.fields)}

    def _get(self, parts: list[str], *names: str) -> str | None:
        for name in names:
            i = self._index.get(name)
            if i is not None and i < len(parts) and parts[i] not in ("", "."):
                return parts[i]
        return None

    def per_allele(self, value: str, ref: str, alts: list[str]) -> list[list[TranscriptAnnotation]]:
        """Candidate annotations for each ALT (same order as ``alts``)."""
        candidates: list[list[TranscriptAnnotation]] = [[] for _ in alts]
        vep_alleles = vep_allele_strings(ref, alts) if self.tag == "CSQ" else alts
        for entry in value.split(","):
            if self.tag == "EFF":
                if "(" not in entry:
                    continue
                effect, rest = entry.split("(", 1)
                parts = [effect] + rest.rstrip(")").split("|")
            else:
                parts = entry.split("|")
            annotation = self._to_annotation(parts)
            for k in self._allele_indexes(parts, alts, vep_alleles):
                candidates[k].append(annotation)
        return candidates

    def _allele_indexes(self, parts: list[str], alts: list[str], vep_alleles: list[str]) -> list[int]:
        if len(alts) == 1:
            return [0]
        allele_num = self._get(parts, "ALLELE_NUM", "Genotype_Number", "Genotype")
        if allele_num and allele_num.isdigit() and 1 <= int(allele_num) <= len(alts):
            return [int(allele_num) - 1]
        allele = self._get(parts, "Allele")
        if allele is not None:
            return [k for k, a in enumerate(vep_alleles) if a == allele] or [k for k, a in enumerate(alts) if a == allele]
        return list(range(len(alts)))  # legacy EFF without allele field: applies to every ALT

    def _to_annotation(self, parts: list[str]) -> TranscriptAnnotation:
        if self.tag == "CSQ":
            return TranscriptAnnotation(
                gene=self._get(parts, "SYMBOL", "Gene"), consequence=self._get(parts, "Consequence"),
                impact=self._get(parts, "IMPACT"), transcript=self._get(parts, "Feature"),
                hgvsc=self._get(parts, "HGVSc"), hgvsp=self._get(parts, "HGVSp"),
                canonical=self._get(parts, "CANONICAL") == "YES", picked=self._get(parts, "PICK") == "1",
                biotype=self._get(parts, "BIOTYPE"))
        if self.tag == "ANN":
            return TranscriptAnnotation(
                gene=self._get(parts, "Gene_Name"), consequence=self._get(parts, "Annotation"),
                impact=self._get(parts, "Annotation_Impact"), transcript=self._get(parts, "Feature_ID"),
                hgvsc=self._get(parts, "HGVS.c"), hgvsp=self._get(parts, "HGVS.p"),
                canonical=False, picked=False, biotype=self._get(parts, "Transcript_BioType"))
        aa_change = self._get(parts, "Amino_Acid_change", "Amino_Acid_Change")
        hgvsp, hgvsc = None, None
        if aa_change:
            for piece in aa_change.split("/"):  # SnpEff 3.5+: "p.Leu858Arg/c.2573T>G"
                if piece.startswith("c."):
                    hgvsc = piece
                else:
                    hgvsp = piece
        return TranscriptAnnotation(
            gene=self._get(parts, "Gene_Name"), consequence=self._get(parts, "Effect"),
            impact=self._get(parts, "Effect_Impact"), transcript=self._get(parts, "Transcript", "Transcript_ID"),
            hgvsc=hgvsc, hgvsp=hgvsp, canonical=False, picked=False,
            biotype=self._get(parts, "Gene_BioType", "Transcript_BioType"))


def pick_annotation(candidates: list[TranscriptAnnotation]) -> TranscriptAnnotation | None:
    """The one annotation reported for an allele (rule in the module docstring)."""
    if not candidates:
        return None
    picked = [c for c in candidates if c.picked]
    if picked:
        return picked[0]
    _, impact_rank, _ = _severity_tables()
    return min(candidates, key=lambda c: (
        impact_rank.get(c.impact or "", len(impact_rank)),
        not c.canonical,
        consequence_rank(c.consequence),
        c.biotype != "protein_coding",
        c.transcript or "\uffff",
    ))
