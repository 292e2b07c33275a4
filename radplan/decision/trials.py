"""Clinical-trial catalogue (ClinicalTrials.gov records) and patient-to-trial matching.

Reads both formats ClinicalTrials.gov has published: the legacy study XML
(``<clinical_study>``) and the API v2 JSON (``protocolSection``). Eligibility
text is split into inclusion and exclusion criteria (one entry per bullet or
numbered item) and scanned for biomarker mentions with patterns kept in
``data/trial_matching.yaml``. A mention is classified as *required* (inclusion),
*required absent* (inclusion with a negation such as "absence of EGFR ...") or
*excluded* (exclusion section).

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from radplan.errors import RadplanInputError

MATCHING_CONFIG_PATH = Path(__file__).with_name("data") / "trial_matching.yaml"
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
    biomarker: str
    fact: str | None
    requirement: str  # "required" | "required_absent" | "excluded"
    criterion: str  # the eligibility item the mention came from


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

    def as_dict(self) -> dict[str, Any]:
        return {"nct_id": self.nct_id, "title": self.title, "phase": self.phase,
                "overall_status": self.overall_status, "is_open": self.is_open,
                "reasons": list(self.reasons), "unchecked": list(self.unchecked)}


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
    return Trial(
        nct_id=nct_id,
        title=_text(root, "brief_title") or _text(root, "official_title"),
        phase=_text(root, "phase") or "N/A",
        overall_status=_text(root, "overall_status"),
        conditions=tuple(" ".join(c.text.split()) for c in root.findall("condition") if c.text),
        interventions=tuple(_text(i, "intervention_name") for i in root.findall("intervention")),
        min_age_years=parse_age_years(_text(eligibility, "minimum_age")),
        max_age_years=parse_age_years(_text(eligibility, "maximum_age")),
        sex=sex if sex in ("FEMALE", "MALE") else "ALL",
        inclusion_criteria=inclusion,
        exclusion_criteria=exclusion,
        biomarker_mentions=find_biomarker_mentions(inclusion, exclusion),
        ecog_max=find_ecog_max(inclusion),
        requires_prior_therapy=find_prior_therapy_requirement(inclusion),
        keywords=tuple(" ".join(k.text.split()) for k in root.findall("keyword") if k.text),
        source_format="ctgov_xml",
        source_file=path.name,
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
    return Trial(
        nct_id=nct_id,
        title=ident.get("briefTitle") or ident.get("officialTitle", ""),
        phase="/".join(_V2_PHASES.get(p, p) for p in phases) or "N/A",
        overall_status=status.replace("_", " ").capitalize(),
        conditions=tuple(conditions_module.get("conditions", [])),
        interventions=tuple(i.get("name", "") for i in protocol.get("armsInterventionsModule", {}).get("interventions", [])),
        min_age_years=parse_age_years(eligibility.get("minimumAge")),
        max_age_years=parse_age_years(eligibility.get("maximumAge")),
        sex=eligibility.get("sex", "ALL").upper() if eligibility.get("sex", "ALL").upper() in ("FEMALE", "MALE") else "ALL",
        inclusion_criteria=inclusion,
        exclusion_criteria=exclusion,
        biomarker_mentions=find_biomarker_mentions(inclusion, exclusion),
        ecog_max=find_ecog_max(inclusion),
        requires_prior_therapy=find_prior_therapy_requirement(inclusion),
        keywords=tuple(conditions_module.get("keywords", [])),
        source_format="ctgov_json_v2",
        source_file=path.name,
    )


def load_trial_catalog(paths: Iterable[Path]) -> list[Trial]:
    """Parse trial records; a directory is searched for ``*.xml`` and ``*.json`` files.

    Files with other suffixes are skipped (a landing folder may hold a README).

    Raises :class:`InvalidTrialRecordError` for a record that cannot be read.
    The catalogue is sorted by NCT id; duplicate NCT ids keep the first record.
    """
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


def screen_trial(facts: Mapping[str, Any], trial: Trial) -> tuple[bool, list[str], list[str], list[str]]:
    """Return (candidate, reasons matched, reasons excluded, criteria not checked)."""
    cfg = _config()
    reasons: list[str] = []
    excluded: list[str] = []
    unchecked: list[str] = []
    condition_text = " | ".join((*trial.conditions, *trial.keywords, trial.title))

    cancer_type = facts.get("cancer_type")
    if not _present(cancer_type):
        return False, reasons, ["cancer type unknown"], ["cancer type"]
    patterns = cfg["_cancer"].get(str(cancer_type).casefold(), [])
    hits = [c for c in (*trial.conditions, trial.title) if any(p.search(c) for p in patterns)]
    if not hits:
        return False, reasons, [f"conditions {list(trial.conditions)} do not match cancer type {cancer_type}"], unchecked
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
    return not excluded, reasons, excluded, unchecked


# Clinician words for the cancer-type codes in reasons (reasons end up in reports).
CANCER_WORDS = {"nsclc": "non-small cell lung cancer", "breast": "breast cancer", "colorectal": "colorectal cancer",
                "melanoma": "melanoma", "other": "cancer"}


def match_trials(facts: Mapping[str, Any], trials: Iterable[Trial]) -> list[TrialMatch]:
    """Trials the patient may fit, best first (open trials first, then more matched, fewer unchecked criteria)."""
    matches: list[TrialMatch] = []
    for trial in trials:
        candidate, reasons, _, unchecked = screen_trial(facts, trial)
        if candidate:
            matches.append(TrialMatch(trial.nct_id, trial.title, trial.phase, trial.overall_status, trial.is_open,
                                      tuple(reasons), tuple(unchecked), score=len(reasons) - 0.5 * len(unchecked)))
    return sorted(matches, key=lambda m: (not m.is_open, -m.score, m.nct_id))
