"""The PACS sensor against a real Orthanc fed by storescu: no missed study, no duplicate patient run.

Scenario: two studies arrive -> one intake, two patient refreshes; Orthanc restarts on the same
storage and the same studies are re-sent, the sensor restarts (persisted cursor) and, separately,
loses its cursor -> no new patient work; a follow-up study for a known patient and a new patient
arrive -> exactly those two patients are refreshed. The change feed is read in pages smaller than
one study's events. Intake runs execute for real; patient refresh requests are registered as the
daemon would (run key dedup) but not executed (their cost is covered by the incremental test).
"""

from __future__ import annotations

import time

import pytest
import requests
from dagster import DagsterInstance

import sensors.landing
from support.arrivals import add_follow_up_study, add_new_patient
from radplan.synth.generator import _draw_unique
from radplan_resources import OrthancPacs
from support.inprocess import InProcessDaemon, definitions_with

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

SEED = 7


def _wait_until_stable(server, studies: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = requests.get(f"{server.url}/studies", params={"expand": ""}, timeout=10).json()
        if len(found) == studies and all(study["IsStable"] for study in found):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Orthanc did not hold {studies} stable studies in {timeout_s} s")


def _stable_study_events(server) -> int:
    changes = requests.get(f"{server.url}/changes", params={"since": 0, "limit": 100000}, timeout=10).json()["Changes"]
    return sum(change["ChangeType"] == "StableStudy" for change in changes)


def test_orthanc_sensor_no_miss_no_duplicate(orthanc, tmp_path, monkeypatch, pseudonymizer):
    home = tmp_path / "home"
    monkeypatch.setenv("RADPLAN_HOME", str(home))
    # A page is smaller than one study's events (~50 instances + series/study/patient events).
    monkeypatch.setattr(sensors.landing, "ORTHANC_PAGE_LIMIT", 7)
    plans = _draw_unique(SEED, 4)
    key = {index: pseudonymizer.patient_key(plans[index].mrn) for index in range(4)}
    arrivals = tmp_path / "arrivals"
    study_p0 = add_follow_up_study(arrivals, 0, seed=SEED)
    study_p1 = add_follow_up_study(arrivals, 1, seed=SEED)

    defs = definitions_with(pacs=OrthancPacs(url=orthanc.url))
    instance = DagsterInstance.ephemeral()
    daemon = InProcessDaemon(defs, instance)
    refresh_keys: dict[str, str] = {}  # run key -> partition key, every distinct patient run ever requested

    def intake_then_refreshes(pacs_daemon: InProcessDaemon) -> tuple[int, set[str]]:
        intakes = pacs_daemon.tick_and_run("pacs_study_sensor")
        assert all(run.success for run in intakes)
        new = set()
        for request in pacs_daemon.evaluate("patient_refresh_sensor"):
            assert request.run_key not in refresh_keys, "a duplicate patient run got past the run-key check"
            refresh_keys[request.run_key] = request.partition_key
            pacs_daemon.record_without_executing("patient_refresh_sensor", request)
            new.add(request.partition_key)
        return len(intakes), new

    orthanc.store(study_p0 + study_p1)
    _wait_until_stable(orthanc, 2)
    intakes, refreshed = intake_then_refreshes(daemon)
    assert intakes == 1 and refreshed == {key[0], key[1]}
    assert set(instance.get_dynamic_partitions("patients")) == {key[0], key[1]}
    assert intake_then_refreshes(daemon) == (0, set())  # nothing new: no intake at all

    # Orthanc restarts on the same storage; the same studies are sent again.
    orthanc.stop()
    orthanc.start()
    orthanc.store(study_p0 + study_p1)
    time.sleep(orthanc.stable_age_s + 3)
    _wait_until_stable(orthanc, 2)
    restarted = InProcessDaemon(defs, instance, cursors=dict(daemon.cursors))  # sensor restart, persisted cursor
    assert intake_then_refreshes(restarted)[1] == set()
    forgetful = InProcessDaemon(defs, instance)  # a sensor that lost its cursor re-reads the whole feed
    assert intake_then_refreshes(forgetful)[1] == set()

    # A follow-up for patient 0 and a brand-new patient (index 3: not among the studies so far).
    follow_up = add_follow_up_study(arrivals, 0, seed=SEED, follow_up=2)
    new_patient = add_new_patient(arrivals, 3, seed=SEED)
    orthanc.store(follow_up + new_patient)
    studies_now = 3 + len(plans[3].studies)
    _wait_until_stable(orthanc, studies_now)
    intakes, refreshed = intake_then_refreshes(restarted)
    assert intakes == 1 and refreshed == {key[0], key[3]}

    # No miss: every stable study Orthanc announced was covered by an intake whose inventory lists it.
    assert _stable_study_events(orthanc) >= studies_now
    inventory = defs.resources["lake"].read_table("raw", "inventory_dicom_studies")
    assert len(inventory) == studies_now and set(inventory["patient_key"]) == {key[0], key[1], key[3]}
    # No duplicate: one patient run per (patient, input content); the key of patient 0 changed once.
    assert sorted(refresh_keys.values()) == sorted([key[0], key[1], key[0], key[3]])
    # No PHI in Dagster's storage: run keys and tags hold pseudonymous keys, ranges and counts only.
    for run in instance.get_runs():
        text = " ".join(f"{k}={v}" for k, v in run.tags.items())
        assert not any(plan.mrn in text for plan in plans)


def test_orthanc_outage_is_reported_backed_off_and_caught_up_from_the_cursor(orthanc, tmp_path, monkeypatch):
    import json

    from dagster import build_sensor_context

    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path / "home"))
    # One try per read: the sensor's own back-off is under test, not the client's per-request retries.
    defs = definitions_with(pacs=OrthancPacs(url=orthanc.url, max_retries=0))
    instance = DagsterInstance.ephemeral()
    sensor_def = defs.resolve_sensor_def("pacs_study_sensor")

    def tick(cursor):
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs, sensor_name=sensor_def.name, resources=defs.resources) as context:
            return sensor_def.evaluate_tick(context)

    first = tick(None)
    assert not first.run_requests
    last_seen = json.loads(first.cursor)["orthanc_last"]

    orthanc.stop()
    failed = tick(first.cursor)
    assert not failed.run_requests and "unavailable after 1 attempts" in failed.skip_message
    outage = json.loads(failed.cursor)
    assert outage["orthanc_last"] == last_seen and outage["pacs_outage"]["failures"] == 1  # the change cursor stays put
    waiting = tick(failed.cursor)  # within the back-off: no read at all, the outage reported again
    assert not waiting.run_requests and "failed reads" in waiting.skip_message and "next read in" in waiting.skip_message

    # Orthanc comes back with nothing new: the first read after the outage still asks for one intake, which rescans
    # the PACS (a study settling when Orthanc stopped never gets a StableStudy change).
    orthanc.start()
    time.sleep(max(0.0, outage["pacs_outage"]["retry_at"] - time.time()))
    (catch_up,) = tick(failed.cursor).run_requests
    assert catch_up.run_key.startswith("pacs-recovered-") and catch_up.tags["radplan/trigger"] == "pacs-recovered"
    # Without an outage, no new stable study means no request.
    assert not tick(first.cursor).run_requests

    # A study arrives after the outage; once the back-off is over the sensor reads from its cursor.
    orthanc.store(add_follow_up_study(tmp_path / "arrivals", 0, seed=SEED))
    _wait_until_stable(orthanc, 1)
    time.sleep(max(0.0, outage["pacs_outage"]["retry_at"] - time.time()))
    caught_up = tick(failed.cursor)
    (request,) = caught_up.run_requests
    assert request.run_key.startswith(f"pacs-changes-{last_seen + 1}-")
    assert "pacs_outage" not in json.loads(caught_up.cursor)
