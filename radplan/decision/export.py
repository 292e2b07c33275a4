"""Exports of the recommendations: FHIR R4 bundle, self-contained HTML report, tables.

* ``fhir_bundle``: a collection Bundle with a pseudonymous Patient, a draft
  CarePlan (one activity per row; ``avoid`` rows as ``doNotPerform``), a
  RiskAssessment (model probabilities), DetectedIssues (PGx / interaction
  alerts) and a Provenance naming every rule id/version, the rule base and the
  model. The bundle is validated with ``fhir.resources`` R4B models (FHIR 4.3,
  wire-compatible with R4 for these resources) before it is returned.
* ``report_content``: what a clinician reads, in plain words (summary line,
  proposed therapies with evidence, estimate and rationale, alerts and
  interactions, pharmacogenomic profile, trials, what is missing, provenance).
  The HTML report and the FHIR bundle (a Composition) render this one content.
* ``render_report_html``: one HTML file, inline CSS, images as ``data:`` URIs,
  a Content-Security-Policy that forbids any network fetch, Jinja2 autoescape,
  print CSS for PDF. No JSON and no internal identifiers in its text.
* ``write_recommendation_tables`` (Parquet + CSV + data dictionary) and
  ``write_patient_documents`` (bundles and reports), both atomic; ``write_exports``
  does both. Each returns a PHI-free summary.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import uuid
from html import escape as html_escape
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import yaml
from fhir.resources.R4B.bundle import Bundle
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from radplan.decision.interactions import InteractionKnowledgeBase, check_interactions, load_interaction_kb
from radplan.decision.pgx_profile import pgx_profile
from radplan.decision.recommend import TREATMENT_ACTIONS, drugs_in_play
from radplan.decision.rules import RuleBase, load_rule_base
from radplan.errors import RadplanInputError
from radplan.lake import atomic_path, atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # matplotlib is imported by the two functions that draw (the Dagster code location imports this module)
    from matplotlib.figure import Figure

DATA_DIR = Path(__file__).with_name("data")
COLUMNS_PATH = DATA_DIR / "recommendation_columns.yaml"
REPORT_COLUMNS_PATH = DATA_DIR / "report_columns.yaml"
FEATURE_LABELS_PATH = DATA_DIR / "feature_labels.yaml"
PATIENT_KEY = re.compile(r"^p[0-9a-f]{16}$")
FHIR_NAMESPACE = uuid.UUID("6f1c9a52-3c0e-5b7e-9d8f-2a4b6c8d0e1f")  # fixed: ids are stable across runs
ACTION_LABELS = {"avoid": "Avoid", "adjust_dose": "Adjust dose", "recommend": "Recommend",
                 "consider": "Consider", "monitor": "Monitor"}
SEVERITY = {"avoid": "high", "adjust_dose": "moderate", "monitor": "low"}
CANCER_LABELS = {"nsclc": "Non-small cell lung cancer", "breast": "Breast cancer",
                 "colorectal": "Colorectal cancer", "melanoma": "Melanoma", "other": "Other cancer"}
MAX_TABLE_ROWS = 40
SEVERITY_WORDS = {"avoid": "do not combine / do not give", "adjust_dose": "change the dose", "monitor": "monitor"}
# The signed contribution first: the response model also carries the feature's own value under "value".
ATTRIBUTION_VALUE_KEYS = ("contribution", "attribution", "shap", "value")


class InvalidExportInputError(RadplanInputError):
    stage = "decision-export"


def _check_patient_key(patient_key: str) -> None:
    # also keeps file names PHI-free and free of path separators
    if not PATIENT_KEY.match(str(patient_key)):
        raise InvalidExportInputError("patient_key must be a pseudonymous key p<16 hex>")


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(FHIR_NAMESPACE, "\x00".join(parts)))


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and np.isnan(value)


# ----------------------------------------------------------------------------- FHIR


def fhir_bundle(patient_key: str, recommendations: pd.DataFrame, facts: Mapping[str, Any], *,
                rule_base: RuleBase | None = None, interaction_kb: InteractionKnowledgeBase | None = None,
                provenance: Mapping[str, Any] | None = None) -> dict:
    """FHIR R4 collection Bundle for one patient, validated with fhir.resources (R4B).

    A Composition carries the report's content section by section (the same ``report_content`` the
    HTML report renders); CarePlan, RiskAssessment, DetectedIssue and Provenance carry it as data.
    """
    _check_patient_key(patient_key)
    content = report_content(patient_key, facts, recommendations, rule_base=rule_base, interaction_kb=interaction_kb,
                             provenance=provenance)
    rows = recommendations[recommendations["patient_key"] == patient_key].sort_values("rank")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    patient_url = f"urn:uuid:{_uuid(patient_key, 'Patient')}"
    gender = {"F": "female", "M": "male"}.get(str(facts.get("sex") or "").upper(), "unknown")
    entries: list[dict[str, Any]] = [{
        "fullUrl": patient_url,
        "resource": {
            "resourceType": "Patient",
            "id": patient_url.removeprefix("urn:uuid:"),
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                   "code": "PSEUDED", "display": "pseudonymized"}]},
            "identifier": [{"system": "urn:radplan:patient-key", "value": patient_key}],
            "gender": gender,
        },
    }]
    subject = {"reference": patient_url}
    rule_base_version = _first(rows, "rule_base_version")

    activities = []
    for row in rows.itertuples():
        kind = "MedicationRequest" if json.loads(row.drugs) and row.category != "trial" else "ServiceRequest"
        activities.append({"detail": {
            "kind": kind,
            "code": {"text": row.therapy},
            "status": "not-started",
            "doNotPerform": row.action == "avoid",
            "description": f"[{ACTION_LABELS[row.action]}; rank {row.rank}; evidence {row.evidence_level}] {row.rationale}",
        }})
    careplan_url = f"urn:uuid:{_uuid(patient_key, 'CarePlan', str(rule_base_version))}"
    careplan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": careplan_url.removeprefix("urn:uuid:"),
        "status": "draft",
        "intent": "proposal",
        "title": "Decision-support treatment proposal",
        "description": "Decision support, not a diagnosis: generated by radplan from a versioned rule base; "
                       "requires clinician review.",
        "subject": subject,
        "created": now,
    }
    if activities:
        careplan["activity"] = activities
    entries.append({"fullUrl": careplan_url, "resource": careplan})

    predictions = []
    for row in rows.itertuples():
        if _missing(row.model_probability):
            continue
        interval = ""
        if not _missing(row.model_ci_low) and not _missing(row.model_ci_high):
            interval = f"; 95% interval {row.model_ci_low:.2f}-{row.model_ci_high:.2f}"
        predictions.append({
            "outcome": {"text": f"Response to {row.therapy}"},
            "probabilityDecimal": round(float(row.model_probability), 4),
            "rationale": ("Therapy-specific estimate" if row.model_scope == "therapy" else
                          "Patient-level estimate, not specific to this therapy") + interval,
        })
    targets = [careplan_url]
    if predictions:
        risk_url = f"urn:uuid:{_uuid(patient_key, 'RiskAssessment', str(rule_base_version))}"
        model_label = f"{_first(rows, 'model_name')} {_first(rows, 'model_version')}"
        entries.append({"fullUrl": risk_url, "resource": {
            "resourceType": "RiskAssessment", "id": risk_url.removeprefix("urn:uuid:"),
            "status": "preliminary", "subject": subject, "occurrenceDateTime": now,
            "method": {"text": f"radplan response model {model_label}"},
            "prediction": predictions,
        }})
        targets.append(risk_url)

    for row in rows.itertuples():
        if row.category not in ("pgx", "interaction"):
            continue
        issue_url = f"urn:uuid:{_uuid(patient_key, 'DetectedIssue', row.recommendation_id)}"
        entries.append({"fullUrl": issue_url, "resource": {
            "resourceType": "DetectedIssue", "id": issue_url.removeprefix("urn:uuid:"),
            "identifier": [{"system": "urn:radplan:recommendation-id", "value": row.recommendation_id}],
            "status": "preliminary",
            "code": {"text": "Pharmacogenomic alert" if row.category == "pgx" else "Drug-drug interaction"},
            "severity": SEVERITY.get(row.action, "low"),
            "patient": subject,
            "identifiedDateTime": now,
            "detail": f"{ACTION_LABELS[row.action]}: {row.therapy}. {row.rationale} Source: {row.guideline}",
        }})
        targets.append(issue_url)

    entities = []
    for row in rows.itertuples():
        for rule_id, version in sorted(json.loads(row.rule_versions).items()):
            source = (f"interaction knowledge base entry {rule_id} v{version}" if row.category == "interaction"
                      else f"rule {rule_id} v{version} (rule base {row.rule_base_version})")
            entities.append({"role": "source", "what": {"display": source}})
    if predictions and _first(rows, "model_name"):
        entities.append({"role": "source", "what": {"display": f"model {_first(rows, 'model_name')} {_first(rows, 'model_version')}"}})
    provenance_url = f"urn:uuid:{_uuid(patient_key, 'Provenance', str(rule_base_version))}"
    provenance: dict[str, Any] = {
        "resourceType": "Provenance", "id": provenance_url.removeprefix("urn:uuid:"),
        "target": [{"reference": t} for t in targets],
        "recorded": now,
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "assembler"}]},
                   "who": {"display": "radplan decision support"}}],
    }
    unique_entities = list({e["what"]["display"]: e for e in entities}.values())
    if unique_entities:
        provenance["entity"] = unique_entities
    entries.append({"fullUrl": provenance_url, "resource": provenance})
    composition_url = f"urn:uuid:{_uuid(patient_key, 'Composition', str(rule_base_version))}"
    entries.insert(1, {"fullUrl": composition_url, "resource": {
        "resourceType": "Composition", "id": composition_url.removeprefix("urn:uuid:"), "status": "preliminary",
        "type": {"text": "Treatment decision-support report"}, "subject": subject, "date": now,
        "author": [{"display": "radplan decision support"}], "title": "Treatment decision-support report",
        "section": _composition_sections(content),
    }})

    bundle = {
        "resourceType": "Bundle",
        "id": _uuid(patient_key, "Bundle", str(rule_base_version)),
        "identifier": {"system": "urn:radplan:recommendation-bundle", "value": f"{patient_key}-{rule_base_version}"},
        "type": "collection",
        "timestamp": now,
        "entry": entries,
    }
    validated = Bundle.model_validate(bundle)  # raises pydantic.ValidationError on any structural error
    return json.loads(validated.model_dump_json())


def _narrative(paragraphs: list[str]) -> dict:
    body = "".join(f"<p>{html_escape(p)}</p>" for p in paragraphs)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _composition_sections(content: Mapping[str, Any]) -> list[dict]:
    """The report's sections as Composition sections; empty sections are left out, as in the HTML."""
    sections = [("Summary", [content["summary_line"], f"Current medications: {content['medications']}."])]
    sections.append(("Alerts and interactions",
                     [f"{r['action_label']}: {r['therapy']}. {r['rationale']} Source: {r['source']}" for r in content["alerts"]]
                     + [f"{r['action_label']}: interaction {r['therapy']}. {r['rationale']} Source: {r['source']}"
                        for r in content["interactions"]]))
    therapies = [f"{r['action_label']}: {r['therapy']} ({r['estimate']}). {r['rationale']} Evidence {r['evidence']}."
                 for r in content["therapies"]]
    sections.append(("Proposed therapies", therapies or ([content["no_recommendation"]] if content["no_recommendation"] else [])))
    sections.append(("Clinical trial matches", [f"{r['therapy']}. {r['rationale']}" for r in content["trials"]]))
    sections.append(("Follow-up", [f"{r['therapy']}. {r['rationale']}" for r in content["follow_up"]]))
    sections.append(("Pharmacogenomic profile",
                     [f"{g['gene']} {g['result']}: {g['meaning']}" + (f" Drugs affected: {g['drugs']}." if g["drugs"] else "")
                      + "".join(f" {n}." for n in g["notes"]) + (f" Guideline: {g['guideline']}." if g["guideline"] else "")
                      for g in content["pgx_profile"]]))
    sections.append(("Missing data", content["missing_data"] + content["not_evaluated"]))
    sections.append(("Provenance", [f"{label}: {value}" for label, value in content["provenance"]]))
    return [{"title": title, "text": _narrative(paragraphs)} for title, paragraphs in sections if paragraphs]


def _first(rows: pd.DataFrame, column: str) -> Any:
    if rows.empty or column not in rows:
        return None
    value = rows[column].iloc[0]
    return None if _missing(value) else value


# ----------------------------------------------------------------------------- images


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def largest_lesion_slice(mask: np.ndarray) -> int:
    """Index along z of the axial slice with the most lesion voxels (first one on ties)."""
    areas = (np.asarray(mask) > 0).reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise InvalidExportInputError("mask has no lesion voxels")
    return int(np.argmax(areas))


def key_slice_png(image: np.ndarray, mask: np.ndarray, *, window_center: float = 40.0,
                  window_width: float = 400.0, slice_index: int | None = None) -> bytes:
    """PNG of an axial slice (z, y, x), CT-windowed, lesion contour overlaid: the slice with the largest lesion area,
    or ``slice_index`` (0-based; the dashboard's slider)."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape != mask.shape:
        raise InvalidExportInputError(f"image and mask must be 3-D arrays of the same shape, got {image.shape} and {mask.shape}")
    lesion = mask > 0
    if slice_index is None:
        z = largest_lesion_slice(lesion)
    elif 0 <= slice_index < image.shape[0]:
        z = int(slice_index)
    else:
        raise InvalidExportInputError(f"slice {slice_index} is outside the volume's {image.shape[0]} axial slices")
    area = int(lesion[z].sum())
    low, high = window_center - window_width / 2, window_center + window_width / 2
    shown = np.clip(image[z].astype(float), low, high)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6, 4.6))
    axis = figure.add_subplot()
    axis.imshow(shown, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    if area:  # a slice without lesion voxels has no outline to draw
        axis.contour(lesion[z].astype(float), levels=[0.5], colors=["#ffd400"], linewidths=1.6)
    axis.set_title(f"Axial slice {z + 1}/{image.shape[0]} - lesion area {area} px "
                   f"(window {window_center:g}/{window_width:g} HU)", fontsize=8)
    axis.set_axis_off()
    return _png(figure)


def _attribution_entries(top_attributions: Any) -> list[tuple[str, float, Any]]:
    """(feature id, signed contribution, the feature's own value or None)."""
    if isinstance(top_attributions, str):
        top_attributions = json.loads(top_attributions)
    if isinstance(top_attributions, Mapping):
        return [(str(k), float(v), None) for k, v in top_attributions.items()]
    entries = []
    for item in top_attributions or []:
        if isinstance(item, Mapping):
            value_key = next((k for k in ATTRIBUTION_VALUE_KEYS if k in item), None)
            if "feature" not in item or value_key is None:
                raise InvalidExportInputError(f"attribution entry needs 'feature' and one of {ATTRIBUTION_VALUE_KEYS}")
            shown = item.get("value") if value_key != "value" else None
            entries.append((str(item["feature"]), float(item[value_key]), shown))
        else:
            name, value = item
            entries.append((str(name), float(value), None))
    return entries


def _attribution_pairs(top_attributions: Any) -> list[tuple[str, float]]:
    return [(name, value) for name, value, _ in _attribution_entries(top_attributions)]


@lru_cache(maxsize=1)
def _feature_label_spec() -> dict:
    return yaml.safe_load(FEATURE_LABELS_PATH.read_text(encoding="utf-8"))


def feature_label(feature: str) -> str:
    """Clinician-facing name (with unit) of a model input or patient fact; never the internal id."""
    spec = _feature_label_spec()
    if feature in spec["exact"]:
        return spec["exact"][feature]
    for pattern in spec["patterns"]:
        match = re.match(pattern["regex"], feature)
        if match:
            return pattern["label"].format(**match.groupdict())
    return "other model input"


def _value_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def attribution_png(top_attributions: Any) -> bytes:
    """Bar chart of the main contributions to the estimate: human names (with the patient's value), percentage points."""
    entries = _attribution_entries(top_attributions)
    if not entries:
        raise InvalidExportInputError("no attributions to plot")
    entries = sorted(entries, key=lambda e: abs(e[1]))[-8:]
    names = []
    for feature, _, value in entries:
        shown = _value_text(value)
        names.append(feature_label(feature) + (f" = {shown}" if shown is not None else ""))
    values = [100.0 * v for _, v, _ in entries]
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 0.36 * len(entries) + 0.9))
    axis = figure.add_subplot()
    axis.barh(range(len(entries)), values, color=["#067647" if v > 0 else "#b42318" for v in values])
    axis.set_yticks(range(len(entries)), labels=names, fontsize=8)
    axis.axvline(0, color="#333333", linewidth=0.8)
    axis.set_xlabel("change in estimated response probability (percentage points)", fontsize=8)
    axis.tick_params(axis="x", labelsize=8)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)
    figure.tight_layout()
    return _png(figure)


# ----------------------------------------------------------------------------- report content


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display(value: Any) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _report_columns(frame: pd.DataFrame, kind: str) -> list[tuple[str, str]]:
    """(column, clinician header) of an upstream table worth showing (data/report_columns.yaml)."""
    spec = yaml.safe_load(REPORT_COLUMNS_PATH.read_text(encoding="utf-8"))
    by_lower = {str(c).casefold(): c for c in frame.columns}
    chosen = []
    for alternatives, label in zip(spec[kind], spec[f"{kind.rstrip('s')}_labels"]):
        found = next((by_lower[a] for a in alternatives if a in by_lower), None)
        if found is not None:
            chosen.append((found, label))
    return chosen


def _table(frame: pd.DataFrame | None, kind: str) -> dict | None:
    if frame is None or frame.empty:
        return None
    chosen = _report_columns(frame, kind)
    if not chosen:
        return None  # nothing a clinician can read without internal column names
    columns = [c for c, _ in chosen]
    # One variant can match several knowledge-base entries (drugs differ): show each shown row once.
    distinct = frame[columns].astype(str).drop_duplicates()
    shown = frame.loc[distinct.index, columns].head(MAX_TABLE_ROWS)
    return {"columns": [label for _, label in chosen],
            "rows": [[_display(v) for v in row] for row in shown.itertuples(index=False)],
            "hidden": max(0, len(distinct) - MAX_TABLE_ROWS)}


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(DATA_DIR / "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _code_version() -> str:
    try:
        from importlib.metadata import version

        return version("radplan")
    except Exception:  # noqa: BLE001 - an uninstalled checkout has no distribution metadata
        return "unknown (not installed as a package)"


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _flatten(f"{prefix} {key}".strip(), value[key], out)
    elif not _missing_list(value) and not (isinstance(value, float) and np.isnan(value)):
        out.append((prefix.replace("_", " "), _display(value)))


def _provenance(rows: pd.DataFrame, rule_base: RuleBase, kb: InteractionKnowledgeBase,
                provenance: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Readable provenance lines (label, value): code, rule base, interaction KB, model, data versions, run id."""
    lines = [("Code version", f"radplan {_code_version()}"),
             ("Rule base", f"version {rule_base.version}, released {rule_base.released}"),
             ("Interaction knowledge base", f"version {kb.version}, released {kb.released}")]
    model_name, model_version = _first(rows, "model_name"), _first(rows, "model_version")
    lines.append(("Response model", f"{model_name} version {model_version}" if model_name else "none used for this patient"))
    kb_version = _first(rows, "knowledge_base_version")
    if kb_version:
        lines.append(("Variant knowledge base", str(kb_version)))
    sources = _first(rows, "source_versions")
    if sources:
        parsed = json.loads(sources) if isinstance(sources, str) else sources
        skip = {"rule_base_version", "model_name", "model_version", "knowledge_base_version", "rule_base_sha256",
                "interaction_kb_version", "interaction_kb_sha256"}
        data_lines: list[tuple[str, str]] = []
        _flatten("", {k: v for k, v in parsed.items() if k not in skip}, data_lines)
        lines += [(f"Data: {label}", value) for label, value in data_lines]
    rules_used = {}
    for row in rows.itertuples():
        for rule_id, version in json.loads(row.rule_versions).items():
            rule = next((r for r in rule_base.rules if r.id == rule_id), None)
            entry = next((e for e in kb.interactions if e.id == rule_id), None)
            title = rule.title if rule else (f"interaction: {entry.a_label} with {entry.b_label}" if entry else "rule")
            rules_used[title] = version
    if rules_used:
        lines.append(("Rules applied", "; ".join(f"{title} (v{version})" for title, version in rules_used.items())))
    for label, value in (provenance or {}).items():
        lines.append((str(label), _display(value)))
    return lines


def _estimate_text(row: Any) -> str:
    if row.model_scope in ("therapy", "patient") and not _missing(row.model_probability):
        text = f"{row.model_probability:.0%} estimated chance of response"
        if not _missing(row.model_ci_low) and not _missing(row.model_ci_high):
            text += f" (95% interval {row.model_ci_low:.0%}–{row.model_ci_high:.0%})"
        if row.model_scope == "patient":
            text += "; patient-level estimate, the same for every therapy"
        return text
    return "No estimate: outside the model's scope"


def _no_recommendation_reason(facts: Mapping[str, Any], rule_base: RuleBase, not_evaluated: list[dict]) -> str:
    if _missing(facts.get("cancer_type")):
        return "No therapy is proposed: the EHR holds no cancer diagnosis for this patient, so no guideline rule applies."
    missing = sorted({feature_label(f) for item in not_evaluated for f in item["missing_facts"]} - {"other model input"})
    if facts.get("has_genomics") is False or (missing and not facts.get("actionable_alterations")):
        what = ", ".join(missing[:6]) if missing else "genomic results"
        return (f"No therapy is proposed: the rules for this cancer type need results that are missing ({what}); "
                "missing results are not negative results.")
    cancer = CANCER_LABELS.get(str(facts.get("cancer_type")), str(facts.get("cancer_type")))
    return (f"No therapy is proposed: no actionable alteration with a guideline-backed targeted therapy for "
            f"{cancer.lower()} was found, and no open trial matched the pre-screen.")


@lru_cache(maxsize=1)
def _packaged_rule_base() -> RuleBase:
    return load_rule_base()  # one parse per process: the export renders every patient with it


def report_content(patient_key: str, facts: Mapping[str, Any], recommendations: pd.DataFrame, *,
                   rule_base: RuleBase | None = None, interaction_kb: InteractionKnowledgeBase | None = None,
                   provenance: Mapping[str, Any] | None = None) -> dict:
    """Everything the report says, in plain words; the HTML report and the FHIR Composition render this."""
    _check_patient_key(patient_key)
    rule_base = rule_base or _packaged_rule_base()
    kb = interaction_kb or load_interaction_kb()
    rows = recommendations[recommendations["patient_key"] == patient_key].sort_values("rank")

    cancer = facts.get("cancer_type")
    diagnosis = CANCER_LABELS.get(str(cancer), str(cancer)) if not _missing(cancer) else "No cancer diagnosis recorded"
    parts = [diagnosis]
    parts.append(f"stage {facts['stage']}" if not _missing(facts.get("stage")) else "stage not recorded")
    parts.append(f"ECOG {int(facts['ecog'])}" if not _missing(facts.get("ecog")) else "ECOG not recorded")
    alterations = facts.get("actionable_alterations")
    if facts.get("has_genomics") is False:
        biomarkers = "no genomic results"
    elif _missing_list(alterations):
        biomarkers = "biomarkers not available"
    else:
        biomarkers = ", ".join(map(str, alterations)) or "no actionable alteration found"
    summary_line = ", ".join(parts) + f"; key biomarkers: {biomarkers}."
    medications = facts.get("current_medications")
    medications = [] if _missing_list(medications) else [str(m) for m in medications]

    therapies, trials_, alerts, interactions, follow_up = [], [], [], [], []
    for row in rows.itertuples():
        level = rule_base.evidence_levels.get(row.evidence_level, {})
        item = {"therapy": row.therapy, "action": row.action, "action_label": ACTION_LABELS[row.action],
                "evidence": f"{row.evidence_level}: {level.get('meaning', '')}".rstrip(": "),
                "rationale": row.rationale, "source": row.guideline}
        if row.category == "trial":
            trials_.append(item)
        elif row.category == "interaction":
            interactions.append({**item, "is_alert": bool(row.is_alert), "what_to_do": SEVERITY_WORDS[row.action]})
        elif row.is_alert:
            alerts.append(item)
        elif row.action in TREATMENT_ACTIONS:
            therapies.append({**item, "estimate": _estimate_text(row)})
        else:
            follow_up.append(item)
    not_evaluated = json.loads(rows["rules_not_evaluated"].iloc[0]) if not rows.empty else []
    check = check_interactions(medications, [], kb)
    in_play = drugs_in_play(facts, rows, kb)
    profile = []
    if facts.get("has_genomics") is not False:
        for gene in pgx_profile(facts, rule_base, in_play):
            if not gene.called and facts.get("has_genomics") is not True:
                continue  # no genotype delivered: the missing-data section says so once
            notes = []
            for actionable in gene.actionable:
                drugs = ", ".join(actionable["drugs"])
                notes.append(f"{actionable['title']} — alert shown above" if actionable["in_play"]
                             else f"Would change prescribing of {drugs} (not taken or proposed now): {actionable['title']}")
            # A gene the delivered genotype leaves undetermined (a defining position missing or not called) is listed
            # as such: missing, never read as normal.
            profile.append({"gene": gene.gene, "result": gene.genotype or gene.diplotype or "not determined",
                            "meaning": gene.interpretation, "drugs": ", ".join(gene.drugs), "guideline": gene.guideline,
                            "notes": notes})
    missing_data = []
    if facts.get("has_imaging") is False:
        missing_data.append("No imaging for this patient: no key slice, no radiomic features.")
    if facts.get("has_genomics") is False:
        missing_data.append("No genomic data for this patient: biomarker rules and the pharmacogenomic profile could not be evaluated.")
    if facts.get("has_ehr") is False:
        missing_data.append("No EHR data for this patient: diagnosis, stage, ECOG and medications are unknown.")
    if check.unknown_medications:
        missing_data.append("Not in the interaction knowledge base, so their interactions were not checked: "
                            + ", ".join(check.unknown_medications) + ".")
    not_evaluated_text = []
    for item in not_evaluated:
        names = sorted({feature_label(f) if feature_label(f) != "other model input" else "a required result"
                        for f in item["missing_facts"]})
        not_evaluated_text.append(f"{item['title']}: needs {', '.join(names)}.")
    return {
        "patient_key": patient_key,
        "summary_line": summary_line,
        "stratum": None if _missing(facts.get("stratum")) else facts.get("stratum"),
        "medications": ", ".join(medications) if medications else "none recorded",
        "therapies": therapies,
        "no_recommendation": None if therapies or trials_ else _no_recommendation_reason(facts, rule_base, not_evaluated),
        "alerts": alerts,
        "interactions": interactions,
        "pgx_profile": profile,
        "trials": trials_,
        "follow_up": follow_up,
        "missing_data": missing_data,
        "not_evaluated": not_evaluated_text,
        "provenance": _provenance(rows, rule_base, kb, provenance),
    }


def render_report_html(
    patient_key: str,
    facts: Mapping[str, Any],
    recommendations: pd.DataFrame,
    *,
    key_slice_png: bytes | None,
    attribution_png: bytes | None,
    variants: pd.DataFrame | None,
    pgx: pd.DataFrame | None = None,
    radiomics_highlights: dict | None = None,
    rule_base: RuleBase | None = None,
    interaction_kb: InteractionKnowledgeBase | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """Self-contained HTML report for one patient (opens offline; everything escaped; prints to PDF).

    ``pgx`` (the upstream phenotype table) is accepted for compatibility; the pharmacogenomic profile is
    built from the patient's facts so the report and the FHIR bundle say the same.
    """
    content = report_content(patient_key, facts, recommendations, rule_base=rule_base, interaction_kb=interaction_kb,
                             provenance=provenance)
    radiomics = [(feature_label(str(k)), _display(v)) for k, v in (radiomics_highlights or {}).items()
                 if not _missing(v) and feature_label(str(k)) != "other model input"]
    return _environment().get_template("report.html.j2").render(
        content=content,
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        key_slice_uri=_data_uri(key_slice_png),
        attribution_uri=_data_uri(attribution_png),
        radiomics=radiomics,
        variants=_table(variants, "variants"),
    )


def _missing_list(value: Any) -> bool:
    return value is None or (not isinstance(value, (list, tuple, np.ndarray)) and _missing(value))


# ----------------------------------------------------------------------------- files


def columns_markdown() -> str:
    spec = yaml.safe_load(COLUMNS_PATH.read_text(encoding="utf-8"))
    lines = [f"# recommendations.parquet / recommendations.csv (data dictionary v{spec['version']})", "",
             "One row per candidate therapy per patient. JSON columns hold JSON text.", "",
             "| column | type | description |", "|---|---|---|"]
    lines += [f"| `{name}` | {col['type']} | {col['description']} |" for name, col in spec["columns"].items()]
    return "\n".join(lines) + "\n"


def write_recommendation_tables(recommendations: pd.DataFrame, exports_dir: Path) -> dict:
    """Write the cohort's recommendations table (Parquet, CSV) and its data dictionary atomically; PHI-free summary."""
    exports_dir = Path(exports_dir)
    spec = yaml.safe_load(COLUMNS_PATH.read_text(encoding="utf-8"))
    expected = list(spec["columns"])
    if list(recommendations.columns) != expected:
        raise InvalidExportInputError("recommendations columns differ from the data dictionary "
                                      f"(missing {sorted(set(expected) - set(recommendations.columns))}, "
                                      f"extra {sorted(set(recommendations.columns) - set(expected))})")
    for key in recommendations["patient_key"].unique():
        _check_patient_key(key)
    with atomic_path(exports_dir / "recommendations.parquet") as tmp:
        recommendations.to_parquet(tmp, index=False)
    with atomic_path(exports_dir / "recommendations.csv") as tmp:
        recommendations.to_csv(tmp, index=False)
    atomic_write_text(exports_dir / "COLUMNS.md", columns_markdown())
    atomic_write_json(exports_dir / "columns.json", spec)
    return {
        "recommendation_rows": int(len(recommendations)),
        "patients": int(recommendations["patient_key"].nunique()),
        "alerts": int(recommendations["is_alert"].sum()),
        "actions": {k: int(v) for k, v in recommendations["action"].value_counts().sort_index().items()},
        "bytes": {name: (exports_dir / name).stat().st_size
                  for name in ("recommendations.parquet", "recommendations.csv", "COLUMNS.md", "columns.json")},
    }


def write_patient_documents(bundles: dict[str, dict], reports: dict[str, str], exports_dir: Path) -> dict:
    """Write patients' FHIR bundles (``fhir/<key>.json``) and HTML reports (``reports/<key>.html``) atomically."""
    exports_dir = Path(exports_dir)
    for key in (*bundles, *reports):
        _check_patient_key(key)
    fhir_bytes = sum(atomic_write_json(exports_dir / "fhir" / f"{key}.json", bundle).stat().st_size
                     for key, bundle in sorted(bundles.items()))
    report_bytes = sum(atomic_write_text(exports_dir / "reports" / f"{key}.html", html).stat().st_size
                       for key, html in sorted(reports.items()))
    return {"fhir_bundles": len(bundles), "reports": len(reports), "bytes": {"fhir": fhir_bytes, "reports": report_bytes}}


def write_exports(recommendations: pd.DataFrame, bundles: dict[str, dict], reports: dict[str, str],
                  exports_dir: Path) -> dict:
    """Write tables, data dictionary, FHIR bundles and HTML reports atomically; return a PHI-free summary."""
    for key in (*bundles, *reports):
        _check_patient_key(key)  # before anything is written
    tables = write_recommendation_tables(recommendations, exports_dir)
    documents = write_patient_documents(bundles, reports, exports_dir)
    return {**tables, **documents, "bytes": {**tables["bytes"], **documents["bytes"]}}
