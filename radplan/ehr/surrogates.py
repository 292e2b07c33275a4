"""Consistent surrogates for names and places in de-identified notes (optional, per configuration).

Instead of ``[NAME]`` a note reads "Mr. Halvorsen": the surrogate is drawn from the Philter name lists
(last names) or the GeoNames city list by a keyed digest of (patient, original value), so one patient's
"Okafor" is the same surrogate in all of that patient's notes, another patient's "Okafor" another one,
and no one without the de-identification key can map a surrogate back. Dates are never replaced here:
they are shifted by the patient's shift (the same as DICOM and the structured EHR) in notes.py.
Capitalisation follows the original ("OKAFOR" -> "HALVORSEN"). Multi-word names keep their word count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from radplan.ehr.phi_lexicons import load_lexicons

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


@lru_cache(maxsize=1)
def _pools() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    lexicons = load_lexicons()
    # Plain alphabetic list entries that are no vocabulary, sorted so the draw is reproducible.
    names = lambda words: tuple(sorted(w for w in words if w.isalpha() and w.isascii() and 4 <= len(w) <= 10 and not lexicons.is_vocabulary(w)))  # noqa: E731
    places = tuple(sorted(" ".join(p) for p in lexicons.places if len(p) == 1 and p[0].isalpha() and p[0].isascii() and 4 <= len(p[0]) <= 12
                          and not lexicons.is_vocabulary(p[0]) and p not in lexicons.regions))
    return names(lexicons.first_names), names(lexicons.last_names), places


def _cased(surrogate: str, original: str) -> str:
    if original.isupper():
        return surrogate.upper()
    if original.islower():
        return surrogate.lower()
    return surrogate[:1].upper() + surrogate[1:].lower()


class Surrogates:
    """Surrogates for one patient. ``token(purpose, value)`` is a keyed digest (``Pseudonymizer.token``)."""

    def __init__(self, token: Callable[[str, str], str], patient_id: str):
        self._token = token
        self._patient = patient_id

    def _draw(self, pool: tuple[str, ...], purpose: str, value: str) -> str:
        index = int(self._token(purpose, f"{self._patient}\x1f{value.lower()}"), 16) % len(pool)
        return pool[index]

    def name(self, original: str) -> str:
        first_names, last_names, _places = _pools()
        lexicons = load_lexicons()
        words = list(_WORD.finditer(original))
        if not words:
            return "[NAME]"
        out, last = [], 0
        for word in words:
            # The pool depends on the word alone, so a name gets the same surrogate wherever it stands.
            lowered = word.group().lower()
            pool = first_names if lowered in lexicons.first_names and lowered not in lexicons.last_names else last_names
            out.append(original[last : word.start()] + _cased(self._draw(pool, "note-surrogate-name", word.group()), word.group()))
            last = word.end()
        return "".join(out) + original[last:]

    def place(self, original: str) -> str:
        _first, _last, places = _pools()
        return _cased(self._draw(places, "note-surrogate-place", original), original.split()[0] if original.split() else original)
