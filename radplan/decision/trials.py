"""Clinical-trial catalogue (ClinicalTrials.gov records) and patient-to-trial matching.

Reads both formats ClinicalTrials.gov has published: the legacy study XML
(``<clinical_study>``) and the API v2 JSON (``protocolSection``). Eligibility
text is split into inclusion and exclusion criteria (one entry per bullet or
numbered item) and scanned for biomarker mentions with patterns kept in
``data/trial_matching.yaml``. A mention is classified as *required* (inclusion),
*required absent* (inclusion with a negation such as "absence of EGFR ...") or
*excluded* (exclusion section).

Biomarkers are also read where trials write them outside the eligibility text:
arm group labels and descriptions (basket/umbrella trials such as NCI-MATCH
assign each arm by one alteration: "Subprotocol H (BRAF V600E/R/K/D mutation)"),
interventions, conditions ("HER2-positive breast cancer") and keywords. Each
mention names the gene (HGNC symbol), the alteration as written, the
requirement, where it came from and, for arm-level ones, the arm. A patient is
matched to the specific arm(s) whose biomarker they carry.

With no catalogue folder configured, :func:`load_trial_catalog` reads the
sample records shipped in ``data/trials`` (see the README there).

Matching is conservative and explains itself: a trial is returned when its
conditions match the patient's cancer type and no checked criterion rules the
patient out; every match lists the criteria that matched and the criteria that
could not be checked (missing facts, or things the facts do not describe).
This is pre-screening for a research coordinator, not an eligibility decision.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from radplan.errors import RadplanInputError

MATCHING_CONFIG_PATH = Path(__file__).with_name("data") / "trial_matching.yaml"
SAMPLE_CATALOG_DIR = Path(__file__).with_name("data") / "trials"
OPEN_STATUSES = ("recruiting", "not yet recruiting", "enrolling by invitation", "available")

_HEADER = re.compile(
    r"^(?:key\s+)?(?P<kind>non-inclusion|inclusion|exclusion)\s+criteria(?:\s+(?:for\s+)?stage\s*\d+)?\s*:?\s*$"
    r"|^for\s+(?P<kind2>inclusion|exclusion)\b.*:\s*$",
    re.IGNORECASE,
)
_ITEM_START = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)]|[a-z][.)])\s+")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(year|month|week|day)s?\s*$", re.IGNORECASE)
_ECOG_CONTEXT = re.compile(r"ECOG|Eastern Cooperative Oncology Group", re.IGNORECASE)
_PRIOR_THERAPY = re.compile(
    r"(?:progression|recurrence|relapse)[^.;]{0,120}?(?:after|following|during)[^.;]{0,80}?"
    r"(?:prior|previous|one line|first[- ]line|platinum|chemotherapy)",
    re.IGNORECASE,
)
_ECOG_MAX = (
    re.compile(r"(?:≤|<=|=<|less than or equal to)\s*([0-4])"),
    re.compile(r"\b0\s*(?:,\s*1\s*,?\s*)?(?:or|to|-|–|and)\s*([1-4])\b"),
)


class InvalidTrialRecordError(RadplanInputError):
    stage = "trials"


@dataclass(frozen=True)
class BiomarkerMention:
    biomarker: str  # vocabulary name from trial_matching.yaml, else "<gene> <alteration>"
    fact: str | None
    requirement: str  # "required" | "required_absent" | "excluded"
    criterion: str  # the text the mention came from (eligibility item, arm description, condition ...)
    gene: str | None = None  # HGNC symbol (or family: RAS, FGFR, NTRK, BRCA) when the text names a gene
    alteration: str | None = None  # as the record writes it: "V600E/R/K/D mutation", "amplification"
    source: str = "eligibility"  # "eligibility" | "arm_group" | "intervention" | "condition" | "keyword"
    arm: str | None = None  # arm group label for arm-level biomarkers; None = whole trial

    @property
    def eligibility(self) -> str:
        """'inclusion' when the patient must have it, 'exclusion' when having it rules the patient out."""
        return "inclusion" if self.requirement == "required" else "exclusion"

    @property
    def described(self) -> str:
        return f"{self.gene} {self.alteration}" if self.gene and self.alteration else self.biomarker


@dataclass(frozen=True)
class GeneAlteration:
    gene: str  # canonical symbol
    written: str  # the spelling in the text
    alteration: str
    negated: bool  # "without RAS mutation", "HER2-negative"


@dataclass(frozen=True)
class TrialArm:
    label: str
    description: str
    interventions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trial:
    nct_id: str
    title: str
    phase: str
    overall_status: str
    conditions: tuple[str, ...]
    interventions: tuple[str, ...]
    min_age_years: float | None
    max_age_years: float | None
    sex: str  # "ALL" | "FEMALE" | "MALE"
    inclusion_criteria: tuple[str, ...]
    exclusion_criteria: tuple[str, ...]
    biomarker_mentions: tuple[BiomarkerMention, ...]
    ecog_max: int | None
    requires_prior_therapy: bool = False
    keywords: tuple[str, ...] = ()
    source_format: str = ""
    source_file: str = ""
    arms: tuple[TrialArm, ...] = ()
    arm_biomarkers: tuple[BiomarkerMention, ...] = ()  # biomarkers that assign patients to one arm

    @property
    def is_open(self) -> bool:
        return self.overall_status.casefold() in OPEN_STATUSES


@dataclass(frozen=True)
class TrialMatch:
    nct_id: str
    title: str
    phase: str
    overall_status: str
    is_open: bool
    reasons: tuple[str, ...]
    unchecked: tuple[str, ...]
    score: float = field(default=0.0)  # matched criteria minus a penalty per unchecked one
    arms: tuple[str, ...] = ()  # labels of the biomarker-assigned arms the patient fits

    def as_dict(self) -> dict[str, Any]:
        return {"nct_id": self.nct_id, "title": self.title, "phase": self.phase,
                "overall_status": self.overall_status, "is_open": self.is_open,
                "reasons": list(self.reasons), "unchecked": list(self.unchecked), "arms": list(self.arms)}


# ----------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def _config() -> dict[str, Any]:
    cfg = yaml.safe_load(MATCHING_CONFIG_PATH.read_text(encoding="utf-8"))
    flags = re.IGNORECASE
    cfg["_cancer"] = {k: [re.compile(p, flags) for p in v] for k, v in cfg["cancer_type_conditions"].items()}
    cfg["_qualifiers"] = [(re.compile(q["pattern"], flags), q["criterion"]) for q in cfg["unverifiable_condition_qualifiers"]]
    cfg["_biomarkers"] = [(name, spec["fact"], [re.compile(p, flags) for p in spec["patterns"]])
                          for name, spec in cfg["biomarkers"].items()]
    cfg["_neg_before"] = re.compile("|".join(cfg["negation_cues"]), flags)
    cfg["_neg_after"] = re.compile("|".join(cfg["negation_suffixes"]), flags)
    spellings = {written: gene for gene, forms in cfg["genes"].items() for written in forms}
    cfg["_gene_of"] = spellings
    # case-sensitive: "MET", "RET" and "Rb" are genes, "met", "ret" and "rb" are not
    cfg["_gene_re"] = re.compile(r"(?<![A-Za-z0-9-])(?:" + "|".join(
        re.escape(w) for w in sorted(spellings, key=len, reverse=True)) + r")(?![A-Za-z0-9])")
    cfg["_alteration"] = re.compile(cfg["alteration_words"], flags)
    cfg["_alteration_prefix"] = re.compile(cfg["alteration_prefix"], flags)
    cfg["_alteration_stop"] = re.compile(cfg["alteration_stop"], flags)
    cfg["_implied"] = [(re.compile(r["gene"]), re.compile(r["alteration"], flags), tuple(r["facts"]))
                       for r in cfg.get("implied_by_facts", [])]
    return cfg


def parse_age_years(text: str | None) -> float | None:
    """'18 Years' -> 18.0, '6 Months' -> 0.5; 'N/A' or empty -> None (no limit)."""
    if not text or text.strip().upper() in ("N/A", "NA", "NONE"):
        return None
    match = _AGE.match(text)
    if not match:
        raise InvalidTrialRecordError(f"unreadable age limit {text!r}")
    value, unit = float(match.group(1)), match.group(2).lower()
    return round(value / {"year": 1, "month": 12, "week": 52.1775, "day": 365.25}[unit], 3)


def split_eligibility(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split free-text eligibility into (inclusion items, exclusion items).

    Text before the first section header counts as inclusion (records such as
    "Men and women >= 18 ..." often have no header at all).
    """
    inclusion: list[str] = []
    exclusion: list[str] = []
    target = inclusion
    current: list[str] = []

    def flush() -> None:
        item = " ".join(" ".join(current).split()).replace("\\", "")
        if item:
            target.append(item)
        current.clear()

    for line in text.splitlines():
        stripped = line.strip()
        header = _HEADER.match(stripped)
        if header:
            flush()
            kind = (header.group("kind") or header.group("kind2")).lower()
            target = inclusion if kind == "inclusion" else exclusion
            continue
        if not stripped:
            flush()
            continue
        if _ITEM_START.match(line):
            flush()
            stripped = _ITEM_START.sub("", line).strip()
        current.append(stripped)
    flush()
    return tuple(inclusion), tuple(exclusion)


def find_biomarker_mentions(inclusion: Iterable[str], exclusion: Iterable[str]) -> tuple[BiomarkerMention, ...]:
    cfg = _config()
    mentions: list[BiomarkerMention] = []
    seen: set[tuple[str, str]] = set()
    for section, items in (("inclusion", inclusion), ("exclusion", exclusion)):
        for item in items:
            for name, fact, patterns in cfg["_biomarkers"]:
                hit = next((m for p in patterns if (m := p.search(item))), None)
                if hit is None:
                    continue
                if section == "exclusion":
                    requirement = "excluded"
                else:
                    negated = cfg["_neg_before"].search(item[: hit.start()]) or cfg["_neg_after"].search(item[hit.end():])
                    requirement = "required_absent" if negated else "required"
                if (name, requirement) in seen:
                    continue
                seen.add((name, requirement))
                mentions.append(BiomarkerMention(name, fact, requirement, item))
    return tuple(mentions)


_CONJUNCTION_ONLY = re.compile(r"^[\s,/]*(?:(?:or|and|and/or)[\s,]*)?$", re.IGNORECASE)
# "CCND1, 2, or 3"
_NUMBERED_SIBLINGS = re.compile(r"^(?:(?:\s*,\s*\d\b)+(?:,?\s*(?:or|and)\s*\d\b)?|\s*(?:or|and)\s*\d\b)")
_NUMBERED_RANGE = re.compile(r"^-(\d)\b")  # "FGFR1-3"
_NEGATIVE_ALTERATION = re.compile(r"\bnegative\b|\bwild[- ]?type\b", re.IGNORECASE)


def find_gene_alterations(text: str) -> list[GeneAlteration]:
    """Gene + alteration statements in one piece of trial text, in order.

    "BRAF V600E/R/K/D mutation" -> (BRAF, "V600E/R/K/D mutation"); genes joined by
    "or"/"and"/commas share the alteration written after the last one ("SMO or
    PTCH1 mutation", "NTRK1, NTRK2 or NTRK3 gene fusion", "CCND1, 2, or 3
    amplification") or before the first ("loss of MLH1 or MSH2"). A negation
    before the gene ("without RAS mutation or PTEN loss") or a negative result
    after it ("HER2-negative") marks it negated. A gene named without an
    alteration ("EGFR TKI", "BRAF inhibitor") is not returned.
    """
    cfg = _config()
    genes: list[tuple[list[tuple[str, str]], int, int]] = []  # ([(gene, written)], start, end)
    for match in cfg["_gene_re"].finditer(text):
        written, end = match.group(0), match.end()
        named = [(cfg["_gene_of"][written], written)]
        if written[-1].isdigit():
            stem = written.rstrip("0123456789")
            siblings = _NUMBERED_SIBLINGS.match(text[end:])
            span = _NUMBERED_RANGE.match(text[end:])
            if siblings:
                numbers = re.findall(r"\d+", siblings.group(0))
                end += siblings.end()
            elif span:
                numbers = [str(n) for n in range(int(written[len(stem):]) + 1, int(span.group(1)) + 1)]
                end += span.end()
            else:
                numbers = []
            named += [(cfg["_gene_of"].get(stem + n, stem + n), stem + n) for n in numbers]
        genes.append((named, match.start(), end))

    found: list[GeneAlteration] = []
    group: list[tuple[str, str]] = []
    group_negated = carried_negation = False
    previous_end = 0
    for index, (named, start, end) in enumerate(genes):
        before = text[previous_end:start]
        if group and _CONJUNCTION_ONLY.match(before):
            group += named
        else:
            # "without RAS mutation or PTEN loss": the negation carries over an "or"
            group_negated = bool(cfg["_neg_before"].search(before)) or (
                carried_negation and bool(_CONJUNCTION_ONLY.match(before)))
            group = list(named)
            group_prefix = cfg["_alteration_prefix"].search(text[max(0, start - 40):start])
        next_start = genes[index + 1][1] if index + 1 < len(genes) else len(text)
        following = text[end:next_start]
        if index + 1 < len(genes) and _CONJUNCTION_ONLY.match(following):
            previous_end = end
            continue  # the alteration is written after a later gene of this group
        stop = cfg["_alteration_stop"].search(following)
        phrase = following[: stop.start()] if stop else following
        words = list(cfg["_alteration"].finditer(phrase))
        if words:
            alteration = phrase[: words[-1].end()]
            alteration = re.sub(r"^[\s\-:]*(?:gene\s+)?", "", alteration)
        elif group_prefix:
            alteration = group_prefix.group(1).lower()
        else:
            alteration = ""
        alteration = " ".join(alteration.split())
        if alteration:
            negated = group_negated or bool(_NEGATIVE_ALTERATION.search(alteration))
            found += [GeneAlteration(gene, written, alteration, negated) for gene, written in group]
        group = []
        carried_negation = group_negated
        previous_end = end + (words[-1].end() if words else stop.start() if stop else len(following))
    return found


def _vocabulary_entry(found: GeneAlteration) -> tuple[str, str | None]:
    """The biomarker in trial_matching.yaml (and the patient fact answering it) a gene alteration is."""
    phrase = f"{found.written} {found.alteration}"
    for name, fact, patterns in _config()["_biomarkers"]:
        if any(p.search(phrase) for p in patterns):
            return name, fact
    return f"{found.gene} {found.alteration}", None


def find_text_biomarkers(text: str, source: str, arm: str | None = None,
                         section: str = "inclusion") -> list[BiomarkerMention]:
    """Gene-level biomarker mentions of one arm description, intervention, condition or keyword."""
    mentions = []
    for found in find_gene_alterations(text):
        name, fact = _vocabulary_entry(found)
        requirement = "excluded" if section == "exclusion" else "required_absent" if found.negated else "required"
        mentions.append(BiomarkerMention(name, fact, requirement, text, found.gene, found.alteration, source, arm))
    return mentions


def _with_gene(mention: BiomarkerMention) -> BiomarkerMention:
    """An eligibility mention with the gene and alteration its criterion writes, where it names one."""
    for found in find_gene_alterations(mention.criterion):
        if _vocabulary_entry(found)[0] == mention.biomarker:
            return replace(mention, gene=found.gene, alteration=found.alteration)
    return mention


def _unique(mentions: Iterable[BiomarkerMention]) -> tuple[BiomarkerMention, ...]:
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for m in mentions:
        key = (m.arm, m.gene or m.biomarker, (m.alteration or "").casefold(), m.requirement)
        if key not in seen:
            seen.add(key)
            kept.append(m)
    return tuple(kept)


def trial_biomarkers(
    inclusion: tuple[str, ...],
    exclusion: tuple[str, ...],
    conditions: tuple[str, ...],
    keywords: tuple[str, ...],
    arms: tuple[TrialArm, ...],
    interventions: Iterable[tuple[str, tuple[str, ...]]],
) -> tuple[tuple[BiomarkerMention, ...], tuple[BiomarkerMention, ...]]:
    """(trial-level mentions, arm-level mentions) from every place a record writes biomarkers.

    ``interventions`` are (name and description, arm labels it is given in); an
    intervention naming a biomarker belongs to its arms, or to the trial when it lists none.
    """
    trial_level = [_with_gene(m) for m in find_biomarker_mentions(inclusion, exclusion)]
    for condition in conditions:
        trial_level += find_text_biomarkers(condition, "condition")
    for keyword in keywords:
        trial_level += find_text_biomarkers(keyword, "keyword")
    arm_level: list[BiomarkerMention] = []
    for arm in arms:
        for text in (arm.label, arm.description):
            arm_level += find_text_biomarkers(text, "arm_group", arm.label)
    for text, labels in interventions:
        if labels:
            for label in labels:
                arm_level += find_text_biomarkers(text, "intervention", label)
        else:
            trial_level += find_text_biomarkers(text, "intervention")
    # one mention per biomarker and requirement at trial level (the first place that states it)
    by_name: dict[tuple[str, str], BiomarkerMention] = {}
    for m in trial_level:
        by_name.setdefault((m.biomarker, m.requirement), m)
    return tuple(by_name.values()), _unique(arm_level)


def find_ecog_max(inclusion: Iterable[str]) -> int | None:
    """Highest ECOG performance status an inclusion criterion allows, if one states it."""
    for item in inclusion:
        context = _ECOG_CONTEXT.search(item)
        if not context:
            continue
        window = item[context.start(): context.start() + 160]
        for pattern in _ECOG_MAX:
            found = pattern.search(window)
            if found:
                return int(found.group(1))
    return None


def find_prior_therapy_requirement(inclusion: Iterable[str]) -> bool:
    """True when an inclusion criterion requires progression after earlier systemic therapy."""
    return any(_PRIOR_THERAPY.search(item) for item in inclusion)


def _text(element: ET.Element | None, path: str) -> str:
    found = element.find(path) if element is not None else None
    return " ".join(found.text.split()) if found is not None and found.text else ""


def _arm_labels(intervention: ET.Element) -> tuple[str, ...]:
    return tuple(" ".join(a.text.split()) for a in intervention.findall("arm_group_label") if a.text)


def parse_ctgov_xml(path: Path) -> Trial:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InvalidTrialRecordError(f"{path.name}: not well-formed XML ({exc})") from exc
    if root.tag != "clinical_study":
        raise InvalidTrialRecordError(f"{path.name}: root element is <{root.tag}>, expected <clinical_study>")
    nct_id = _text(root, "id_info/nct_id")
    if not nct_id:
        raise InvalidTrialRecordError(f"{path.name}: no nct_id")
    eligibility = root.find("eligibility")
    criteria_el = eligibility.find("criteria/textblock") if eligibility is not None else None
    criteria = criteria_el.text if criteria_el is not None and criteria_el.text else ""
    inclusion, exclusion = split_eligibility(criteria)
    sex = (_text(eligibility, "gender") or "All").upper()
    conditions = tuple(" ".join(c.text.split()) for c in root.findall("condition") if c.text)
    keywords = tuple(" ".join(k.text.split()) for k in root.findall("keyword") if k.text)
    intervention_els = root.findall("intervention")
    arms = tuple(
        TrialArm(_text(a, "arm_group_label"), _text(a, "description"),
                 tuple(_text(i, "intervention_name") for i in intervention_els
                       if _text(a, "arm_group_label") in _arm_labels(i)))
        for a in root.findall("arm_group")
    )
    trial_level, arm_level = trial_biomarkers(
        inclusion, exclusion, conditions, keywords, arms,
        ((f"{_text(i, 'intervention_name')}. {_text(i, 'description')}", _arm_labels(i)) for i in intervention_els),
    )
    return Trial(
        nct_id=nct_id,
        title=_text(root, "brief_title") or _text(root, "official_title"),
        phase=_text(root, "phase") or "N/A",
        overall_status=_text(root, "overall_status"),
        conditions=conditions,
        interventions=tuple(_text(i, "intervention_name") for i in intervention_els),
        min_age_years=parse_age_years(_text(eligibility, "minimum_age")),
        max_age_years=parse_age_years(_text(eligibility, "maximum_age")),
        sex=sex if sex in ("FEMALE", "MALE") else "ALL",
        inclusion_criteria=inclusion,
        exclusion_criteria=exclusion,
        biomarker_mentions=trial_level,
        ecog_max=find_ecog_max(inclusion),
        requires_prior_therapy=find_prior_therapy_requirement(inclusion),
        keywords=keywords,
        source_format="ctgov_xml",
        source_file=path.name,
        arms=arms,
        arm_biomarkers=arm_level,
    )


_V2_PHASES = {"EARLY_PHASE1": "Early Phase 1", "PHASE1": "Phase 1", "PHASE2": "Phase 2",
              "PHASE3": "Phase 3", "PHASE4": "Phase 4", "NA": "N/A"}


def parse_ctgov_json_v2(path: Path) -> Trial:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        protocol = payload["protocolSection"]
        nct_id = protocol["identificationModule"]["nctId"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidTrialRecordError(f"{path.name}: not a ClinicalTrials.gov API v2 study ({exc.__class__.__name__})") from exc
    ident = protocol["identificationModule"]
    eligibility = protocol.get("eligibilityModule", {})
    inclusion, exclusion = split_eligibility(eligibility.get("eligibilityCriteria", ""))
    phases = protocol.get("designModule", {}).get("phases") or []
    status = protocol.get("statusModule", {}).get("overallStatus", "")
    conditions_module = protocol.get("conditionsModule", {})
    conditions = tuple(conditions_module.get("conditions", []))
    keywords = tuple(conditions_module.get("keywords", []))
    arms_module = protocol.get("armsInterventionsModule", {})
    interventions = arms_module.get("interventions", [])
    arms = tuple(
        TrialArm(" ".join(a.get("label", "").split()), " ".join(a.get("description", "").split()),
                 tuple(i.get("name", "") for i in interventions if a.get("label") in (i.get("armGroupLabels") or [])))
        for a in arms_module.get("armGroups", [])
    )
    trial_level, arm_level = trial_biomarkers(
        inclusion, exclusion, conditions, keywords, arms,
        ((f"{i.get('name', '')}. {i.get('description', '')}",
          tuple(" ".join(x.split()) for x in i.get("armGroupLabels") or [])) for i in interventions),
    )
    return Trial(
        nct_id=nct_id,
        title=ident.get("briefTitle") or ident.get("officialTitle", ""),
        phase="/".join(_V2_PHASES.get(p, p) for p in phases) or "N/A",
        overall_status=status.replace("_", " ").capitalize(),
        conditions=conditions,
        interventions=tuple(i.get("name", "") for i in interventions),
        min_age_years=parse_age_years(eligibility.get("minimumAge")),
        max_age_years=parse_age_years(eligibility.get("maximumAge")),
        sex=eligibility.get("sex", "ALL").upper() if eligibility.get("sex", "ALL").upper() in ("FEMALE", "MALE") else "ALL",
        inclusion_criteria=inclusion,
        exclusion_criteria=exclusion,
        biomarker_mentions=trial_level,
        ecog_max=find_ecog_max(inclusion),
        requires_prior_therapy=find_prior_therapy_requirement(inclusion),
        keywords=keywords,
        source_format="ctgov_json_v2",
        source_file=path.name,
        arms=arms,
        arm_biomarkers=arm_level,
    )


def load_trial_catalog(paths: Iterable[Path]) -> list[Trial]:
    """Parse trial records; a directory is searched for ``*.xml`` and ``*.json`` files.

    Files with other suffixes are skipped (a landing folder may hold a README).
    No paths at all (no catalogue folder configured) reads the sample shipped in
    ``data/trials`` (:data:`SAMPLE_CATALOG_DIR`), so matching works from a bare clone.

    Raises :class:`InvalidTrialRecordError` for a record that cannot be read.
    The catalogue is sorted by NCT id; duplicate NCT ids keep the first record.
    """
    paths = list(paths) or [SAMPLE_CATALOG_DIR]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in (".xml", ".json")))
        elif path.suffix.lower() in (".xml", ".json"):
            files.append(path)
        # other files (README, licences) are not trial records and are skipped
    trials: dict[str, Trial] = {}
    for file in files:
        trial = parse_ctgov_xml(file) if file.suffix.lower() == ".xml" else parse_ctgov_json_v2(file)
        trials.setdefault(trial.nct_id, trial)
    return [trials[k] for k in sorted(trials)]


def catalog_version(trials: list[Trial]) -> str:
    """Identifies a catalogue by its records' ids and content (recorded beside every recommendation)."""
    import hashlib

    digest = hashlib.sha256("\n".join(f"{t.nct_id}:{t.overall_status}:{t.title}" for t in trials).encode()).hexdigest()[:12]
    return f"{len(trials)}-trials-{digest}"


# ----------------------------------------------------------------------------- matching


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not (value != value)  # NaN / pd.NA are not equal to themselves
    except TypeError:  # pd.NA comparison
        return False


def _has(facts: Mapping[str, Any], mention: BiomarkerMention) -> bool | None:
    """True/False from the patient's results; None when radplan holds no such fact or the result is missing."""
    if mention.fact is None:
        for gene, alteration, implying in _config()["_implied"]:
            if (mention.gene and mention.alteration and gene.search(mention.gene)
                    and alteration.search(mention.alteration)
                    and any(_present(facts.get(f)) and bool(facts.get(f)) for f in implying)):
                return True
        return None
    if not _present(facts.get(mention.fact)):
        return None
    return bool(facts.get(mention.fact))


def screen_arms(facts: Mapping[str, Any], trial: Trial) -> tuple[list[str], list[str], list[str], list[str]]:
    """Biomarker-assigned arms (basket/umbrella trials): (arms the patient fits, reasons, excluded, unchecked).

    An arm fits when the patient carries one of its required biomarkers (an
    arm's biomarkers are alternatives: "SMO or PTCH1 mutation") and none of its
    excluded ones ("without RAS mutation"). A trial whose arms are all assigned by
    biomarker is excluded when no arm fits and none is waiting on a missing
    result; arms needing a biomarker radplan's patient data does not hold cannot
    be offered and are counted in the reason.
    """
    fits: list[str] = []
    reasons: list[str] = []
    unchecked: list[str] = []
    waiting: list[str] = []  # required biomarkers whose result is missing
    not_held: list[str] = []  # arms whose biomarkers radplan's facts do not describe
    assigned = [arm for arm in trial.arms
                if any(m.arm == arm.label and m.requirement == "required" for m in trial.arm_biomarkers)]
    for arm in assigned:
        mine = [m for m in trial.arm_biomarkers if m.arm == arm.label]
        required = [m for m in mine if m.requirement == "required"]
        ruled_out = [m for m in mine if m.requirement != "required" and _has(facts, m)]
        carried = [m for m in required if _has(facts, m)]
        if ruled_out:
            continue
        if carried:
            fits.append(arm.label)
            reasons.append(f"arm '{arm.label}' requires {carried[0].described} ({carried[0].biomarker}): "
                           "patient present")
            unchecked.extend(f"arm '{arm.label}' excludes {m.described} "
                             f"({'not in the patient data radplan holds' if m.fact is None else 'result missing'})"
                             for m in mine if m.requirement != "required" and _has(facts, m) is None)
        elif any(m.fact is not None and _has(facts, m) is None for m in required):
            waiting.extend(m.biomarker for m in required if m.fact is not None and _has(facts, m) is None)
        elif all(m.fact is None for m in required):
            not_held.append(arm.label)
    excluded: list[str] = []
    if assigned and not fits:
        if waiting:
            unchecked.append("biomarker-assigned arms (result missing: " + ", ".join(sorted(set(waiting))) + ")")
        else:
            excluded.append(f"no biomarker-assigned arm fits: the patient's results rule out "
                            f"{len(assigned) - len(not_held)} arm(s); {len(not_held)} arm(s) need biomarkers "
                            "not in the patient data radplan holds")
    return fits, reasons, excluded, unchecked


def screen_trial(facts: Mapping[str, Any], trial: Trial) -> tuple[bool, list[str], list[str], list[str]]:
    """Return (candidate, reasons matched, reasons excluded, criteria not checked)."""
    candidate, reasons, excluded, unchecked, _ = _screen(facts, trial)
    return candidate, reasons, excluded, unchecked


def _screen(facts: Mapping[str, Any], trial: Trial) -> tuple[bool, list[str], list[str], list[str], list[str]]:
    cfg = _config()
    reasons: list[str] = []
    excluded: list[str] = []
    unchecked: list[str] = []
    condition_text = " | ".join((*trial.conditions, *trial.keywords, trial.title))

    cancer_type = facts.get("cancer_type")
    if not _present(cancer_type):
        return False, reasons, ["cancer type unknown"], ["cancer type"], []
    patterns = cfg["_cancer"].get(str(cancer_type).casefold(), [])
    hits = [c for c in (*trial.conditions, trial.title) if any(p.search(c) for p in patterns)]
    if not hits:
        mismatch = f"conditions {list(trial.conditions)} do not match cancer type {cancer_type}"
        return False, reasons, [mismatch], unchecked, []
    reasons.append(f"condition '{hits[0]}' matches the patient's {CANCER_WORDS.get(str(cancer_type).casefold(), str(cancer_type))}")
    unchecked.extend(criterion for pattern, criterion in cfg["_qualifiers"] if pattern.search(condition_text))

    age = facts.get("age_years")
    if not _present(age):
        unchecked.append("age")
    else:
        low = trial.min_age_years if trial.min_age_years is not None else 0
        high = trial.max_age_years if trial.max_age_years is not None else float("inf")
        if low <= float(age) <= high:
            allowed = f"{low:g}+ years" if high == float("inf") else f"{low:g}-{high:g} years"
            reasons.append(f"age {float(age):g} within {allowed}")
        else:
            excluded.append(f"age {float(age):g} outside {low:g}-{high:g} years")

    sex = facts.get("sex")
    if trial.sex != "ALL":
        if not _present(sex):
            unchecked.append(f"sex ({trial.sex.lower()} only)")
        elif str(sex).upper()[:1] == trial.sex[:1]:
            reasons.append(f"sex {sex} allowed")
        else:
            excluded.append(f"trial enrols {trial.sex.lower()} patients only")

    if trial.ecog_max is not None:
        ecog = facts.get("ecog")
        if not _present(ecog):
            unchecked.append(f"ECOG performance status (must be <= {trial.ecog_max})")
        elif int(ecog) <= trial.ecog_max:
            reasons.append(f"ECOG {int(ecog)} <= {trial.ecog_max}")
        else:
            excluded.append(f"ECOG {int(ecog)} above the allowed {trial.ecog_max}")

    if trial.requires_prior_therapy:
        lines = facts.get("prior_lines_of_therapy")
        if not _present(lines):
            unchecked.append("progression after prior systemic therapy (number of prior lines missing)")
        elif int(lines) >= 1:
            reasons.append(f"requires prior systemic therapy: patient had {int(lines)} prior line(s)")
        else:
            excluded.append("requires progression after prior systemic therapy: patient has no prior lines")

    for mention in trial.biomarker_mentions:
        wording = {"required": "requires", "required_absent": "requires absence of", "excluded": "excludes"}[mention.requirement]
        label = f"{wording} {mention.biomarker}"
        value = facts.get(mention.fact) if mention.fact else None
        if mention.fact is None or not _present(value):
            unchecked.append(f"{label} ({'not in the patient data radplan holds' if mention.fact is None else 'result missing'})")
            continue
        has = bool(value)
        fits = has if mention.requirement == "required" else not has
        status = "present" if has else "absent"
        (reasons if fits else excluded).append(f"{label}: patient {status}")

    arms, arm_reasons, arm_excluded, arm_unchecked = screen_arms(facts, trial)
    reasons.extend(arm_reasons)
    excluded.extend(arm_excluded)
    unchecked.extend(arm_unchecked)
    return not excluded, reasons, excluded, unchecked, arms


# Clinician words for the cancer-type codes in reasons (reasons end up in reports).
CANCER_WORDS = {"nsclc": "non-small cell lung cancer", "breast": "breast cancer", "colorectal": "colorectal cancer",
                "melanoma": "melanoma", "other": "cancer"}


def match_trials(facts: Mapping[str, Any], trials: Iterable[Trial]) -> list[TrialMatch]:
    """Trials the patient may fit, best first (open trials first, then more matched, fewer unchecked criteria)."""
    matches: list[TrialMatch] = []
    for trial in trials:
        candidate, reasons, _, unchecked, arms = _screen(facts, trial)
        if candidate:
            matches.append(TrialMatch(trial.nct_id, trial.title, trial.phase, trial.overall_status, trial.is_open,
                                      tuple(reasons), tuple(unchecked), score=len(reasons) - 0.5 * len(unchecked),
                                      arms=tuple(arms)))
    return sorted(matches, key=lambda m: (not m.is_open, -m.score, m.nct_id))
