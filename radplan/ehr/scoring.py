"""Recall/precision of the note de-identifier, reusable by tests and benchmarks.

Two references:

* Synthea FHIR notes: the true PHI values of each note are known from its
  Patient (given/family names, birth date, address line, city, ZIP) and from the
  note's own date. Every occurrence of such a value in the text is a PHI
  occurrence; it counts as caught when detected spans cover it completely.
  Precision is the share of detected spans that overlap a known PHI occurrence:
  a lower bound, as spans on other real PHI (a clinician's name) count as false.
* Presidio-research generated sentences with gold spans: per-entity precision and
  recall, with spans matched either exactly (same start and end) or by overlap
  (any shared character), and a compatible type.
"""

from __future__ import annotations

import base64
import re
import time
from collections import defaultdict
from collections.abc import Iterable

from radplan.ehr.dates import date_spellings
from radplan.ehr.notes import NoteDeidentifier

# Gold entity types of presidio-research -> our placeholder types that count as a hit.
GOLD_TYPE_MATCHES: dict[str, set[str]] = {
    "PERSON": {"NAME"},
    "ADDRESS": {"ADDRESS", "LOCATION"},
    "LOCATION": {"LOCATION", "ADDRESS"},
    "PHONE_NUMBER": {"PHONE"},
    "DATE_TIME": {"DATE"},
    "EMAIL_ADDRESS": {"EMAIL"},
    "US_SSN": {"SSN"},
    "IP_ADDRESS": {"IP"},
    "CREDIT_CARD": {"ACCOUNT"},
    "US_DRIVER_LICENSE": {"ID"},
    "DOMAIN_NAME": {"URL"},
}
# Gold types that are not Safe Harbor identifiers: neither scored nor held against precision.
UNSCORED_GOLD_TYPES = {"ORGANIZATION", "TITLE"}


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score_generated_spans(records: list[dict], deidentifier: NoteDeidentifier) -> dict:
    """Per-entity span precision/recall on presidio-research style records (exact and overlap)."""
    recall_hits = {"exact": defaultdict(int), "overlap": defaultdict(int)}
    gold_counts: dict[str, int] = defaultdict(int)
    precision_hits = {"exact": defaultdict(int), "overlap": defaultdict(int)}
    predicted_counts: dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for record in records:
        text = record["full_text"]
        predicted = [(e["start"], e["end"], e["type"]) for e in deidentifier.deidentify(text, None, None).entities]
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record["spans"]]
        for g_start, g_end, g_type in gold:
            if g_type in UNSCORED_GOLD_TYPES:
                continue
            gold_counts[g_type] += 1
            allowed = GOLD_TYPE_MATCHES.get(g_type, set())
            candidates = [p for p in predicted if p[2] in allowed]
            if any(p[0] == g_start and p[1] == g_end for p in candidates):
                recall_hits["exact"][g_type] += 1
            if any(_overlaps((p[0], p[1]), (g_start, g_end)) for p in candidates):
                recall_hits["overlap"][g_type] += 1
        for p_start, p_end, p_type in predicted:
            if any(g[2] in UNSCORED_GOLD_TYPES and _overlaps((p_start, p_end), (g[0], g[1])) for g in gold):
                continue
            predicted_counts[p_type] += 1
            compatible = [g for g in gold if p_type in GOLD_TYPE_MATCHES.get(g[2], set())]
            if any(g[0] == p_start and g[1] == p_end for g in compatible):
                precision_hits["exact"][p_type] += 1
            if any(_overlaps((p_start, p_end), (g[0], g[1])) for g in compatible):
                precision_hits["overlap"][p_type] += 1
    elapsed = time.perf_counter() - started
    result: dict = {"records": len(records), "seconds": elapsed, "notes_per_second": len(records) / elapsed if elapsed else None}
    for mode in ("exact", "overlap"):
        result[mode] = {
            "recall": {t: _ratio(recall_hits[mode][t], n) for t, n in sorted(gold_counts.items())},
            "precision": {t: _ratio(precision_hits[mode][t], n) for t, n in sorted(predicted_counts.items())},
            "micro_recall": _ratio(sum(recall_hits[mode].values()), sum(gold_counts.values())),
            "micro_precision": _ratio(sum(precision_hits[mode].values()), sum(predicted_counts.values())),
        }
    result["gold_counts"] = dict(sorted(gold_counts.items()))
    result["predicted_counts"] = dict(sorted(predicted_counts.items()))
    return result


def document_text(document) -> str:
    """The text/plain attachment of a fhir.resources DocumentReference, decoded."""
    for content in document.content or []:
        attachment = content.attachment
        if attachment.data and (attachment.contentType or "text/plain").startswith("text/"):
            raw = attachment.data if isinstance(attachment.data, bytes) else base64.b64decode(attachment.data)
            # fhir.resources keeps base64Binary as the encoded bytes.
            try:
                return base64.b64decode(raw, validate=True).decode("utf-8")
            except ValueError:
                return raw.decode("utf-8")
    return ""


def known_phi_values(patient, note_date) -> dict[str, list[str]]:
    """The PHI values of one Synthea note, by category, from its Patient and its own date."""
    names: list[str] = []
    for human_name in patient.name or []:
        names += list(human_name.given or []) + ([human_name.family] if human_name.family else [])
    addresses: list[str] = []
    for address in patient.address or []:
        addresses += [v for v in list(address.line or []) + [address.city, address.postalCode] if v]
    dates = date_spellings(note_date) if note_date else []
    if patient.birthDate:
        dates += date_spellings(patient.birthDate)
    return {"names": sorted(set(names)), "dates": sorted(set(dates)), "addresses": sorted(set(addresses))}


def _occurrences(text: str, value: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text)]


def score_synthea_notes(
    documents: Iterable, patients: dict, deidentifier: NoteDeidentifier, pseudonymizer=None
) -> dict:
    """Recall per PHI category and a lower-bound precision on Synthea DocumentReference notes.

    ``patients`` maps Patient id -> fhir.resources Patient. With a pseudonymizer the
    patient's deny lists and date shift are applied, as in the pipeline.
    """
    from radplan.ehr.identifiers import patient_identifiers

    found: dict[str, int] = defaultdict(int)
    caught: dict[str, int] = defaultdict(int)
    leaked: dict[str, int] = defaultdict(int)
    detected_total = detected_on_phi = notes = 0
    started = time.perf_counter()
    for document in documents:
        patient = patients[document.subject.reference.split("/")[-1]]
        text = document_text(document)
        note_date = document.date.date() if document.date else None
        identifiers = patient_identifiers(patient) if pseudonymizer is not None else None
        shift = pseudonymizer.date_shift_days(patient.id) if pseudonymizer is not None else None
        result = deidentifier.deidentify(text, identifiers, shift)
        notes += 1
        spans = [(e["start"], e["end"]) for e in result.entities]
        phi_spans: list[tuple[int, int]] = []
        for category, values in known_phi_values(patient, note_date).items():
            for value in values:
                for start, end in _occurrences(text, value):
                    found[category] += 1
                    phi_spans.append((start, end))
                    covered = set()
                    for s_start, s_end in spans:
                        covered.update(range(max(s_start, start), min(s_end, end)))
                    if len(covered) == end - start:
                        caught[category] += 1
                if _occurrences(result.text, value):
                    leaked[category] += 1
        detected_total += len(spans)
        detected_on_phi += sum(1 for span in spans if any(_overlaps(span, phi) for phi in phi_spans))
    elapsed = time.perf_counter() - started
    return {
        "notes": notes,
        "seconds": elapsed,
        "notes_per_second": notes / elapsed if elapsed else None,
        "occurrences": dict(found),
        "recall": {category: _ratio(caught[category], n) for category, n in found.items()},
        "notes_with_leaked_value": dict(leaked),
        "precision_lower_bound": _ratio(detected_on_phi, detected_total),
        "detected_spans": detected_total,
    }


_TOKEN = re.compile(r"\w+")


def score_gold_notes(records: list[dict], detect) -> dict:
    """Per-entity recall and precision, span and token level, on records with gold spans.

    ``records``: ``{"text", "spans": [{"type", "start", "end"}]}`` (note_eval_set.py); a gold type of
    None marks text that is neither required nor held against precision (an organisation's name).
    ``detect(text)`` returns ``[(start, end, type)]``. A gold span counts as found (overlap) when any
    detection overlaps it and (exact) when one has the same bounds, whatever its type: masked is masked.
    Span precision: the share of detections that overlap a gold span. Token level: every ``\\w+`` token
    inside a gold span is a PHI token of that type; a token is masked when a detection overlaps it.
    """
    gold_n: dict[str, int] = defaultdict(int)
    found = {"overlap": defaultdict(int), "exact": defaultdict(int)}
    predicted_n: dict[str, int] = defaultdict(int)
    predicted_ok: dict[str, int] = defaultdict(int)
    token_gold: dict[str, int] = defaultdict(int)
    token_masked: dict[str, int] = defaultdict(int)
    token_predicted = token_predicted_ok = 0
    started = time.perf_counter()
    for record in records:
        text, gold = record["text"], record["spans"]
        predicted = detect(text)
        for span in gold:
            if span["type"] is None:
                continue
            gold_n[span["type"]] += 1
            bounds = (span["start"], span["end"])
            if any(_overlaps((p[0], p[1]), bounds) for p in predicted):
                found["overlap"][span["type"]] += 1
            if any((p[0], p[1]) == bounds for p in predicted):
                found["exact"][span["type"]] += 1
        for start, end, kind in predicted:
            touched = [g for g in gold if _overlaps((start, end), (g["start"], g["end"]))]
            if touched and all(g["type"] is None for g in touched):
                continue
            predicted_n[kind] += 1
            predicted_ok[kind] += bool(touched)
        for token in _TOKEN.finditer(text):
            bounds = (token.start(), token.end())
            types = [g["type"] for g in gold if _overlaps(bounds, (g["start"], g["end"]))]
            masked = any(_overlaps(bounds, (p[0], p[1])) for p in predicted)
            if types and all(t is None for t in types):
                continue
            if types:
                token_gold[types[0]] += 1
                token_masked[types[0]] += masked
            if masked:
                token_predicted += 1
                token_predicted_ok += bool(types)
    elapsed = time.perf_counter() - started
    total_gold = sum(gold_n.values())
    return {
        "notes": len(records),
        "seconds": round(elapsed, 2),
        "gold_spans": dict(sorted(gold_n.items())),
        "span": {
            "recall": {t: _ratio(found["overlap"][t], n) for t, n in sorted(gold_n.items())},
            "exact_recall": {t: _ratio(found["exact"][t], n) for t, n in sorted(gold_n.items())},
            "precision": {t: _ratio(predicted_ok[t], n) for t, n in sorted(predicted_n.items())},
            "all_phi_recall": _ratio(sum(found["overlap"].values()), total_gold),
            "all_phi_exact_recall": _ratio(sum(found["exact"].values()), total_gold),
            "precision_all": _ratio(sum(predicted_ok.values()), sum(predicted_n.values())),
        },
        "token": {
            "recall": {t: _ratio(token_masked[t], n) for t, n in sorted(token_gold.items())},
            "all_phi_recall": _ratio(sum(token_masked.values()), sum(token_gold.values())),
            "precision_all": _ratio(token_predicted_ok, token_predicted),
        },
    }
