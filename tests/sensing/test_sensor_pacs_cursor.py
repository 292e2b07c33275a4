"""Cursor logic of the sensors on a simulated change feed (the real Orthanc: test_sensor_orthanc_feed.py)."""

from __future__ import annotations

import pytest

from radplan.inventory import landing_fingerprint
from radplan.inventory import INPUT_SOURCES, changed_fingerprints, changed_sources, combine_fingerprints, source_fingerprints
from sensors.cursors import (
    InventoryChange,
    PacsOutage,
    SensorCursor,
    cohort_batch_due,
    pacs_outage_delay,
    patient_refreshes,
    read_change_feed,
)


class FakeFeed:
    """Orthanc's /changes semantics: changes after ``since``, at most ``limit``; Last = last returned, else the newest seq."""

    def __init__(self, changes: list[tuple[int, str, str]]):
        self.changes = changes
        self.calls: list[tuple[int, int]] = []

    def __call__(self, since: int, limit: int) -> dict:
        self.calls.append((since, limit))
        after = [c for c in self.changes if c[0] > since]
        page = after[:limit]
        last = page[-1][0] if page else max((c[0] for c in self.changes), default=0)
        return {
            "Changes": [{"Seq": seq, "ChangeType": kind, "ID": ident} for seq, kind, ident in page],
            "Done": len(after) <= limit,
            "Last": last,
        }


def _study_events(first_seq: int, study: str) -> list[tuple[int, str, str]]:
    return [(first_seq, "NewInstance", "i"), (first_seq + 1, "NewStudy", study), (first_seq + 2, "StableSeries", "s"), (first_seq + 3, "StableStudy", study)]


def test_pages_until_done_and_cursor_is_the_feeds_last():
    feed = FakeFeed(_study_events(1, "a") + _study_events(5, "b") + _study_events(9, "c"))
    read = read_change_feed(feed, 0, page_limit=3)
    assert read.stable_studies == ("a", "b", "c")
    assert read.last == 12 and read.caught_up and read.pages == 4
    assert [since for since, _ in feed.calls] == [0, 3, 6, 9]


def test_skipped_sequence_numbers_and_trailing_uninteresting_events():
    # Gaps (pruned changes) and a tail of non-study events: the cursor still moves to the feed's Last.
    feed = FakeFeed([(4, "StableStudy", "a"), (17, "NewInstance", "x"), (40, "StablePatient", "p")])
    read = read_change_feed(feed, 0, page_limit=1)
    assert read.stable_studies == ("a",) and read.last == 40 and read.caught_up
    again = read_change_feed(feed, read.last, page_limit=1)
    assert again.stable_studies == () and again.last == 40 and again.caught_up


def test_page_without_wanted_events_is_not_the_end_of_the_feed():
    feed = FakeFeed([(seq, "NewInstance", "i") for seq in range(1, 50)] + [(50, "StableStudy", "late")])
    read = read_change_feed(feed, 0, page_limit=10)
    assert read.stable_studies == ("late",) and read.last == 50


def test_page_budget_leaves_the_rest_for_the_next_tick_without_loss():
    feed = FakeFeed(_study_events(1, "a") + _study_events(5, "b") + _study_events(9, "c"))
    first = read_change_feed(feed, 0, page_limit=2, max_pages=2)
    assert not first.caught_up and first.last == 4 and first.stable_studies == ("a",)
    second = read_change_feed(feed, first.last, page_limit=2, max_pages=10)
    assert second.caught_up and second.stable_studies == ("b", "c")
    assert first.run_key != second.run_key


def test_feed_below_the_cursor_means_a_new_database_and_is_reread_from_zero():
    feed = FakeFeed(_study_events(1, "fresh"))
    read = read_change_feed(feed, 500, page_limit=100)
    assert read.restarted and read.stable_studies == ("fresh",) and read.last == 4
    assert read.run_key == "pacs-changes-restart-500-to-4"


def test_run_keys_of_consecutive_reads_never_repeat():
    feed = FakeFeed([])
    keys, cursor = set(), 0
    for batch in range(5):
        feed.changes += _study_events(len(feed.changes) + 1, f"s{batch}")
        read = read_change_feed(feed, cursor, page_limit=3)
        assert read.run_key not in keys
        keys.add(read.run_key)
        cursor = read.last
    assert len(keys) == 5


def test_five_minute_pacs_outage_backs_off_to_the_cap_and_reads_again_within_it():
    # The 5-minute Orthanc outage on the PACS sensor's own schedule (5 s ticks); the production-stack test
    # (tests/production/test_daemon_operations.py) runs the same code path with a shorter outage.
    interval, outage_s, outage, reads = 5, 300, None, []
    for now in range(0, 600, interval):
        if outage is not None and now < outage.retry_at:
            continue  # a tick within the back-off: the outage is reported, the PACS is not read
        reads.append(now)
        if now >= outage_s:
            break  # the PACS answers: the read catches up from the unchanged change cursor
        failures = (outage.failures if outage else 0) + 1
        outage = PacsOutage(outage.since if outage else now, failures, now + pacs_outage_delay(failures, interval))
    assert reads == [0, 5, 15, 35, 75, 155, 275, 395]  # 5, 10, 20, 40, 80 s, then the 120 s cap
    assert outage.failures == 7 and reads[-1] - outage_s <= 120  # 8 reads in 60 ticks; caught up within the cap


def test_sensor_cursor_round_trip_and_garbage():
    cursor = SensorCursor.parse(None).with_value("orthanc_last", 12)
    assert SensorCursor.parse(cursor.dump()).get("orthanc_last") == 12
    assert SensorCursor.parse("not json").get("orthanc_last", 0) == 0


def test_landing_fingerprint_changes_with_content_and_ignores_hidden_staging(tmp_path):
    (tmp_path / "a.vcf").write_text("x")
    before, count = landing_fingerprint(tmp_path)
    (tmp_path / ".b.partial").write_text("in flight")
    assert landing_fingerprint(tmp_path) == (before, count)
    (tmp_path / "b.vcf").write_text("y")
    assert landing_fingerprint(tmp_path)[0] != before and landing_fingerprint(tmp_path)[1] == 2


def test_fingerprints_are_keyed_and_only_changes_are_listed(pseudonymizer):
    parts = {"p1": ["study\x00A\x00f1", "ehr\x00h1"], "p2": ["study\x00B\x00f2"]}
    first = combine_fingerprints(parts, pseudonymizer.token)
    assert combine_fingerprints({"p1": list(reversed(parts["p1"])), "p2": parts["p2"]}, pseudonymizer.token) == first
    assert "f1" not in first["p1"] and len(first["p1"]) == 12
    second = combine_fingerprints({**parts, "p1": parts["p1"] + ["study\x00C\x00f3"], "p3": ["ehr\x00h3"]}, pseudonymizer.token)
    assert set(changed_fingerprints(first, second)) == {"p1", "p3"}
    assert changed_fingerprints(second, second) == {}


def test_patient_refreshes_newest_fingerprint_and_skip_already_refreshed():
    changes = [InventoryChange(10, {"p1": "f1", "p2": "g1"}), InventoryChange(20, {"p1": "f2"})]
    refreshes = patient_refreshes(changes, {"p2": 15})
    assert [(r.patient_key, r.fingerprint) for r in refreshes] == [("p1", "f2")]
    assert refreshes[0].run_key == "patient-refresh-p1-f2"
    assert [r.patient_key for r in patient_refreshes(changes, {})] == ["p1", "p2"]


def test_changed_sources_name_the_branch_that_changed(pseudonymizer):
    before = source_fingerprints({"p1": {"imaging": ["study\x00A\x00f1"], "ehr": ["ehr\x00h1"]}}, pseudonymizer.token)
    follow_up = source_fingerprints({"p1": {"imaging": ["study\x00A\x00f1", "study\x00B\x00f2"], "ehr": ["ehr\x00h1"]},
                                     "p2": {"genomics": ["genomics\x00vcf\x00S\x00c1"]}}, pseudonymizer.token)
    assert "f1" not in before["p1"]["imaging"]
    assert changed_sources(before, follow_up, ["p1", "p2"]) == {"p1": ["imaging"], "p2": list(INPUT_SOURCES)}
    # A source that is gone changed too (its assets must drop what it gave); no previous record at all: every source.
    ehr_gone = source_fingerprints({"p1": {"imaging": ["study\x00A\x00f1"]}}, pseudonymizer.token)
    assert changed_sources(before, ehr_gone, ["p1"]) == {"p1": ["ehr"]}
    assert changed_sources(None, follow_up, ["p1"]) == {"p1": list(INPUT_SOURCES)}
    # The whole fingerprint changed but no source did (a half-written previous inventory): every source, never none.
    assert changed_sources(before, before, ["p1"]) == {"p1": list(INPUT_SOURCES)}
    with pytest.raises(ValueError, match="unknown input sources"):
        source_fingerprints({"p1": {"pathology": ["x"]}}, pseudonymizer.token)


def test_patient_refreshes_cover_every_source_changed_since_the_latest_refresh():
    changes = [
        InventoryChange(10, {"p1": "f1"}, {"p1": ["ehr"]}),  # before p1's latest refresh (15): done
        InventoryChange(20, {"p1": "f2", "p2": "g2"}, {"p1": ["imaging"], "p2": ["genomics"]}),
        InventoryChange(30, {"p1": "f3"}, {"p1": ["genomics"]}),
    ]
    refreshes = {r.patient_key: r for r in patient_refreshes(changes, {"p1": 15, "p2": 5})}
    assert (refreshes["p1"].fingerprint, refreshes["p1"].sources) == ("f3", ("imaging", "genomics"))
    assert refreshes["p2"].sources == ("genomics",) and not refreshes["p2"].every_source
    # An intake that recorded no sources (older radplan), or a patient never refreshed: every source.
    assert patient_refreshes([InventoryChange(40, {"p1": "f4"})], {"p1": 35})[0].every_source
    assert patient_refreshes(changes[1:2], {})[0].every_source
    # Older changes read only to collect sources do not request other patients.
    assert [r.patient_key for r in patient_refreshes(changes, {"p1": 15, "p2": 5}, patients={"p1"})] == ["p1"]


@pytest.mark.parametrize(
    ("kwargs", "due"),
    [
        ({"newest_patient_storage_id": None, "newest_patient_timestamp": None, "cohort_storage_id": None, "runs_in_flight": 0}, False),
        ({"newest_patient_storage_id": 5, "newest_patient_timestamp": 0.0, "cohort_storage_id": 9, "runs_in_flight": 0}, False),
        ({"newest_patient_storage_id": 9, "newest_patient_timestamp": 0.0, "cohort_storage_id": 5, "runs_in_flight": 1}, False),
        ({"newest_patient_storage_id": 9, "newest_patient_timestamp": 990.0, "cohort_storage_id": 5, "runs_in_flight": 0}, False),
        ({"newest_patient_storage_id": 9, "newest_patient_timestamp": 0.0, "cohort_storage_id": 5, "runs_in_flight": 0}, True),
        ({"newest_patient_storage_id": 9, "newest_patient_timestamp": 0.0, "cohort_storage_id": None, "runs_in_flight": 0}, True),
    ],
)
def test_cohort_batch_waits_for_settled_patient_updates(kwargs, due):
    assert cohort_batch_due(**kwargs, now=1000.0, quiet_s=60.0)[0] is due
