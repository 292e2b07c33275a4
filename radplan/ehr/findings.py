"""Rule-based findings from clinical notes: stage, TNM, ECOG, smoking status, biomarkers.

Each finding is ``{finding, value, negated, span}`` (biomarkers add ``gene`` and
``alteration``). Negation is decided per sentence: a negation cue ("no",
"negative for", "without", "not detected", ...) in the same sentence before the
mention, or a post-cue ("... not detected", "... negative") right after it.
"""

from __future__ import annotations

import re

import pandas as pd

_PRE_NEGATION = re.compile(r"\b(?:no|not|negative for|without|absence of|absent|ruled out|denies|never)\b[^.;\n]*$", re.IGNORECASE)
_POST_NEGATION = re.compile(r"^\W{0,3}(?:\w+\W+){0,3}?(?:not detected|negative|absent|not identified|wild[- ]type|was not seen)\b", re.IGNORECASE)
_ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV", "i": "I", "ii": "II", "iii": "III", "iv": "IV"}

_STAGE = re.compile(r"\bstage\s+(?P<stage>IV|III|II|I|[1-4])(?P<sub>[ABC]\d?)?\b", re.IGNORECASE)
_TNM = re.compile(r"\b(?P<tnm>[cpy]?T(?:[0-4][a-d]?|is|x)\s*N[0-3x][a-c]?\s*M[01x][a-c]?)\b")
_ECOG = re.compile(r"\bECOG(?:\s+performance\s+status)?(?:\s+(?:PS|score|of|is|was|=|:))*\s*(?P<value>[0-4])\b", re.IGNORECASE)
_SMOKING = (
    (re.compile(r"\b(?:never smoker|never smoked|non-?smoker|has never smoked|denies (?:any )?(?:tobacco|smoking))\b", re.IGNORECASE), "never"),
    (re.compile(r"\b(?:former smoker|ex-?smoker|quit smoking|stopped smoking|(?:\d+\s+)?pack[- ]years?,? quit)\b", re.IGNORECASE), "former"),
    (re.compile(r"\b(?:current(?:ly)? smok(?:er|es|ing)|active smoker|smokes (?:\d+|one|two|a)\b|every day smoker)\b", re.IGNORECASE), "current"),
)
_GENES = r"EGFR|KRAS|NRAS|BRAF|ALK|ROS1|RET|MET|HER2|ERBB2|NTRK[123]?|PIK3CA|BRCA[12]|PD-?L1|MSI|TP53"
_ALTERATION = (
    r"exon\s+\d+\s+(?:deletion|insertion|skipping|mutation)|[A-Z]\d{2,4}(?:[A-Z*]|fs|del)\b|"
    r"rearrangement|fusion|amplification|mutation|overexpression|positive|negative|(?:IHC\s+)?[0-3]\+|"
    r"TPS\s*(?:of\s*)?[<>]?\s*\d{1,3}\s*%|\d{1,3}\s*%|MSI-H|MSS|high|low"
)
_BIOMARKER = re.compile(
    rf"\b(?P<gene>{_GENES})\b(?:\s+(?:gene|status|testing|expression|was|is|shows|showed|:))*\s*(?P<alteration>{_ALTERATION})?",
    re.IGNORECASE,
)


def _is_negated(text: str, start: int, end: int) -> bool:
    sentence_start = max(text.rfind(c, 0, start) for c in ".\n;") + 1
    before = text[sentence_start:start]
    after = re.split(r"[.;\n]", text[end : end + 60], maxsplit=1)[0]
    return bool(_PRE_NEGATION.search(before)) or bool(_POST_NEGATION.search(after))


def extract_note_findings(text: str) -> list[dict]:
    """All findings in ``text``, in order of appearance."""
    findings: list[dict] = []
    for match in _STAGE.finditer(text):
        stage = _ROMAN[match["stage"].lower()]
        findings.append({"finding": "stage", "value": stage + (match["sub"] or "").upper(), "negated": _is_negated(text, match.start(), match.end()), "span": [match.start(), match.end()]})
    for match in _TNM.finditer(text):
        findings.append({"finding": "tnm", "value": re.sub(r"\s+", "", match["tnm"]), "negated": False, "span": [match.start(), match.end()]})
    for match in _ECOG.finditer(text):
        findings.append({"finding": "ecog", "value": int(match["value"]), "negated": False, "span": [match.start(), match.end()]})
    for pattern, status in _SMOKING:
        for match in pattern.finditer(text):
            findings.append({"finding": "smoking_status", "value": status, "negated": False, "span": [match.start(), match.end()]})
    for match in _BIOMARKER.finditer(text):
        gene = match["gene"].upper().replace("PDL1", "PD-L1")
        gene = "HER2" if gene == "ERBB2" else gene
        alteration = re.sub(r"\s+", " ", match["alteration"]).strip() if match["alteration"] else None
        negated = _is_negated(text, match.start(), match.end()) or bool(alteration and alteration.lower() in {"negative", "mss", "0+"})
        value = f"{gene} {alteration}" if alteration else gene
        findings.append(
            {"finding": "biomarker", "value": value, "gene": gene, "alteration": alteration, "negated": negated, "span": [match.start(), match.end()]}
        )
    return sorted(findings, key=lambda f: f["span"][0])


def note_findings_table(deid_notes: pd.DataFrame) -> pd.DataFrame:
    """Findings of every de-identified note, one row each: the ``note_findings`` input of
    ``clinical_features`` (patient_key, note_token, date, finding, value, negated, gene, alteration, span)."""
    rows = []
    for note in deid_notes.itertuples(index=False):
        for finding in extract_note_findings(note.text or ""):
            rows.append({"patient_key": note.patient_key, "note_token": getattr(note, "note_id_token", None), "date": note.date, **finding})
    columns = ["patient_key", "note_token", "date", "finding", "value", "negated", "gene", "alteration", "span"]
    return pd.DataFrame(rows, columns=columns)
