"""Parse functional annotations carried in VCF INFO: VEP ``CSQ``, SnpEff ``ANN`` and legacy SnpEff ``EFF``.

:meth:`AnnotationParser.pick` parses a block of records' INFO values column-wise (entries and fields split
by Arrow kernels, ranked with one numpy sort) and chooses one transcript annotation per ALT allele with a
fixed, documented rule so the output is deterministic:

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


# Per tag: output column -> header field names to try in order (the first non-empty value wins).
_COLUMN_FIELDS = {
    "CSQ": {"gene": ("SYMBOL", "Gene"), "consequence": ("Consequence",), "impact": ("IMPACT",),
            "transcript": ("Feature",), "hgvsc": ("HGVSc",), "hgvsp": ("HGVSp",), "canonical": ("CANONICAL",),
            "picked": ("PICK",), "biotype": ("BIOTYPE",), "allele_num": ("ALLELE_NUM",), "allele": ("Allele",)},
    "ANN": {"gene": ("Gene_Name",), "consequence": ("Annotation",), "impact": ("Annotation_Impact",),
            "transcript": ("Feature_ID",), "hgvsc": ("HGVS.c",), "hgvsp": ("HGVS.p",), "biotype": ("Transcript_BioType",),
            "allele_num": ("Genotype_Number",), "allele": ("Allele",)},
    "EFF": {"gene": ("Gene_Name",), "consequence": ("Effect",), "impact": ("Effect_Impact",),
            "transcript": ("Transcript", "Transcript_ID"), "aa_change": ("Amino_Acid_change", "Amino_Acid_Change"),
            "biotype": ("Gene_BioType", "Transcript_BioType"), "allele_num": ("Genotype_Number", "Genotype")},
}
PICKED_COLUMNS = ("gene", "consequence", "impact", "transcript", "hgvsc", "hgvsp")


class AnnotationParser:
    """Parses one annotation tag, column-wise, using the field order from the VCF header."""

    def __init__(self, tag: str, description: str):
        self.tag = tag
        self.fields = header_field_names(description, tag)
        self._index = {name: i for i, name in enumerate(self.fields)}

    def _column(self, parts, names: tuple[str, ...]):
        """The first of ``names`` that is non-empty, per entry (null where all are empty, ``.`` or absent)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        result = pa.nulls(len(parts), pa.large_string())
        offsets = parts.offsets.to_numpy()
        lengths = np.diff(offsets)
        for name in reversed(names):  # reversed: the first name is applied last and wins
            i = self._index.get(name)
            if i is None:
                continue
            ok = lengths > i
            values = parts.values.take(pa.array(np.where(ok, offsets[:-1] + i, 0), mask=~ok)) if len(parts.values) \
                else pa.nulls(len(parts), pa.large_string())
            values = values.cast(pa.large_string())
            usable = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(["", "."], pa.large_string()))))
            result = pc.if_else(usable, values, result)
        return result

    def pick(self, values, refs: list[str] | None = None, alts=None, alt_counts=None):
        """The picked annotation of every (record, ALT), column-wise.

        ``values``: the tag's INFO value per record (null where absent); ``alts``: the records' ALT lists;
        ``alt_counts``: ALTs per record. Returns ``(allele_rows, columns)``: positions in the records' ALTs
        flattened in order, and per :data:`PICKED_COLUMNS` an array aligned with ``allele_rows``.
        Entries are matched to ALTs by allele number, else by allele spelling (VEP trims the shared first base),
        and the rule in the module docstring picks one per ALT.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        alt_counts = np.asarray(alt_counts, dtype=np.int64)
        first_allele = np.cumsum(alt_counts) - alt_counts
        has = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool) & (alt_counts > 0)
        records = np.flatnonzero(has)
        if len(records) == 0:
            return np.zeros(0, np.int64), {c: pa.array([], pa.large_string()) for c in PICKED_COLUMNS}
        entries = pc.split_pattern(values.take(pa.array(records)).cast(pa.large_string()), ",")
        entry_record = np.repeat(records, np.diff(entries.offsets.to_numpy()))
        text = entries.values
        if self.tag == "EFF":  # Effect(Impact|Class|...): the effect becomes the first pipe-separated field
            well_formed = np.asarray(pc.match_substring(text, "(").to_numpy(zero_copy_only=False), dtype=bool)
            text = pc.replace_substring_regex(pc.replace_substring(text, "(", "|", max_replacements=1), r"\)$", "")
            text, entry_record = text.filter(pa.array(well_formed)), entry_record[well_formed]
        parts = pc.split_pattern(text, "|")
        spec = _COLUMN_FIELDS[self.tag]
        column = {name: self._column(parts, names) for name, names in spec.items()}
        if self.tag == "EFF":  # SnpEff 3.5+: "p.Leu858Arg/c.2573T>G"
            pieces = pc.split_pattern(column["aa_change"], "/")
            first, second = (_list_item(pieces, i) for i in (0, 1))
            first_c, second_c = (pc.fill_null(pc.starts_with(x, "c."), False) for x in (first, second))
            column["hgvsc"] = pc.if_else(second_c, second, pc.if_else(first_c, first, pa.scalar(None, first.type)))
            column["hgvsp"] = pc.if_else(pc.and_(pc.is_valid(second), pc.invert(second_c)), second,
                                         pc.if_else(first_c, pa.scalar(None, first.type), first))

        # ALT of each entry (0-based): single-ALT records need no matching; otherwise number, else spelling.
        n_alts = alt_counts[entry_record]
        allele_index = np.where(n_alts == 1, 0, -1)
        multi = np.flatnonzero(n_alts > 1)
        extra_rows, extra_index = [], []
        if len(multi):
            numbers = column["allele_num"].take(pa.array(multi)).to_pylist()
            spellings = column["allele"].take(pa.array(multi)).to_pylist() if "allele" in column else [None] * len(multi)
            for e, number, spelling in zip(multi, numbers, spellings):
                r = entry_record[e]
                found = self._allele_indexes(number, spelling, refs[r], alts[r])
                if found:
                    allele_index[e] = found[0]
                    extra_rows += [e] * (len(found) - 1)
                    extra_index += found[1:]
        rows = np.concatenate([np.arange(len(entry_record)), np.array(extra_rows, np.int64)])
        allele_index = np.concatenate([allele_index, np.array(extra_index, np.int64)])
        matched = allele_index >= 0
        rows, allele_index = rows[matched], allele_index[matched]
        allele_row = first_allele[entry_record[rows]] + allele_index

        # Rank (module docstring rule); lexsort's last key is the primary one.
        take = pa.array(rows)
        picked_flag = _flag(column.get("picked"), "1", rows)
        impact_rank = _ranks(column["impact"].take(take), lambda v: _severity_tables()[1].get(v, len(_severity_tables()[1])))
        not_canonical = ~_flag(column.get("canonical"), "YES", rows)
        consequence = _ranks(column["consequence"].take(take), consequence_rank)
        not_coding = ~_flag(column["biotype"], "protein_coding", rows)
        transcript = column["transcript"].take(take)
        transcript_order = _lexical_ranks(transcript)
        zero = np.zeros(len(rows), np.int64)
        keys = [np.arange(len(rows))] + [np.where(picked_flag, zero, k) for k in
                                         (transcript_order, not_coding, consequence, not_canonical, impact_rank)]
        order = np.lexsort(keys + [~picked_flag, allele_row])
        first = np.ones(len(order), bool)
        first[1:] = allele_row[order][1:] != allele_row[order][:-1]
        winners = order[first]
        chosen = pa.array(rows[winners])
        return allele_row[winners], {c: column[c].take(chosen) for c in PICKED_COLUMNS}

    def _allele_indexes(self, number: str | None, spelling: str | None, ref: str, alts: list[str]) -> list[int]:
        if number and number.isdigit() and 1 <= int(number) <= len(alts):
            return [int(number) - 1]
        if spelling is not None:
            candidates = vep_allele_strings(ref, alts) if self.tag == "CSQ" else alts
            return [k for k, a in enumerate(candidates) if a == spelling] or [k for k, a in enumerate(alts) if a == spelling]
        return list(range(len(alts)))  # legacy EFF without allele field: applies to every ALT


def _list_item(lists, i: int):
    import numpy as np
    import pyarrow as pa

    offsets = lists.offsets.to_numpy()
    ok = np.diff(offsets) > i
    if len(lists.values) == 0:
        return pa.nulls(len(lists), pa.large_string())
    return lists.values.take(pa.array(np.where(ok, offsets[:-1] + i, 0), mask=~ok)).cast(pa.large_string())


def _flag(values, expected: str, rows):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if values is None:
        return np.zeros(len(rows), bool)
    return np.asarray(pc.fill_null(pc.equal(values.take(pa.array(rows)), expected), False).to_numpy(zero_copy_only=False), dtype=bool)


def _ranks(values, rank) -> "np.ndarray":
    """``rank(value)`` per element, computed once per distinct value (``rank(None)`` for nulls)."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(values)
    table = np.array([rank(v) for v in encoded.dictionary.to_pylist()] + [rank(None)], dtype=np.int64)
    codes = encoded.indices.fill_null(len(table) - 1).to_numpy(zero_copy_only=False)
    return table[codes]


def _lexical_ranks(values) -> "np.ndarray":
    """Rank of each string in code-point order; nulls after every string (like ``"\\uffff"``)."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(values)
    words = encoded.dictionary.to_pylist()
    order = np.empty(len(words) + 1, np.int64)
    order[np.array(sorted(range(len(words)), key=words.__getitem__), dtype=np.int64)] = np.arange(len(words))
    order[len(words)] = len(words)
    return order[encoded.indices.fill_null(len(words)).to_numpy(zero_copy_only=False)]
