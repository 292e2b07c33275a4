"""Arrival sensors: new studies in the PACS, new genomics files, new EHR extracts -> one intake run.

The intake (``landing_inventory``) rescans everything and lists the patients whose inputs changed;
the patient refresh sensor (sensors/patients.py) then runs exactly those patients' partitions. So an
arrival sensor only has to guarantee that an intake runs after every arrival, never twice for the
same one: run keys come from the change-feed range or a keyed fingerprint of the landing folder,
and the cursor is persisted by Dagster. Run keys, cursors and logs carry no PHI: file names and
Orthanc ids stay out; landing fingerprints are keyed hashes.
"""

from pathlib import Path

from dagster import AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from jobs import ingest_job
from radplan.inventory import landing_state
from radplan_assets.ingest import LANDING_TOKENS
from radplan_resources import DeidKeyResource, LandingZoneResource, OrthancPacs, PacsResource
from radplan_resources.pacs import LandingFolderPacs
from sensors.cursors import SensorCursor, read_change_feed

ORTHANC_PAGE_LIMIT = 1000


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
    cursor = SensorCursor.parse(context.cursor)
    since = int(cursor.get("orthanc_last", 0))
    feed = read_change_feed(pacs.changes, since, page_limit=ORTHANC_PAGE_LIMIT)
    next_cursor = cursor.with_value("orthanc_last", feed.last).dump()
    behind = "" if feed.caught_up else " (more changes left for the next tick)"
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
        tags={"radplan/trigger": "pacs-changes", "radplan/stable_studies": str(len(feed.stable_studies))},
    )
    return SensorResult(run_requests=[request], cursor=next_cursor)


@sensor(
    job=ingest_job,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.STOPPED,
    description="New or changed studies in the PACS: Orthanc's /changes feed (StableStudy events, cursor = the feed's Last) "
    "or, for the embedded landing-folder PACS, a fingerprint of landing/dicom. Requests one intake run per change.",
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
