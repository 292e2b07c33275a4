"""Note de-identification quality: radplan vs plain Presidio (same spaCy model), measured in one run.

Three scored sets, kept separate:
* ``independent``: notes built by radplan/ehr/note_eval_set.py from Synthea's CSV export in shared/data
  (names, addresses, cities, phones the recognizers were not written against) with gold spans;
* ``independent_held_out``: the same values in templates written late (see note_eval_set.HELD_OUT_TEMPLATES);
* ``presidio_research``: shared/data/notes/presidio_generated_small.json, gold spans by Microsoft;
* ``generator``: radplan.synth's own notes (the text the first recognizers were written against).

Engines: ``radplan`` (all detectors), ``radplan_without_lexicons`` (Presidio patterns + spaCy + the
allow list: what the Philter/GeoNames/context layer adds) and ``presidio`` (a default AnalyzerEngine,
all its recognizers, the same spaCy model). No patient deny lists: an unseen note has none.

    python benchmarks/bench_notes.py

Writes benchmarks/results/notes_deid.json.
"""

from __future__ import annotations

import json
import sys
import time

from _common import QUICK, REPO, RESULTS_DIR, result_row

from radplan.ehr.note_eval_set import generator_notes, independent_notes, presidio_research_notes  # noqa: E402
from radplan.ehr.notes import DEFAULT_SPACY_MODEL, NoteDeidentifier  # noqa: E402
from radplan.ehr.scoring import score_gold_notes  # noqa: E402
from radplan.lake import atomic_write_json  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RESULT = RESULTS_DIR / "notes_deid.json"
TARGETS = {"person_recall": 0.95, "all_phi_recall": 0.95, "precision": 0.70}


def _radplan_detector(use_lexicons: bool):
    deidentifier = NoteDeidentifier(use_lexicons=use_lexicons)

    def detect(text: str):
        return [(e["start"], e["end"], e["type"]) for e in deidentifier.deidentify(text, None, None).entities]

    return detect


def _presidio_detector():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from radplan.ehr.notes import _use_bundled_public_suffix_list

    _use_bundled_public_suffix_list()
    nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": DEFAULT_SPACY_MODEL}]})
    analyzer = AnalyzerEngine(nlp_engine=nlp.create_engine(), supported_languages=["en"])

    def detect(text: str):
        return [(r.start, r.end, r.entity_type) for r in analyzer.analyze(text=text, language="en")]

    return detect


def _megabyte_note_seconds(records: list[dict]) -> dict:
    """Wall and CPU seconds to de-identify one note of about 1 MB (the independent notes back to back)."""
    text = ""
    while len(text) < 1_000_000:
        text += "\n\n".join(r["text"] for r in records) + "\n\n"
    deidentifier = NoteDeidentifier()
    wall, cpu = time.perf_counter(), time.process_time()
    result = deidentifier.deidentify(text, None, None)
    return {"characters": len(text), "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "entities": len(result.entities)}


def main() -> int:
    started = time.perf_counter()
    sets = {
        "independent": independent_notes(SHARED / "ehr" / "synthea_csv", count=36 if QUICK else 240),
        "independent_held_out": independent_notes(SHARED / "ehr" / "synthea_csv", count=18 if QUICK else 120, held_out=True),
        "presidio_research": presidio_research_notes(json.loads((SHARED / "notes" / "presidio_generated_small.json").read_text())),
        "generator": generator_notes(patients=3 if QUICK else 12),
    }
    engines = {"radplan": _radplan_detector(True), "radplan_without_lexicons": _radplan_detector(False), "presidio": _presidio_detector()}
    scores = {name: {engine: score_gold_notes(records, detect) for engine, detect in engines.items()} for name, records in sets.items()}
    independent = scores["independent"]["radplan"]
    met = {
        "person_recall": independent["span"]["recall"]["NAME"] >= TARGETS["person_recall"],
        "all_phi_recall": independent["span"]["all_phi_recall"] >= TARGETS["all_phi_recall"],
        "precision": independent["span"]["precision_all"] >= TARGETS["precision"],
    }
    megabyte = _megabyte_note_seconds(sets["independent"])
    seconds = round(time.perf_counter() - started, 1)
    rows = []
    # The tuned independent set, the held-out templates and the set written by others, each against plain Presidio.
    for set_name in ("independent", "independent_held_out", "presidio_research"):
        for key, label, value in (("person_recall", "NAME span recall", lambda s: s["span"]["recall"]["NAME"]),
                                  ("all_phi_recall", "all-PHI span recall", lambda s: s["span"]["all_phi_recall"]),
                                  ("precision", "span precision", lambda s: s["span"]["precision_all"])):
            ours, peer = value(scores[set_name]["radplan"]), value(scores[set_name]["presidio"])
            verdict = "met" if ours >= TARGETS[key] else "missed"
            rows.append(result_row(
                f"notes_deid_{set_name}_{key}", radplan=round(ours, 3), peer=round(peer, 3), unit=label,
                ratio=round(ours / peer, 2) if peer else None, runs=1, peer_tool=f"plain Presidio, {DEFAULT_SPACY_MODEL}",
                note=f"target >= {TARGETS[key]}: {verdict} ({len(sets[set_name])} notes of set {set_name}, no deny lists)",
            ))
    # Every figure (per entity, span and token level, every set and engine) rides on the first row.
    rows[0].update({"megabyte_note": megabyte, "seconds": seconds, "sets": {name: len(records) for name, records in sets.items()}, "scores": scores})
    atomic_write_json(RESULT, rows)
    for name, by_engine in scores.items():
        for engine, s in by_engine.items():
            print(f"{name:18} {engine:25} name R {s['span']['recall'].get('NAME', float('nan')):.3f}  all-PHI R "
                  f"{s['span']['all_phi_recall']:.3f}  P {s['span']['precision_all']:.3f}  token R {s['token']['all_phi_recall']:.3f} "
                  f"P {s['token']['precision_all']:.3f}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
