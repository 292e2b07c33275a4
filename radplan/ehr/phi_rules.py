"""Patient-independent PHI detectors that add recall to Presidio's patterns and spaCy NER.

Philter-style: a word on a person-name list (and not ordinary or clinical vocabulary) is a name;
words next to a name that are not vocabulary belong to it ("tracy sukhorukova"); words after a
title or a role ("Dr.", "Mr.", "seen by", "Patient:") are names; capitalised words on a place list,
or after "lives in"/"from"/"moved to", are places; labelled identifiers ("Serial no.", "Acct #",
"Member ID") and one-line addresses ("12 Elm St, Springfield, MA 01105") are caught by rules.

Every detection is a Presidio ``RecognizerResult`` with ``recognizer_name`` in its metadata, so
the union with the other detectors and the overlap resolution stay in notes.py.
"""

from __future__ import annotations

import re

from presidio_analyzer import EntityRecognizer, RecognizerResult

from radplan.ehr.phi_lexicons import Lexicons, load_lexicons, possessive_stripped

# Letters (any script), inner apostrophes and hyphens: "O'Neil", "Pesälä", "Smith-Jones".
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*['’]?")
_TITLES = r"(?:dr|mr|mrs|ms|miss|mx|prof|pt|sr|sra|mme|mlle|herr|frau)"
# A role or label after which the next words name a person.
_PERSON_CUES = re.compile(
    r"(?:\b" + _TITLES + r"\b\.?(?:\s*[:#]\s*)?|\b(?:seen|referred|signed|dictated|transcribed|reviewed|examined|accompanied|attended|"
    r"evaluated|ordered|requested|authored|read|interpreted|verified|approved|called|cc'?d|discussed with|spoke with|"
    r"sent to|copy to)\s+(?:(?<=with\s)|(?<=to\s)|(?:by|to)\s+)(?:dr\.?\s+)?|\b(?:patient|pt|name|patient name|attending|resident|fellow|physician|"
    r"provider|surgeon|radiologist|pathologist|oncologist|pcp|np|pa|rn|nurse|cc|contact|emergency contact|next of kin|"
    r"nok|guardian|spouse|husband|wife|son|daughter|mother|father|brother|sister|witness|interpreter|referring physician|"
    r"primary care|signed)\s*[:#-]\s*|\b(?:maiden name|last name|first name|surname|name)\s+(?:is|was)\s+|\b(?:named|called)\s+(?=[A-Z]))",
    re.IGNORECASE,
)
_PLACE_CUES = re.compile(
    r"\b(?:lives|living|resides|residing|resident|moved|relocated|born|raised|native|visiting|travell?ed|returned|"
    r"transferred|home|works|worked|vacation(?:ed)?|trip)\s+(?:in|at|to|from|of|near)\s+|\b(?:city|town|hometown|"
    r"birthplace|place of birth|county|residence|where|location)\s*[:#-]\s*|\bfrom\s+(?=[A-Z])|\b(?:grew up|brought up|raised|settled)\s+(?:in|near)\s+|"
    r"\b(?:university|college|city|county|town|village|port|lake|mount|fort|saint)\s+of\s+",
    re.IGNORECASE,
)
# "Dr. J. Smith", "Smith, John A.": initials that stand next to a name.
_INITIAL = re.compile(r"(?-i:[A-Z])\.")
# Two or three capital initials ("J.S.", "J. S.", "JRS" is left alone: too many acronyms look alike).
_INITIALS = re.compile(r"(?<![\w.])(?-i:[A-Z])\.\s?(?-i:[A-Z])\.(?:\s?(?-i:[A-Z])\.)?(?![\w])")
_LABELLED_ID = re.compile(
    r"\b(?:serial(?:\s+(?:number|no\.?|#))?|s/n|sn|lot(?:\s+(?:number|no\.?|#))?|device(?:\s+(?:id|serial))?|udi|imei|"
    r"model(?:\s+(?:number|no\.?|#))?|acct|account|member(?:\s+id)?|policy|subscriber(?:\s+id)?|group(?:\s+(?:number|no\.?|#))|"
    r"insurance(?:\s+id)?|plan(?:\s+id)|fin|csn|encounter|visit(?:\s+id)?|case|order|specimen|requisition|license|licence|"
    r"dea|npi|medicaid|medicare|passport|id|mrn|record|chart|badge|employee(?:\s+id)?|vin|plate|certificate)"
    r"(?:\s*(?:number|no\.?|#|id))?\s*[:#=]?\s*"
    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9/-]{3,}[A-Z0-9])\b",
    re.IGNORECASE,
)
# GS1 UDI of a device: (01) GTIN, then (17) expiry, (10) lot, (21) serial.
_UDI = re.compile(r"\(01\)\d{14}(?:\((?:10|11|17|21)\)[\w-]+)*")
_US_STATES = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK OR "
    "PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI"
).split()
# "Springfield, MA 01105", "BOSTON MA 02115-1234", "MA 01105": city, state and ZIP at the end of an address line.
_CITY_STATE_ZIP = re.compile(
    r"(?:\b(?-i:[A-Z])[\w'.-]*(?:\s(?-i:[A-Z])[\w'.-]*){0,2},?\s+)?\b(?-i:" + "|".join(_US_STATES) + r")\.?\s+\d{5}(?:-\d{4})?\b"
)
# A house number, one to four words and another number: European and other street layouts
# ("Nassaustraat 123", "45 aðalgata 37", "107 Rue Abdelaziz 9"), and a country or city followed by a postcode.
_NUMBERED_STREET = re.compile(r"\b(?:\d{1,5}[ \t]+)?\d{1,5}[ \t]+[^\W\d_][\w'.-]*(?:[ \t]+[^\W\d_][\w'.-]*){0,3}[ \t]+\d{1,5}[a-z]?\b\.?")
_STREET_LINE = re.compile(r"^[ \t?*•|-]*(?P<street>\d{1,6}(?:[ \t]+\d{1,6})?[ \t]+[^\W\d_][^\n]{1,50}?)[ \t]*$", re.MULTILINE)
_ADDRESS_CUES = re.compile(r"\b(?:address|lives at|living at|resides at|return(?:ed)? to|located at|mail(?:ed)? to|ship(?:ped)? to)\s*[:#-]?\s*", re.IGNORECASE)
# Digit groups next to a phone word ("69 987 88 37 office", "mobile: 0612 34 56 78"): layouts the phone patterns miss.
_LABELLED_PHONE = re.compile(
    r"(?:\b(?:phone|tel|telephone|fax|mobile|cell|office|home|work|pager|beeper)\b\.?\s*[:#]?\s*)?"
    r"(?P<value>(?<![\w-])(?:\+?\d{1,3}[ .-])?\(?\d{2,4}\)?(?:[ .-]\d{2,4}){2,4}(?![\w-]))"
    r"(?:\s*\(?(?:office|home|work|mobile|cell|fax|phone|tel)\b)?",
    re.IGNORECASE,
)
_PO_BOX = re.compile(r"\bp\.?\s?o\.?\s?box\s+\d+\b", re.IGNORECASE)
_ZIP_LABELLED = re.compile(r"\b(?:zip|zip code|postal code|postcode)[:#\s]{1,3}(?P<value>\d{5}(?:-\d{4})?)\b", re.IGNORECASE)
_STOPWORDS = frozenset("a an the and or of in on at to by for with from is was be as per no not".split())
NAME_SCORE = 0.7
# Above spaCy's 0.85: Presidio keeps one of two equal spans, and a cue ("Dr. Graves") must win over an NER hit that
# the clinical allow list would drop.
CUE_SCORE = 0.9
PLACE_SCORE = 0.6
RULE_SCORE = 0.8


def _bare(word: str) -> str:
    return possessive_stripped(word)


def _is_capitalised(word: str) -> bool:
    return word[:1].isupper()


class LexiconRecognizer(EntityRecognizer):
    """Names and places from word lists and context cues; labelled identifiers and one-line addresses."""

    ENTITIES = ["PERSON", "LOCATION", "STREET_ADDRESS", "RECORD_ID"]

    def __init__(self, lexicons: Lexicons | None = None):
        self._lexicons = lexicons
        super().__init__(supported_entities=self.ENTITIES, name="radplan_lexicons", supported_language="en")

    def load(self) -> None:
        pass

    @property
    def lexicons(self) -> Lexicons:
        if self._lexicons is None:
            self._lexicons = load_lexicons()
        return self._lexicons

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        results = self.names(text) + self.places(text) + self.rules(text)
        return [r for r in results if r.entity_type in entities]

    def _result(self, entity: str, start: int, end: int, score: float, rule: str) -> RecognizerResult:
        return RecognizerResult(entity, start, end, score, recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: self.name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id, "rule": rule})

    def names(self, text: str) -> list[RecognizerResult]:
        lex = self.lexicons
        words = list(_WORD.finditer(text))
        is_name = [False] * len(words)
        for i, match in enumerate(words):
            word = _bare(match.group())
            if len(word) < 2 or word.lower() in _STOPWORDS:
                continue
            # A listed name counts capitalised or in capitals; in lower case only next to a title or another name
            # (handled by the extension below), so "will", "grace" in running text stay.
            if lex.is_listed_name(word) and (_is_capitalised(word) or word.isupper()):
                is_name[i] = True
        # Two adjacent lower-case words that are both listed names and no vocabulary ("hi its antwan emard").
        for i in range(len(words) - 1):
            a, b = _bare(words[i].group()), _bare(words[i + 1].group())
            if (a.islower() and b.islower() and len(a) > 2 and len(b) > 2 and lex.is_listed_name(a) and lex.is_listed_name(b)
                    and self._adjacent(text, words[i], words[i + 1])):
                is_name[i] = is_name[i + 1] = True
        cued = self._cued_words(text, words, _PERSON_CUES)
        for i in cued:
            is_name[i] = True
        # Extend a name to its neighbours on the same line that are not vocabulary ("tracy sukhorukova",
        # "Ronald Pesälä"): unknown surnames are the usual gap of name lists.
        changed = True
        while changed:
            changed = False
            for i in range(len(words)):
                if is_name[i]:
                    continue
                word = _bare(words[i].group())
                if len(word) < 2 or lex.is_vocabulary(word) or word.lower() in _STOPWORDS:
                    continue
                for j in (i - 1, i + 1):
                    if 0 <= j < len(words) and is_name[j] and self._adjacent(text, words[min(i, j)], words[max(i, j)]):
                        if lex.is_listed_name(word) or _is_capitalised(word) == _is_capitalised(words[j].group()):
                            is_name[i] = changed = True
                            break
        # A nickname in brackets between a given name and a surname: "Robert (Bud) Okafor".
        for i in range(1, len(words) - 1):
            if is_name[i - 1] and is_name[i + 1] and not is_name[i] and _is_capitalised(words[i].group()):
                if text[words[i - 1].end() : words[i].start()].strip() == "(" and text[words[i].end() : words[i + 1].start()].strip() == ")":
                    is_name[i] = True
        results = []
        i = 0
        while i < len(words):
            if not is_name[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(words) and is_name[j + 1] and self._adjacent(text, words[j], words[j + 1]):
                j += 1
            start, end = words[i].start(), words[j].end()
            # Initials before the name: "J. Smith", "Dr. A. B. Jones".
            while True:
                before = text[max(0, start - 4) : start]
                m = re.search(r"(?-i:[A-Z])\.\s?$", before)
                if not m or re.search(r"\b" + _TITLES + r"\.\s?$", text[max(0, start - 6) : start], re.IGNORECASE):
                    break
                start = start - len(before) + m.start()
            m = re.match(r",?\s?(?-i:[A-Z])\.(?![\w])", text[end : end + 4])
            if m:
                end += m.end()
            by_cue = any(k in cued for k in range(i, j + 1))
            results.append(self._result("PERSON", start, end, CUE_SCORE if by_cue else NAME_SCORE, "cue" if by_cue else "name_list"))
            i = j + 1
        for m in _INITIALS.finditer(text):
            results.append(self._result("PERSON", m.start(), m.end(), 0.5, "initials"))
        return results

    @staticmethod
    def _adjacent(text: str, first: re.Match, second: re.Match) -> bool:
        """Words of one name: separated by spaces, a comma ("SMITH, JOHN") or an initial, on one line."""
        gap = text[first.end() : second.start()]
        # Wider gaps are form columns ("LINDGREN, BARBARA    MRN: ..."), not one name.
        return len(gap) <= 5 and "\n" not in gap and re.fullmatch(r",?[ \t]{1,2}(?:(?-i:[A-Z])\.[ \t]?)?|[ \t]?-[ \t]?", gap) is not None

    def _cued_words(self, text: str, words: list[re.Match], cues: re.Pattern) -> set[int]:
        """Indexes of the one to three words right after a cue that are not vocabulary."""
        lex = self.lexicons
        starts = {m.start(): i for i, m in enumerate(words)}
        found: set[int] = set()
        for cue in cues.finditer(text):
            position = cue.end()
            # Skip a title and initials right after the cue ("cc: Dr. J. Smith").
            if m := re.match(r"\s*" + _TITLES + r"\b\.?\s*", text[position:], re.IGNORECASE):
                position += m.end()
            while (m := re.match(r"\s*(?-i:[A-Z])\.\s*", text[position:])) and not re.match(r"\s*(?-i:[A-Z])\.\w", text[position:]):
                position += m.end()
            position += len(text[position:]) - len(text[position:].lstrip(" \t"))
            taken = 0
            index = starts.get(position)
            while index is not None and taken < 3:
                word = _bare(words[index].group())
                # After a cue, vocabulary ends the name unless it is capitalised ("Dr. Graves", "Mr. Young").
                # The first word may be in capitals ("Patient: ASHWORTH, DENNIS"); later capitals would be a header.
                in_capitals = taken and words[index - 1].group().isupper()  # "PT: QUITZON, CANDY"
                if lex.is_vocabulary(word) and not (
                    lex.is_listed_name(word)
                    or (_is_capitalised(word) and (not word.isupper() or not taken or (in_capitals and word.lower() not in lex.clinical_terms)))
                ):
                    break
                if word.lower() in _STOPWORDS:
                    break
                found.add(index)
                taken += 1
                nxt = index + 1
                if nxt >= len(words) or not self._adjacent(text, words[index], words[nxt]):
                    break
                index = nxt
        return found

    def places(self, text: str) -> list[RecognizerResult]:
        lex = self.lexicons
        words = list(_WORD.finditer(text))
        results = []
        i = 0
        while i < len(words):
            matched = 0
            if (words[i].group().lower(),) in lex.regions and words[i].group().lower() not in lex.clinical_terms:
                matched = 1
            if not matched and _is_capitalised(words[i].group()):
                for length in range(min(lex.longest_place, len(words) - i), 0, -1):
                    chunk = words[i : i + length]
                    if any(not _is_capitalised(w.group()) and w.group().lower() not in ("of", "de", "la", "le", "del", "upon", "on")
                           for w in chunk):
                        continue
                    if any(not self._adjacent(text, a, b) for a, b in zip(chunk, chunk[1:])):
                        continue
                    key = tuple(w.group().lower() for w in chunk)
                    if key in lex.regions or (key in lex.places and not (length == 1 and lex.is_vocabulary(chunk[0].group()))):
                        matched = length
                        break
            if matched:
                end = words[i + matched - 1].end()
                postcode = re.match(r"[ \t]+\d{4,6}\b", text[end:])
                if postcode:  # "Iceland 80392", "Rwanda 02438"
                    end += postcode.end()
                results.append(self._result("LOCATION", words[i].start(), end, PLACE_SCORE, "place_list"))
                i += matched
            else:
                i += 1
        for index in self._cued_words(text, words, _PLACE_CUES):
            word = words[index].group()
            # "from IP 10.0.0.1", "from CT": short acronyms after a place cue are not places.
            if _is_capitalised(word) and not (word.isupper() and len(word) <= 4):
                results.append(self._result("LOCATION", words[index].start(), words[index].end(), PLACE_SCORE, "cue"))
        return results

    def rules(self, text: str) -> list[RecognizerResult]:
        lex = self.lexicons
        results = []
        for m in _UDI.finditer(text):
            results.append(self._result("RECORD_ID", m.start(), m.end(), RULE_SCORE, "udi"))
        for m in _LABELLED_ID.finditer(text):
            results.append(self._result("RECORD_ID", m.start("value"), m.end("value"), RULE_SCORE, "labelled_id"))
        for cue in _ADDRESS_CUES.finditer(text):
            # The address runs to the end of the sentence or line after the cue, when it starts with a number.
            # A house number, then words, to the end of the sentence or line or a column gap ("    Phone: ...").
            rest = re.match(r"\d{1,6}[ \t]+[^\W\d_](?:(?! {3}|\t)[^\n.;])*", text[cue.end() :])
            if rest:
                results.append(self._result("STREET_ADDRESS", cue.end(), cue.end() + rest.end(), RULE_SCORE, "address_cue"))
        for m in _LABELLED_PHONE.finditer(text):
            # Only with the phone word before or after the digits: bare digit groups are doses and measurements.
            if m.start() < m.start("value") or m.end() > m.end("value"):
                results.append(self._result("PHONE_NUMBER", m.start("value"), m.end("value"), RULE_SCORE, "labelled_phone"))
        results += self._address_blocks(text, results)
        for pattern, rule in ((_CITY_STATE_ZIP, "city_state_zip"), (_PO_BOX, "po_box"), (_ZIP_LABELLED, "zip"),
                              (_NUMBERED_STREET, "numbered_street")):
            for m in pattern.finditer(text):
                if rule == "numbered_street" and all(
                    lex.is_vocabulary(w) or w.lower() in _STOPWORDS for w in _WORD.findall(m.group())
                ):
                    continue  # "lesion 2 in the lung measuring 33 mm"
                group = "value" if "value" in pattern.groupindex else 0
                results.append(self._result("STREET_ADDRESS", m.start(group), m.end(group), RULE_SCORE, rule))
        return results

    def _address_blocks(self, text: str, found: list[RecognizerResult]) -> list[RecognizerResult]:
        """The short lines right after a street line (unit, town, region, postcode: a postal address block)."""
        lex = self.lexicons
        results = []
        streets = list(_NUMBERED_STREET.finditer(text))
        # A short line that starts with a house number and holds a word that is not vocabulary
        # ("95 230 Wit Rd", "48 107 Rue Abdelaziz Thâalbi"); list items ("2 tablets daily") are all vocabulary.
        for line in _STREET_LINE.finditer(text):
            words = _WORD.findall(line.group("street"))
            if any(not lex.is_vocabulary(w) and w.lower() not in _STOPWORDS for w in words):
                streets.append(line)
                results.append(self._result("STREET_ADDRESS", line.start("street"), line.end("street"), PLACE_SCORE, "street_line"))
        for street in streets:
            position = text.find("\n", street.end())
            taken = 0
            while position != -1 and taken < 4:
                end = text.find("\n", position + 1)
                line = text[position + 1 : end if end != -1 else len(text)]
                stripped = line.strip(" \t?*-•|")
                # An address line is short and is no sentence; a blank line may separate the country line.
                if not stripped:
                    if end == -1:
                        break
                    position = end
                    continue
                if len(stripped) > 40 or re.search(r"[.!?:;]\s|[.!?]$", stripped) and not re.fullmatch(r"apt\.?.*|ste\.?.*", stripped, re.IGNORECASE):
                    break
                start = position + 1 + line.index(stripped)
                results.append(self._result("STREET_ADDRESS", start, start + len(stripped), PLACE_SCORE, "address_block"))
                taken += 1
                if end == -1:
                    break
                position = end
        return results
