"""A clinician's decision on one recommendation, from the dashboard's form to ``landing/feedback/*.csv``.

The file is what the ``clinician_feedback`` asset reads (README "Clinician feedback"): the form's three choices map
onto its decision vocabulary (accept -> ``accept``; modify and reject -> ``override``, which needs a reason code),
and the choice itself is kept in an extra ``dashboard_choice`` column (extra columns are ignored by the asset, so
modify and reject stay distinguishable in the landing zone). Each submission is one new file written atomically
(a hidden temporary file renamed into place: the asset skips hidden files), so a half-written row is never read.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from radplan.lake import atomic_path
from radplan.monitoring import FEEDBACK_COLUMNS, RECOMMENDATION_ID, REASON_CODES

CHOICES = {"accept": "accept", "modify": "override", "reject": "override"}
EXTRA_COLUMNS = ("dashboard_choice", "comment")
MAX_COMMENT_CHARS = 500
# Markup or script in free text is refused, not silently cleaned: the clinician sees why and can rephrase.
_MARKUP = re.compile(r"<\s*[A-Za-z/!?]|javascript\s*:|on[a-z]+\s*=", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A cell starting like a spreadsheet formula would run in the spreadsheet a reviewer opens the CSV with.
_FORMULA_START = ("=", "+", "-", "@")


class FeedbackFormError(ValueError):
    """The form cannot be stored; ``problems`` name each field and why."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FeedbackEntry:
    recommendation_id: str
    choice: str  # accept / modify / reject
    reason: str  # a REASON_CODES code, "" for an accept without one
    comment: str

    @property
    def decision(self) -> str:
        return CHOICES[self.choice]


def parse_feedback_form(fields: Mapping[str, str], known_recommendation_ids: set[str]) -> FeedbackEntry:
    """Validate the form of one recommendation; every problem is reported at once."""
    problems = []
    recommendation_id = (fields.get("recommendation_id") or "").strip()
    if not recommendation_id:
        problems.append("recommendation_id is missing")
    elif not RECOMMENDATION_ID.match(recommendation_id):
        problems.append("recommendation_id is not a radplan recommendation id (r + 16 hex digits)")
    elif recommendation_id not in known_recommendation_ids:
        problems.append("recommendation_id is not one of this patient's current recommendations")
    choice = (fields.get("choice") or "").strip().lower()
    if not choice:
        problems.append("decision is missing: choose accept, modify or reject")
    elif choice not in CHOICES:
        problems.append("decision must be accept, modify or reject")
    reason = (fields.get("reason") or "").strip()
    if reason and reason not in REASON_CODES:
        problems.append(f"reason must be one of {', '.join(REASON_CODES)}")
    elif choice in ("modify", "reject") and not reason:
        problems.append(f"reason is missing: a {choice} needs a reason")
    comment = fields.get("comment") or ""
    if len(comment) > MAX_COMMENT_CHARS:
        problems.append(f"comment is longer than {MAX_COMMENT_CHARS} characters")
    if _MARKUP.search(comment):
        problems.append("comment contains markup or script (<tag>, javascript:, on...=): write plain text")
    if _CONTROL.search(comment):
        problems.append("comment contains control characters")
    if comment.strip().startswith(_FORMULA_START):
        problems.append("comment starts with = + - or @ (read as a formula by spreadsheets): start it with a word")
    if problems:
        raise FeedbackFormError(problems)
    return FeedbackEntry(recommendation_id, choice, reason, " ".join(comment.split()))


def feedback_csv(entry: FeedbackEntry, clinician: str, decided_at: dt.datetime) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FEEDBACK_COLUMNS, *EXTRA_COLUMNS])
    writer.writerow([entry.recommendation_id, entry.decision, entry.reason, clinician,
                     decided_at.astimezone(dt.timezone.utc).isoformat(timespec="seconds"), entry.choice, entry.comment])
    return buffer.getvalue()


def write_feedback(feedback_dir: Path, entry: FeedbackEntry, clinician: str, decided_at: dt.datetime) -> Path:
    """One new CSV in ``feedback_dir``, renamed into place complete (never a partial file the asset could read)."""
    stamp = decided_at.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = Path(feedback_dir) / f"dashboard-{stamp}-{entry.recommendation_id}-{secrets.token_hex(4)}.csv"
    text = feedback_csv(entry, clinician, decided_at)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
