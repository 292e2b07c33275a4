"""Find dates in free text and shift them by a number of days, keeping each date's own format.

Shifting (rather than masking) keeps intervals between a patient's events
intact, with the same per-patient shift as DICOM and the structured EHR.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december")
_MONTH_ALT = "|".join(sorted({m for full in MONTHS for m in (full, full[:3], "sept")}, key=len, reverse=True))
_MONTH = rf"(?P<month>(?:{_MONTH_ALT})\.?)"


def _month_number(token: str) -> int:
    token = token.lower().rstrip(".")
    if token == "sept":
        return 9
    return next(i for i, name in enumerate(MONTHS, 1) if name.startswith(token))


def _month_like(original: str, month: int) -> str:
    """Month name in the original's style: full or abbreviated, case, trailing dot."""
    bare = original.rstrip(".")
    name = MONTHS[month - 1] if len(bare) > 4 or bare.lower() in MONTHS else MONTHS[month - 1][:3]
    if bare.isupper():
        name = name.upper()
    elif bare[0].isupper():
        name = name.capitalize()
    return name + ("." if original.endswith(".") and len(name) <= 4 else "")


def _year(text: str) -> int:
    value = int(text)
    if len(text) == 2:
        return 2000 + value if value < 50 else 1900 + value
    return value


def _year_like(original: str, year: int) -> str:
    return f"{year % 100:02d}" if len(original) == 2 else f"{year:04d}"


def _number_like(original: str, value: int) -> str:
    return f"{value:02d}" if len(original) == 2 else str(value)


def _day_like(original: str, value: int) -> str:
    """Day after a month name: zero-padded only when the original was ("March 04")."""
    return f"{value:02d}" if original.startswith("0") else str(value)


@dataclass(frozen=True)
class DateFormat:
    name: str
    pattern: re.Pattern
    # Rebuild the matched text for a shifted date, in the same format.
    render: Callable[[re.Match, dt.date], str]
    parse: Callable[[re.Match], dt.date]


def _fmt(name: str, regex: str, parse, render) -> DateFormat:
    return DateFormat(name, re.compile(regex, re.IGNORECASE), render, parse)


_B = r"(?<![\w/.-])"
_E = r"(?![\w/-]|\.\d)"

DATE_FORMATS: tuple[DateFormat, ...] = (
    _fmt(
        "iso",
        _B + r"(?P<year>(?:19|20)\d\d)(?P<s1>[-/.])(?P<month>0?[1-9]|1[0-2])(?P=s1)(?P<day>0?[1-9]|[12]\d|3[01])(?=T|\b)",
        lambda m: dt.date(int(m["year"]), int(m["month"]), int(m["day"])),
        lambda m, d: f"{d.year:04d}{m['s1']}{_number_like(m['month'], d.month)}{m['s1']}{_number_like(m['day'], d.day)}",
    ),
    _fmt(
        "compact",
        _B + r"(?P<year>(?:19|20)\d\d)(?P<month>0[1-9]|1[0-2])(?P<day>0[1-9]|[12]\d|3[01])" + _E,
        lambda m: dt.date(int(m["year"]), int(m["month"]), int(m["day"])),
        lambda m, d: f"{d.year:04d}{d.month:02d}{d.day:02d}",
    ),
    _fmt(
        "us_numeric",
        _B + r"(?P<month>0?[1-9]|1[0-2])(?P<s1>[/-])(?P<day>0?[1-9]|[12]\d|3[01])(?P=s1)(?P<year>(?:19|20)?\d\d)" + _E,
        lambda m: dt.date(_year(m["year"]), int(m["month"]), int(m["day"])),
        lambda m, d: f"{_number_like(m['month'], d.month)}{m['s1']}{_number_like(m['day'], d.day)}{m['s1']}{_year_like(m['year'], d.year)}",
    ),
    _fmt(
        "european_dotted",
        _B + r"(?P<day>0?[1-9]|[12]\d|3[01])\.(?P<month>0?[1-9]|1[0-2])\.(?P<year>(?:19|20)\d\d)" + _E,
        lambda m: dt.date(int(m["year"]), int(m["month"]), int(m["day"])),
        lambda m, d: f"{_number_like(m['day'], d.day)}.{_number_like(m['month'], d.month)}.{d.year:04d}",
    ),
    _fmt(
        "month_day_year",
        r"\b" + _MONTH + r"(?P<s1>\s+)(?P<day>0?[1-9]|[12]\d|3[01])(?P<ord>st|nd|rd|th)?(?P<s2>,?\s+)(?P<year>(?:19|20)\d\d)\b",
        lambda m: dt.date(int(m["year"]), _month_number(m["month"]), int(m["day"])),
        lambda m, d: f"{_month_like(m['month'], d.month)}{m['s1']}{_day_like(m['day'], d.day)}{_ordinal(d.day) if m['ord'] else ''}{m['s2']}{d.year}",
    ),
    _fmt(
        "day_month_year",
        r"\b(?P<day>0?[1-9]|[12]\d|3[01])(?P<ord>st|nd|rd|th)?(?P<s1>[\s-]+(?:of\s+)?)" + _MONTH + r"(?P<s2>,?[\s-]+)(?P<year>(?:19|20)\d\d)\b",
        lambda m: dt.date(int(m["year"]), _month_number(m["month"]), int(m["day"])),
        lambda m, d: f"{_day_like(m['day'], d.day)}{_ordinal(d.day) if m['ord'] else ''}{m['s1']}{_month_like(m['month'], d.month)}{m['s2']}{d.year}",
    ),
    _fmt(
        "month_year",
        r"\b" + _MONTH + r"(?P<s1>,?\s+)(?P<year>(?:19|20)\d\d)\b",
        # A month without a day: shift its 15th, the least biased choice.
        lambda m: dt.date(int(m["year"]), _month_number(m["month"]), 15),
        lambda m, d: f"{_month_like(m['month'], d.month)}{m['s1']}{d.year}",
    ),
)


def _ordinal(day: int) -> str:
    return "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def find_dates(text: str) -> list[tuple[int, int, DateFormat]]:
    """Non-overlapping (start, end, format) of every parsable date, earlier formats winning ties."""
    found: list[tuple[int, int, DateFormat]] = []
    taken: list[tuple[int, int]] = []
    for date_format in DATE_FORMATS:
        for match in date_format.pattern.finditer(text):
            try:
                date_format.parse(match)
            except ValueError:  # 31 February and the like: not a date
                continue
            if any(match.start() < end and start < match.end() for start, end in taken):
                continue
            found.append((match.start(), match.end(), date_format))
            taken.append((match.start(), match.end()))
    return sorted(found, key=lambda item: item[0])


def shift_dates_in(text: str, days: int) -> tuple[str, int]:
    """``text`` with every recognised date moved by ``days``; also returns how many were shifted."""
    pieces: list[str] = []
    cursor = 0
    for start, end, date_format in find_dates(text):
        match = date_format.pattern.match(text, start)
        pieces.append(text[cursor:start])
        pieces.append(date_format.render(match, date_format.parse(match) + dt.timedelta(days=days)))
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces), len(pieces) // 2


def date_spellings(value: dt.date) -> list[str]:
    """Common ways a known date (a birth date) is written, for deny lists."""
    month = MONTHS[value.month - 1].capitalize()
    return [
        value.isoformat(),
        f"{value.month:02d}/{value.day:02d}/{value.year}",
        f"{value.month}/{value.day}/{value.year}",
        f"{value.month}/{value.day}/{value.year % 100:02d}",
        f"{value.year}{value.month:02d}{value.day:02d}",
        f"{month} {value.day}, {value.year}",
        f"{month[:3]} {value.day}, {value.year}",
        f"{value.day} {month} {value.year}",
        f"{value.day:02d}.{value.month:02d}.{value.year}",
    ]
