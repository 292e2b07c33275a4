"""Cursor logic of the sensors as pure functions (no Dagster, no I/O beyond what is passed in).

Orthanc's change feed: ``GET /changes?since=S&limit=L`` returns the changes with sequence number
greater than S (at most L), ``Done`` (no more after these) and ``Last`` (the sequence number to
ask from next; with no change returned, the newest sequence number in the database). The cursor is
always ``Last``, never the last event we cared about: sequence numbers have gaps (changes Orthanc
has pruned, change types we ignore), and a page with no event we want is not the end of the feed
until ``Done`` says so.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from radplan.inventory import INPUT_SOURCES

STABLE_STUDY = "StableStudy"


@dataclass(frozen=True)
class ChangeFeedRead:
    """What one sensor tick read from the change feed. ``stable_studies`` are Orthanc study ids: keep them out of logs."""

    since: int  # the cursor this read started from
    last: int  # the next cursor
    stable_studies: tuple[str, ...] = ()
    pages: int = 0
    caught_up: bool = True
    # Orthanc's numbering went below our cursor (a new or restored database): the feed was re-read from 0.
    restarted: bool = False
    events_read: int = 0

    @property
    def run_key(self) -> str:
        """Unique per range of the feed: ranges from a persisted cursor never overlap."""
        if self.restarted:
            return f"pacs-changes-restart-{self.since}-to-{self.last}"
        return f"pacs-changes-{self.since + 1}-{self.last}"


def read_change_feed(fetch_page: Callable[[int, int], dict], since: int, *, page_limit: int = 1000, max_pages: int = 50) -> ChangeFeedRead:
    """Page through the change feed from ``since`` until ``Done`` (or ``max_pages``; the rest is read next tick)."""
    cursor, stable, pages, events, restarted = since, [], 0, 0, False
    while True:
        page = fetch_page(cursor, page_limit)
        pages += 1
        changes = page.get("Changes") or []
        last = int(page["Last"])
        done = bool(page.get("Done"))
        if not changes and last < cursor and not restarted:
            # Nothing after our cursor and the feed ends below it: this is another database. Start over.
            cursor, stable, events, restarted = 0, [], 0, True
            continue
        events += len(changes)
        stable += [str(change["ID"]) for change in changes if change.get("ChangeType") == STABLE_STUDY]
        next_cursor = max(cursor, last)
        if done:
            return ChangeFeedRead(since, next_cursor, tuple(dict.fromkeys(stable)), pages, True, restarted, events)
        if next_cursor == cursor or pages >= max_pages:
            # Not done, yet no progress (or the page budget is spent): keep what was read, say we are behind.
            return ChangeFeedRead(since, next_cursor, tuple(dict.fromkeys(stable)), pages, False, restarted, events)
        cursor = next_cursor


@dataclass
class SensorCursor:
    """A sensor's persisted state as a small JSON object (Dagster stores cursors as strings)."""

    values: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "SensorCursor":
        if not text:
            return cls()
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = {}
        return cls(values if isinstance(values, dict) else {})

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def with_value(self, name: str, value) -> "SensorCursor":
        return SensorCursor({**self.values, name: value})

    def without(self, name: str) -> "SensorCursor":
        return SensorCursor({key: value for key, value in self.values.items() if key != name})

    def dump(self) -> str:
        return json.dumps(self.values, sort_keys=True)


@dataclass(frozen=True)
class InventoryChange:
    """One landing_inventory materialization: its event-log storage id, {patient_key: fingerprint} of changed patients
    and {patient_key: [changed input sources]} (empty for an intake that did not record sources: all of them)."""

    storage_id: int
    changed: dict
    sources: dict = field(default_factory=dict)

    def sources_of(self, patient_key: str) -> tuple[str, ...]:
        return tuple(self.sources.get(patient_key) or INPUT_SOURCES)


@dataclass(frozen=True)
class PatientRefresh:
    patient_key: str
    fingerprint: str
    sources: tuple[str, ...] = INPUT_SOURCES

    @property
    def run_key(self) -> str:
        # A re-sent identical study or a repeated event gives the same fingerprint, hence the same key: no rerun.
        return f"patient-refresh-{self.patient_key}-{self.fingerprint}"

    @property
    def every_source(self) -> bool:
        return set(self.sources) >= set(INPUT_SOURCES)


def patient_refreshes(changes: list[InventoryChange], latest_refresh_storage_ids: dict[str, int], patients=None) -> list[PatientRefresh]:
    """The patient runs the inventory changes call for: newest fingerprint per patient, and every source changed by an
    intake after the patient's latest refresh (so a refresh still queued or failed is covered by the next one).

    A patient whose partition was materialized after the inventory that changed it (e.g. by the demo
    runner or a manual backfill) is already up to date and is skipped. ``patients`` limits the result to those keys
    (the changes may reach further back than the new intakes, to collect sources).
    """
    wanted: dict[str, tuple[int, str]] = {}
    sources: dict[str, set[str]] = {}
    for change in sorted(changes, key=lambda c: c.storage_id):
        for key, fingerprint in change.changed.items():
            if patients is not None and key not in patients:
                continue
            wanted[key] = (change.storage_id, fingerprint)
            latest = latest_refresh_storage_ids.get(key, -1)
            if change.storage_id > latest:
                # Never refreshed: every branch, whatever this intake changed (an earlier full refresh may have failed).
                sources.setdefault(key, set()).update(change.sources_of(key) if latest >= 0 else INPUT_SOURCES)
    return [
        PatientRefresh(key, fingerprint, tuple(source for source in INPUT_SOURCES if source in sources[key]))
        for key, (storage_id, fingerprint) in sorted(wanted.items())
        if latest_refresh_storage_ids.get(key, -1) < storage_id
    ]


def cohort_batch_due(
    *,
    newest_patient_storage_id: int | None,
    newest_patient_timestamp: float | None,
    cohort_storage_id: int | None,
    runs_in_flight: int,
    now: float,
    quiet_s: float,
) -> tuple[bool, str]:
    """Whether to rebuild the cohort-level assets now: unconsumed patient rows, nothing running, and a quiet period over."""
    if newest_patient_storage_id is None:
        return False, "no patient features materialized yet"
    if cohort_storage_id is not None and cohort_storage_id > newest_patient_storage_id:
        return False, "cohort table is newer than every patient feature row"
    if runs_in_flight:
        return False, f"{runs_in_flight} patient or cohort runs still queued or running"
    waited = now - (now if newest_patient_timestamp is None else newest_patient_timestamp)
    if waited < quiet_s:
        return False, f"last patient update {waited:.0f} s ago; batching for {quiet_s:.0f} s"
    return True, "patient rows newer than the cohort table"


@dataclass(frozen=True)
class PacsOutage:
    """The PACS sensor's view of an outage, kept in its cursor: when it began, failed ticks, when to try again."""

    since: float
    failures: int
    retry_at: float

    @classmethod
    def from_cursor(cls, cursor: "SensorCursor") -> "PacsOutage | None":
        value = cursor.get("pacs_outage")
        return cls(**value) if isinstance(value, dict) else None

    def failed_again(self, now: float, delay_s: float) -> "PacsOutage":
        return PacsOutage(self.since, self.failures + 1, now + delay_s)

    def into(self, cursor: "SensorCursor") -> "SensorCursor":
        return cursor.with_value("pacs_outage", {"since": self.since, "failures": self.failures, "retry_at": self.retry_at})


def pacs_outage_delay(failures: int, interval_s: float, max_s: float = 120.0) -> float:
    """Seconds before the next PACS read after ``failures`` failed ticks in a row: the tick interval, doubled per failure."""
    return min(max_s, interval_s * 2 ** max(0, failures - 1))
