"""Drug-drug interaction checks against the versioned knowledge base in ``data/interactions.yaml``.

The check runs over the drugs *in play* for one patient: the current
medications from the EHR and the candidate therapies the rule base proposes.
Pairs among current medications and pairs of a current medication with a
candidate drug are checked; two candidate drugs are not (candidates are
alternatives, and the drugs of one regimen are combined by design).

Medication names arrive as lower-case ingredient names from RxNorm clinical
drug names, so a salt form ("warfarin sodium", "naproxen sodium") is matched to
its base ingredient when the base is known. A medication the knowledge base
does not know is returned in ``unknown_medications``: its interactions were not
checked, which the report says in words rather than implying "no interaction".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from radplan.decision.yaml_files import is_str_list, load_yaml_mapping

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_KB_PATH = DATA_DIR / "interactions.yaml"
SEVERITIES = ("contraindicated", "major", "moderate")
ACTIONS = ("avoid", "adjust_dose", "monitor")
ENTRY_FIELDS = ("id", "version", "a", "b", "severity", "action", "evidence", "mechanism", "management", "source")
TOP_LEVEL_FIELDS = ("kb_version", "released", "drug_classes", "reviewed_drugs", "known_without_entries", "interactions")
# Salt and ester words RxNorm keeps in ingredient names; stripped only when what remains is a known drug.
SALT_WORDS = frozenset({
    "sodium", "potassium", "calcium", "magnesium", "hydrochloride", "hcl", "dihydrochloride", "hydrobromide",
    "sulfate", "bisulfate", "bitartrate", "tartrate", "mesylate", "dimesylate", "besylate", "maleate", "citrate",
    "succinate", "fumarate", "acetate", "phosphate", "tosylate", "malate", "propionate", "monohydrate", "anhydrous",
})


class InteractionKnowledgeBaseError(ValueError):
    """The interaction file is invalid; the message names the entry and the problem."""


@dataclass(frozen=True)
class Interaction:
    id: str
    version: int
    a: tuple[str, ...]
    b: tuple[str, ...]
    a_label: str
    b_label: str
    severity: str
    action: str
    evidence: str
    mechanism: str
    management: str
    source: str


@dataclass(frozen=True)
class InteractionKnowledgeBase:
    version: str
    released: str
    drug_classes: Mapping[str, Mapping[str, Any]]
    reviewed_drugs: Mapping[str, str]
    known_drugs: frozenset[str]
    interactions: tuple[Interaction, ...]
    sha256: str


@dataclass(frozen=True)
class InteractionHit:
    """One interaction found for one patient: the entry and the two drugs that triggered it."""

    interaction: Interaction
    drug_a: str
    drug_b: str
    involves_candidate: bool

    @property
    def drugs(self) -> tuple[str, str]:
        return (self.drug_a, self.drug_b)

    def sentence(self) -> str:
        entry = self.interaction
        return (f"{self.drug_a.capitalize()} with {self.drug_b} ({entry.severity} interaction): {entry.mechanism} "
                f"{entry.management}")


@dataclass(frozen=True)
class InteractionCheck:
    hits: tuple[InteractionHit, ...]
    unknown_medications: tuple[str, ...]  # as written in the EHR
    checked_drugs: tuple[str, ...]        # normalised names that were checked


def load_interaction_kb(path: Path | None = None) -> InteractionKnowledgeBase:
    """Load and validate the interaction knowledge base (the packaged one when ``path`` is None)."""
    if path is None:
        return _packaged_kb()
    return _load(Path(path))


@lru_cache(maxsize=1)
def _packaged_kb() -> InteractionKnowledgeBase:
    return _load(DEFAULT_KB_PATH)


def _load(path: Path) -> InteractionKnowledgeBase:
    payload, raw_bytes = load_yaml_mapping(path, TOP_LEVEL_FIELDS, "interaction KB", InteractionKnowledgeBaseError)
    version = payload["kb_version"]
    if not isinstance(version, str) or not version:
        raise InteractionKnowledgeBaseError("interaction KB: kb_version must be a non-empty string")
    try:
        released = dt.date.fromisoformat(str(payload["released"])).isoformat()
    except ValueError as exc:
        raise InteractionKnowledgeBaseError(f"interaction KB: released {payload['released']!r} is not an ISO date") from exc

    classes_raw = payload["drug_classes"]
    if not isinstance(classes_raw, dict):
        raise InteractionKnowledgeBaseError("interaction KB: drug_classes must be a mapping")
    classes: dict[str, dict[str, Any]] = {}
    for name, spec in classes_raw.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("source"), str) and is_str_list(spec.get("members"))
                and spec["members"]):
            raise InteractionKnowledgeBaseError(f"drug class {name!r}: needs a 'source' and a non-empty list of 'members'")
        classes[name] = {"source": spec["source"], "members": [m.casefold() for m in spec["members"]]}

    reviewed = payload["reviewed_drugs"]
    if not isinstance(reviewed, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                 for k, v in reviewed.items()):
        raise InteractionKnowledgeBaseError("interaction KB: reviewed_drugs must map each drug to its review note")
    without_entries = payload["known_without_entries"]
    if not is_str_list(without_entries):
        raise InteractionKnowledgeBaseError("interaction KB: known_without_entries must be a list of drug names")

    entries_raw = payload["interactions"]
    if not isinstance(entries_raw, list) or not entries_raw:
        raise InteractionKnowledgeBaseError("interaction KB: 'interactions' must be a non-empty list")
    entries: list[Interaction] = []
    seen: set[str] = set()
    for index, raw in enumerate(entries_raw):
        entry = _validate_entry(raw, index, classes)
        if entry.id in seen:
            raise InteractionKnowledgeBaseError(f"interaction {entry.id!r}: duplicate id")
        seen.add(entry.id)
        entries.append(entry)

    involved = {d for e in entries for d in (*e.a, *e.b)}
    contradicted = sorted({d.casefold() for d in without_entries} & involved)
    if contradicted:
        raise InteractionKnowledgeBaseError(f"known_without_entries lists drugs an interaction involves: {contradicted}")
    known = involved | {d.casefold() for d in reviewed} | {d.casefold() for d in without_entries}
    return InteractionKnowledgeBase(
        version=version, released=released, drug_classes=classes,
        reviewed_drugs={k.casefold(): v for k, v in reviewed.items()}, known_drugs=frozenset(known),
        interactions=tuple(entries), sha256=hashlib.sha256(raw_bytes).hexdigest(),
    )


def _validate_entry(raw: Any, index: int, classes: Mapping[str, Mapping[str, Any]]) -> Interaction:
    entry_id = raw.get("id") if isinstance(raw, dict) else None
    name = repr(entry_id) if isinstance(entry_id, str) and entry_id else f"#{index}"

    def fail(problem: str) -> InteractionKnowledgeBaseError:
        return InteractionKnowledgeBaseError(f"interaction {name}: {problem}")

    if not isinstance(raw, dict):
        raise fail("must be a mapping")
    unknown = sorted(set(raw) - set(ENTRY_FIELDS))
    missing = [k for k in ENTRY_FIELDS if k not in raw]
    if unknown or missing:
        raise fail(f"unknown field(s) {unknown}, missing field(s) {missing}")
    if not re.fullmatch(r"ddi_[a-z0-9_]+", str(entry_id)):
        raise fail("id must start with ddi_ and use lower-case letters, digits and underscores")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool) or raw["version"] < 1:
        raise fail("version must be an integer >= 1")
    if raw["severity"] not in SEVERITIES:
        raise fail(f"unknown severity {raw['severity']!r} (allowed: {', '.join(SEVERITIES)})")
    if raw["action"] not in ACTIONS:
        raise fail(f"unknown action {raw['action']!r} (allowed: {', '.join(ACTIONS)})")
    for key in ("evidence", "mechanism", "management", "source"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise fail(f"{key} must be a non-empty string")
    sides = []
    for key in ("a", "b"):
        side = raw[key]
        if isinstance(side, str) and side in classes:
            sides.append((tuple(classes[side]["members"]), side.replace("_", " ")))
        elif isinstance(side, str):
            sides.append(((side.casefold(),), side.casefold()))
        elif is_str_list(side) and side:
            members = tuple(s.casefold() for s in side)
            sides.append((members, " or ".join(members)))
        else:
            raise fail(f"{key} must be a drug name, a drug class of this file, or a list of drug names")
    return Interaction(
        id=entry_id, version=raw["version"], a=sides[0][0], b=sides[1][0], a_label=sides[0][1], b_label=sides[1][1],
        severity=raw["severity"], action=raw["action"], evidence=raw["evidence"], mechanism=raw["mechanism"].strip(),
        management=raw["management"].strip(), source=raw["source"].strip(),
    )


def normalise_drug_name(name: str, kb: InteractionKnowledgeBase) -> str | None:
    """The knowledge-base name of an EHR medication (salt words dropped), or None when the KB does not know it."""
    text = re.sub(r"\s+", " ", str(name).casefold()).strip()
    if text in kb.known_drugs:
        return text
    words = text.split(" ")
    while len(words) > 1 and words[-1] in SALT_WORDS:
        words = words[:-1]
        if " ".join(words) in kb.known_drugs:
            return " ".join(words)
    return None


def check_interactions(current_medications: Iterable[str] | None, candidate_drugs: Iterable[str] | None,
                       kb: InteractionKnowledgeBase) -> InteractionCheck:
    """Interactions among the current medications and between them and the candidate drugs."""
    current: dict[str, None] = {}
    unknown: list[str] = []
    for medication in current_medications or ():
        normalised = normalise_drug_name(medication, kb)
        if normalised is None:
            if str(medication) not in unknown:
                unknown.append(str(medication))
        else:
            current.setdefault(normalised, None)
    candidates: dict[str, None] = {}
    for drug in candidate_drugs or ():
        normalised = normalise_drug_name(drug, kb) or str(drug).casefold()
        if normalised not in current:
            candidates.setdefault(normalised, None)

    hits: list[InteractionHit] = []
    seen: set[tuple[str, str, str]] = set()
    pairs = [(x, y, False) for i, x in enumerate(current) for y in list(current)[i + 1:]]
    pairs += [(x, y, True) for x in candidates for y in current]
    for x, y, involves_candidate in pairs:
        for entry in kb.interactions:
            for first, second in ((x, y), (y, x)):
                if first in entry.a and second in entry.b and first != second:
                    key = (entry.id, *sorted((first, second)))
                    if key not in seen:
                        seen.add(key)
                        hits.append(InteractionHit(entry, first, second, involves_candidate))
    hits.sort(key=lambda h: (ACTIONS.index(h.interaction.action), SEVERITIES.index(h.interaction.severity),
                             h.interaction.id, h.drugs))
    return InteractionCheck(hits=tuple(hits), unknown_medications=tuple(unknown),
                            checked_drugs=tuple([*current, *candidates]))
