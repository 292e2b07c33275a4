"""Arrival sensors: new studies in the PACS, new genomics files, new EHR extracts -> one intake run.

The intake (``landing_inventory``) rescans everything and lists the patients whose inputs changed;
the patient refresh sensor (sensors/patients.py) then runs exactly those patients' partitions. So an
arrival sensor only has to guarantee that an intake runs after every arrival, never twice for the
same one: run keys come from the change-feed range or a keyed fingerprint of the landing folder,
and the cursor is persisted by Dagster. Run keys, cursors and logs carry no PHI: file names and
Orthanc ids stay out; landing fingerprints are keyed hashes.
"""

import time
from pathlib import Path

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from jobs import ingest_job
from radplan.errors import PacsUnavailableError
from radplan.inventory import landing_state
from radplan.settings import Settings
from radplan_assets.ingest import LANDING_TOKENS, PACS_FEED_TRIGGER, TRIGGER_TAG
from radplan_resources import DeidKeyResource, LandingZoneResource, OrthancPacs, PacsResource
from radplan_resources.pacs import LandingFolderPacs
from sensors.cursors import PacsOutage, SensorCursor, pacs_outage_delay, read_change_feed

ORTHANC_PAGE_LIMIT = 1000
# Minimum seconds between ticks of the sensors on a new study's path (RADPLAN_SENSOR_INTERVAL_S, default 1).
# dagster-daemon looks at its sensors once per 5-second loop, in shuffled order, and skips a sensor whose last tick
# is younger than its minimum: with a minimum of 5 s, a sensor evaluated a little earlier in this loop than in the
# last was skipped, so the chain's sensors ticked every 5 or 10 s. With 1 s they tick on every loop.
SENSOR_INTERVAL_S = Settings.from_env().sensor_interval_s
DAEMON_SENSOR_LOOP_S = 5  # dagster-daemon's sensor loop (dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME)
# While the PACS is unreachable, reads back off from here (doubled per failed read, at most 120 s).
PACS_OUTAGE_BASE_DELAY_S = max(SENSOR_INTERVAL_S, DAEMON_SENSOR_LOOP_S)


def _seen_by_latest_intake(context: SensorEvaluationContext, name: str, token: str) -> bool:
    """Whether the latest intake already scanned this exact state of the folders (another sensor asked for it)."""
    event = context.instance.get_latest_materialization_event(AssetKey("landing_inventory"))
    if event is None or event.asset_materialization is None:
        return False
    entry = event.asset_materialization.metadata.get(LANDING_TOKENS)
    return entry is not None and entry.value.get(name) == token


def _folder_tick(context: SensorEvaluationContext, deid_key: DeidKeyResource, name: str, folders: list[Path]) -> SensorResult:
    """One intake request per change of a landing folder (keyed fingerprint as run key and cursor).

    No request when the latest intake saw this very state: a patient arriving in every modality at
    once then costs one intake, not one per sensor.
    """
    token, count = landing_state(deid_key.pseudonymizer().token, folders)
    cursor = SensorCursor.parse(context.cursor)
    if cursor.get("fingerprint") == token:
        return SensorResult(skip_reason=SkipReason(f"no change in {count} {name} landing files"))
    if _seen_by_latest_intake(context, name, token):
        return SensorResult(
            skip_reason=SkipReason(f"{name} landing files changed ({count} files), and the latest intake already scanned them"),
            cursor=cursor.with_value("fingerprint", token).dump(),
        )
    context.log.info(f"{name} landing folder changed ({count} files): requesting intake")
    return SensorResult(
        run_requests=[RunRequest(run_key=f"landing-{name}-{token}", tags={"radplan/trigger": f"landing-{name}"})],
        cursor=cursor.with_value("fingerprint", token).dump(),
    )


def _orthanc_tick(context: SensorEvaluationContext, pacs: OrthancPacs) -> SensorResult:
    """Read the change feed from the cursor. While the PACS is unreachable, each tick reports the outage as its skip
    reason and the reads back off (the tick interval, doubled per failed read); the change cursor stays where it
    was, so the first read after the outage catches up on everything stored meanwhile."""
    cursor = SensorCursor.parse(context.cursor)
    since = int(cursor.get("orthanc_last", 0))
    outage, now = PacsOutage.from_cursor(cursor), time.time()
    if outage is not None and now < outage.retry_at:
        return SensorResult(skip_reason=SkipReason(
            f"PACS unreachable for {now - outage.since:.0f} s ({outage.failures} failed reads); "
            f"next read in {outage.retry_at - now:.0f} s, from change {since + 1}"
        ))
    try:
        feed = read_change_feed(pacs.changes, since, page_limit=ORTHANC_PAGE_LIMIT)
    except PacsUnavailableError as error:
        failures = (outage.failures if outage else 0) + 1
        delay = pacs_outage_delay(failures, PACS_OUTAGE_BASE_DELAY_S)
        outage = PacsOutage(outage.since if outage else now, failures, now + delay)
        report = f"{error}; unreachable for {now - outage.since:.0f} s, next read in {delay:.0f} s, from change {since + 1}"
        context.log.warning(report)
        return SensorResult(skip_reason=SkipReason(report), cursor=outage.into(cursor).dump())
    if outage is not None:
        context.log.info(f"PACS reachable again after {now - outage.since:.0f} s: catching up from change {since + 1}")
    next_cursor = cursor.without("pacs_outage").with_value("orthanc_last", feed.last).dump()
    behind = "" if feed.caught_up else " (more changes left for the next tick)"
    if not feed.stable_studies and outage is not None:
        # Orthanc keeps a study that is still settling in memory only: one stored just before Orthanc stopped gets no
        # StableStudy change after the restart (seen with Orthanc 1.10.1 in tests/production/test_daemon_operations.py).
        # The intake rescans the whole PACS, so one intake after every outage finds such a study.
        context.log.info(f"changes {since + 1}..{feed.last}: no stable study after the outage: requesting a catch-up intake")
        request = RunRequest(run_key=f"pacs-recovered-{int(outage.since)}-{feed.last}", tags={"radplan/trigger": "pacs-recovered"})
        return SensorResult(run_requests=[request], cursor=next_cursor)
    if not feed.stable_studies:
        return SensorResult(
            skip_reason=SkipReason(f"changes {since + 1}..{feed.last}: {feed.events_read} events, no stable study{behind}"),
            cursor=next_cursor,
        )
    context.log.info(
        f"changes {since + 1}..{feed.last}: {len(feed.stable_studies)} stable studies in {feed.pages} pages"
        f"{' after an Orthanc database restart' if feed.restarted else ''}{behind}: requesting intake"
    )
    request = RunRequest(
        run_key=feed.run_key,
        tags={TRIGGER_TAG: PACS_FEED_TRIGGER, "radplan/stable_studies": str(len(feed.stable_studies))},
    )
    return SensorResult(run_requests=[request], cursor=next_cursor)


@sensor(
    job=ingest_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="New or changed studies in the PACS: Orthanc's /changes feed (StableStudy events, cursor = the feed's Last) "
    "or, for the embedded landing-folder PACS, a fingerprint of landing/dicom. Requests one intake run per change. "
    "While Orthanc is unreachable, each tick reports the outage and reads back off; the cursor stays, the next read catches up, "
    "and requests one intake even without a stable study (a study settling when Orthanc stopped gets no StableStudy change).",
)
def pacs_study_sensor(
    context: SensorEvaluationContext, pacs: PacsResource, landing: LandingZoneResource, deid_key: DeidKeyResource
) -> SensorResult:
    if isinstance(pacs, OrthancPacs):
        return _orthanc_tick(context, pacs)
    if isinstance(pacs, LandingFolderPacs):
        return _folder_tick(context, deid_key, "dicom", landing.watched_folders(pacs)["dicom"])
    raise TypeError(f"pacs_study_sensor does not know how to watch a {type(pacs).__name__}")


@sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="New or changed VCF/BAM/CRAM files in landing/genomics: requests one intake run per change.",
)
def genomics_landing_sensor(context: SensorEvaluationContext, landing: LandingZoneResource, deid_key: DeidKeyResource) -> SensorResult:
    return _folder_tick(context, deid_key, "genomics", landing.watched_folders()["genomics"])


@sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="New or changed EHR extracts (Synthea CSV, FHIR NDJSON) in landing/ehr: requests one intake run per change.",
)
def ehr_landing_sensor(context: SensorEvaluationContext, landing: LandingZoneResource, deid_key: DeidKeyResource) -> SensorResult:
    return _folder_tick(context, deid_key, "ehr", landing.watched_folders()["ehr"])
