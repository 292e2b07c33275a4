"""Versioned clinical rule base and a small, transparent rule engine.

Rules live in ``data/rules.yaml`` (see its header for the condition language).
A condition is a tree of ``all`` / ``any`` / ``not`` nodes over predicates such
as ``{fact: cancer_type, eq: nsclc}``; nothing is ever passed to ``eval``.
Facts are the columns of the ``patient_features`` table, listed with their
types in ``data/fact_schema.yaml``; the loader rejects unknown fields, facts,
operators, drug classes and type mismatches, naming the rule.

Evaluation is three-valued: a predicate on a missing fact (absent, None, NaN)
is *unknown*, not false. ``all`` is false if any child is false, ``any`` is true
if any child is true, ``not`` keeps unknown. A rule whose condition ends up
unknown is returned with ``status="could_not_evaluate"`` and the missing facts,
so a missing test result is visible instead of silently meaning "no".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from radplan.decision.interactions import load_interaction_kb
from radplan.decision.yaml_files import YAML_LOADER, is_str_list, load_yaml_mapping
from radplan.errors import RadplanInputError

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_RULES_PATH = DATA_DIR / "rules.yaml"
FACT_SCHEMA_PATH = DATA_DIR / "fact_schema.yaml"

ACTIONS = ("avoid", "adjust_dose", "recommend", "consider", "monitor")
CATEGORIES = ("targeted_therapy", "pgx", "interaction", "follow_up")
RULE_FIELDS = ("id", "version", "title", "category", "condition", "action", "therapy", "drugs",
               "evidence_level", "guideline", "rationale_template")
TOP_LEVEL_FIELDS = ("rule_base_version", "released", "evidence_levels", "rules")
FACT_TYPES = ("bool", "str", "int", "float", "list")

# operator -> fact types it applies to
OPERATOR_FACT_TYPES: dict[str, tuple[str, ...]] = {
    "eq": ("str", "int", "float"),
    "ne": ("str", "int", "float"),
    "in": ("str", "int", "float"),
    "not_in": ("str", "int", "float"),
    "is": ("bool",),
    "lt": ("int", "float"),
    "lte": ("int", "float"),
    "gt": ("int", "float"),
    "gte": ("int", "float"),
    "contains": ("list",),
    "contains_any": ("list",),
}
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class RuleBaseError(ValueError):
    """The rule file is invalid; the message names the rule and the problem."""


class FactTypeError(RadplanInputError):
    """A patient fact has a type the fact schema does not allow (a contract violation upstream)."""

    stage = "decision-facts"


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    title: str
    category: str
    condition: Mapping[str, Any]
    action: str
    therapy: str
    drugs: tuple[str, ...]
    evidence_level: str
    guideline: str
    rationale_template: str


@dataclass(frozen=True)
class RuleBase:
    version: str
    released: str
    rules: tuple[Rule, ...]
    evidence_levels: Mapping[str, Mapping[str, Any]]
    drug_classes: Mapping[str, Mapping[str, Any]]
    fact_types: Mapping[str, str]
    sha256: str

    def evidence_rank(self, level: str) -> int:
        return int(self.evidence_levels[level]["rank"])


@dataclass(frozen=True)
class RuleMatch:
    """One rule's outcome for one patient: matched, or could not be evaluated."""

    rule_id: str
    rule_version: int
    action: str
    therapy: str
    evidence_level: str
    guideline: str
    matched_facts: dict[str, Any]
    rationale: str
    status: str = "matched"  # "matched" | "could_not_evaluate"
    missing_facts: tuple[str, ...] = ()
    category: str = ""
    drugs: tuple[str, ...] = field(default_factory=tuple)
    title: str = ""

    @property
    def matched(self) -> bool:
        return self.status == "matched"


# ----------------------------------------------------------------------------- loading


def load_fact_schema(path: Path = FACT_SCHEMA_PATH) -> dict[str, str]:
    payload = yaml.load(path.read_bytes(), Loader=YAML_LOADER)
    facts = payload.get("facts") if isinstance(payload, dict) else None
    if not isinstance(facts, dict) or any(t not in FACT_TYPES for t in facts.values()):
        raise RuleBaseError(f"fact schema {path.name}: 'facts' must map names to one of {FACT_TYPES}")
    return dict(facts)


def load_rule_base(path: Path | None = None) -> RuleBase:
    """Load and validate the rule base (the packaged one when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    payload, raw_bytes = load_yaml_mapping(path, TOP_LEVEL_FIELDS, "rule base", RuleBaseError)
    version = payload["rule_base_version"]
    if not isinstance(version, str) or not version:
        raise RuleBaseError("rule base: rule_base_version must be a non-empty string")
    released = payload["released"]
    try:
        released = dt.date.fromisoformat(str(released)).isoformat()
    except ValueError as exc:
        raise RuleBaseError(f"rule base: released {released!r} is not an ISO date") from exc

    evidence_levels = payload["evidence_levels"]
    if not isinstance(evidence_levels, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("rank"), int) and isinstance(v.get("meaning"), str)
        for v in evidence_levels.values()
    ):
        raise RuleBaseError("rule base: each evidence level needs an integer 'rank' and a 'meaning'")
    # One list of drug-class members: the interaction knowledge base's (contains_any may name a class).
    drug_classes = {name: dict(spec) for name, spec in load_interaction_kb().drug_classes.items()}

    fact_types = load_fact_schema()
    rules_raw = payload["rules"]
    if not isinstance(rules_raw, list) or not rules_raw:
        raise RuleBaseError("rule base: 'rules' must be a non-empty list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(rules_raw):
        rule = _validate_rule(raw, index, fact_types, evidence_levels, drug_classes)
        if rule.id in seen:
            raise RuleBaseError(f"rule {rule.id!r}: duplicate rule id")
        seen.add(rule.id)
        rules.append(rule)
    return RuleBase(
        version=version, released=released, rules=tuple(rules), evidence_levels=evidence_levels,
        drug_classes=drug_classes, fact_types=fact_types, sha256=hashlib.sha256(raw_bytes).hexdigest(),
    )


def _validate_rule(raw: Any, index: int, fact_types: Mapping[str, str], evidence_levels: Mapping,
                   drug_classes: Mapping) -> Rule:
    rule_id = raw.get("id") if isinstance(raw, dict) else None
    name = repr(rule_id) if isinstance(rule_id, str) and rule_id else f"#{index}"

    def fail(problem: str) -> RuleBaseError:
        return RuleBaseError(f"rule {name}: {problem}")

    if not isinstance(raw, dict):
        raise fail("must be a mapping")
    unknown = sorted(set(raw) - set(RULE_FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {unknown}")
    missing = [k for k in RULE_FIELDS if k not in raw]
    if missing:
        raise fail(f"missing field(s) {missing}")
    if not re.fullmatch(r"[a-z0-9_]+", str(rule_id)):
        raise fail("id must be lower-case letters, digits and underscores")
    if not isinstance(raw["version"], int) or isinstance(raw["version"], bool) or raw["version"] < 1:
        raise fail("version must be an integer >= 1")
    for key in ("title", "therapy", "guideline", "rationale_template"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise fail(f"{key} must be a non-empty string")
    if raw["action"] not in ACTIONS:
        raise fail(f"unknown action {raw['action']!r} (allowed: {', '.join(ACTIONS)})")
    if raw["category"] not in CATEGORIES:
        raise fail(f"unknown category {raw['category']!r} (allowed: {', '.join(CATEGORIES)})")
    if str(raw["evidence_level"]) not in evidence_levels:
        raise fail(f"unknown evidence_level {raw['evidence_level']!r}")
    if not is_str_list(raw["drugs"]):
        raise fail("drugs must be a list of ingredient names")
    try:
        _validate_condition(raw["condition"], "condition", fact_types, drug_classes)
    except RuleBaseError as exc:
        raise fail(str(exc)) from None
    required = _required_facts(raw["condition"])
    for placeholder in PLACEHOLDER.findall(raw["rationale_template"]):
        if placeholder not in required:
            raise fail(f"rationale placeholder {{{placeholder}}} is not a fact that every match depends on "
                       f"(allowed: {sorted(required)})")
    return Rule(
        id=rule_id, version=raw["version"], title=raw["title"], category=raw["category"],
        condition=raw["condition"], action=raw["action"], therapy=raw["therapy"],
        drugs=tuple(d.casefold() for d in raw["drugs"]), evidence_level=str(raw["evidence_level"]),
        guideline=raw["guideline"], rationale_template=raw["rationale_template"],
    )


def _validate_condition(node: Any, where: str, fact_types: Mapping[str, str], drug_classes: Mapping) -> None:
    if not isinstance(node, dict):
        raise RuleBaseError(f"{where} must be a mapping")
    if set(node) <= {"all", "any"} and len(node) == 1:
        key = next(iter(node))
        children = node[key]
        if not isinstance(children, list) or not children:
            raise RuleBaseError(f"{where}.{key} must be a non-empty list")
        for i, child in enumerate(children):
            _validate_condition(child, f"{where}.{key}[{i}]", fact_types, drug_classes)
        return
    if set(node) == {"not"}:
        _validate_condition(node["not"], f"{where}.not", fact_types, drug_classes)
        return
    if "fact" not in node:
        raise RuleBaseError(f"{where}: expected all/any/not or a predicate with 'fact', got keys {sorted(node)}")
    fact = node["fact"]
    if fact not in fact_types:
        raise RuleBaseError(f"{where}: unknown fact {fact!r} (not in the patient_features contract)")
    operators = [k for k in node if k != "fact"]
    if len(operators) != 1:
        raise RuleBaseError(f"{where}: a predicate needs exactly one operator, got {operators}")
    op = operators[0]
    if op not in OPERATOR_FACT_TYPES:
        raise RuleBaseError(f"{where}: unknown operator {op!r} (allowed: {', '.join(OPERATOR_FACT_TYPES)})")
    fact_type = fact_types[fact]
    if fact_type not in OPERATOR_FACT_TYPES[op]:
        raise RuleBaseError(f"{where}: operator {op!r} does not apply to {fact_type} fact {fact!r}")
    value = node[op]
    if op == "is":
        ok = isinstance(value, bool)
    elif op in ("lt", "lte", "gt", "gte"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif op in ("eq", "ne"):
        ok = _scalar_matches_type(value, fact_type)
    elif op in ("in", "not_in"):
        ok = isinstance(value, list) and bool(value) and all(_scalar_matches_type(v, fact_type) for v in value)
    elif op == "contains":
        ok = isinstance(value, str)
    else:  # contains_any: a list of strings or a drug-class name
        if isinstance(value, str):
            if value not in drug_classes:
                raise RuleBaseError(f"{where}: unknown drug class {value!r}")
            ok = True
        else:
            ok = is_str_list(value) and bool(value)
    if not ok:
        raise RuleBaseError(f"{where}: bad value {value!r} for operator {op!r} on {fact_type} fact {fact!r}")


def _scalar_matches_type(value: Any, fact_type: str) -> bool:
    if isinstance(value, bool):
        return False
    if fact_type == "str":
        return isinstance(value, str)
    return isinstance(value, (int, float))


def _required_facts(node: Mapping[str, Any]) -> set[str]:
    """Facts on every path to a match: the root predicate and ``all`` children, not ``any``/``not``."""
    if "fact" in node:
        return {node["fact"]}
    if "all" in node:
        return set().union(*(_required_facts(child) for child in node["all"]))
    return set()


# ----------------------------------------------------------------------------- evaluation


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _coerce(fact: str, value: Any, fact_type: str) -> Any:
    """Normalise a fact to the schema type (numpy scalars/arrays from Parquet included)."""
    if fact_type == "list":
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise FactTypeError(f"fact {fact!r} must be a list of strings, got {type(value).__name__}")
        return [str(v).casefold() for v in value]
    if fact_type == "bool":
        if type(value).__name__ in ("bool", "bool_"):
            return bool(value)
        raise FactTypeError(f"fact {fact!r} must be a boolean, got {type(value).__name__}")
    if fact_type in ("int", "float"):
        if type(value).__name__ in ("bool", "bool_") or not hasattr(value, "__float__") or isinstance(value, str):
            raise FactTypeError(f"fact {fact!r} must be numeric, got {type(value).__name__}")
        return float(value)
    if not isinstance(value, str):
        raise FactTypeError(f"fact {fact!r} must be a string, got {type(value).__name__}")
    return value


def _evaluate(node: Mapping[str, Any], facts: Mapping[str, Any], rule_base: RuleBase):
    """Return (state, matched facts, missing facts); state is True, False or None (unknown)."""
    if "all" in node:
        results = [_evaluate(child, facts, rule_base) for child in node["all"]]
        if any(state is False for state, _, _ in results):
            return False, {}, set()
        missing = set().union(*(m for _, _, m in results))
        if missing:
            return None, {}, missing
        return True, _merge(m for _, m, _ in results), set()
    if "any" in node:
        results = [_evaluate(child, facts, rule_base) for child in node["any"]]
        true_results = [m for state, m, _ in results if state is True]
        if true_results:
            return True, _merge(true_results), set()
        missing = set().union(*(m for _, _, m in results))
        return (None, {}, missing) if missing else (False, {}, set())
    if "not" in node:
        state, _, missing = _evaluate(node["not"], facts, rule_base)
        if state is None:
            return None, {}, missing
        # the facts that made the inner condition false are what make "not" true
        fact_names = _all_facts(node["not"])
        return (not state), ({f: facts.get(f) for f in fact_names} if not state else {}), set()
    return _evaluate_predicate(node, facts, rule_base)


def _evaluate_predicate(node: Mapping[str, Any], facts: Mapping[str, Any], rule_base: RuleBase):
    fact = node["fact"]
    op = next(k for k in node if k != "fact")
    expected = node[op]
    raw = facts.get(fact)
    if _is_missing(raw):
        return None, {}, {fact}
    fact_type = rule_base.fact_types[fact]
    value = _coerce(fact, raw, fact_type)
    shown: Any = raw if fact_type != "list" else list(raw)
    if op == "is":
        state = value is expected
    elif op in ("eq", "ne"):
        equal = (value.casefold() == expected.casefold()) if fact_type == "str" else value == float(expected)
        state = equal if op == "eq" else not equal
    elif op in ("in", "not_in"):
        if fact_type == "str":
            inside = value.casefold() in {v.casefold() for v in expected}
        else:
            inside = value in {float(v) for v in expected}
        state = inside if op == "in" else not inside
    elif op in ("lt", "lte", "gt", "gte"):
        state = {"lt": value < expected, "lte": value <= expected,
                 "gt": value > expected, "gte": value >= expected}[op]
    elif op == "contains":
        state = expected.casefold() in value
        shown = [expected.casefold()]
    else:
        wanted = rule_base.drug_classes[expected]["members"] if isinstance(expected, str) else expected
        hits = [item for item in value if item in {w.casefold() for w in wanted}]
        state = bool(hits)
        shown = hits
    if isinstance(shown, float) or hasattr(shown, "item"):
        shown = _plain(shown)
    return bool(state), ({fact: shown} if state else {}), set()


def _plain(value: Any) -> Any:
    """numpy scalar -> Python scalar, for JSON-friendly matched facts."""
    return value.item() if hasattr(value, "item") else value


def _merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for fact, value in part.items():
            if isinstance(value, list) and isinstance(merged.get(fact), list):
                merged[fact] = merged[fact] + [v for v in value if v not in merged[fact]]
            else:
                merged[fact] = value
    return merged


def _all_facts(node: Mapping[str, Any]) -> set[str]:
    if "fact" in node:
        return {node["fact"]}
    children = node.get("all") or node.get("any") or [node["not"]]
    return set().union(*(_all_facts(child) for child in children))


def format_fact_value(value: Any) -> str:
    """Human-readable fact value for rationale sentences."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_fact_value(v) for v in value)
    return str(value)


def render_rationale(template: str, matched_facts: Mapping[str, Any]) -> str:
    return PLACEHOLDER.sub(lambda m: format_fact_value(matched_facts[m.group(1)]), template)


def evaluate_rules(facts: Mapping[str, Any], rule_base: RuleBase) -> list[RuleMatch]:
    """Evaluate every rule; return the matches and the rules that could not be evaluated.

    Rules that evaluate to false are not returned. Unknown fact names in
    ``facts`` are ignored (the table may carry more columns than rules use).
    """
    outcomes: list[RuleMatch] = []
    for rule in rule_base.rules:
        state, matched, missing = _evaluate(rule.condition, facts, rule_base)
        if state is False:
            continue
        common = dict(rule_id=rule.id, rule_version=rule.version, action=rule.action, therapy=rule.therapy,
                      evidence_level=rule.evidence_level, guideline=rule.guideline, category=rule.category,
                      drugs=rule.drugs, title=rule.title)
        if state is None:
            outcomes.append(RuleMatch(**common, matched_facts={}, rationale="", status="could_not_evaluate",
                                      missing_facts=tuple(sorted(missing))))
        else:
            outcomes.append(RuleMatch(**common, matched_facts=matched,
                                      rationale=render_rationale(rule.rationale_template, matched)))
    return outcomes
