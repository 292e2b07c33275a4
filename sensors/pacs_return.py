"""New stable studies in Orthanc -> the champion's SEG and RTSTRUCT stored back (pacs_segmentation_job).

No feedback loop: storing the SEG/RTSTRUCT makes Orthanc announce the study as changed (a new
StableStudy event), but the request's run key is a keyed hash of the study and of the instances
that came from the hospital (``OrthancPacs.source_instances``: radplan's own series left out). The
event our own objects cause therefore asks for the run key that already ran, which Dagster drops;
only new hospital instances in the study (a further CT series) make a new key. Cursors, run keys
and run configs hold keyed tokens and the feed's sequence numbers only: no Orthanc id, UID or name.
"""

import requests
from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from jobs import pacs_segmentation_job
from radplan_assets.pacs_return import SEGMENTED_MODALITIES, STUDY_TOKEN_PURPOSE
from radplan_resources import DeidKeyResource, OrthancPacs, PacsResource
from radplan_resources.pacs import content_fingerprint
from sensors.cursors import SensorCursor, read_change_feed
from sensors.landing import ORTHANC_PAGE_LIMIT


def _segmentation_request(pacs: OrthancPacs, pseudonymizer, study_id: str) -> RunRequest | None:
    """One run request for a study holding a CT series from the hospital; None for any other study or a deleted one."""
    try:
        series = pacs.source_series(study_id)
        if not any(s.get("MainDicomTags", {}).get("Modality") in SEGMENTED_MODALITIES for s in series):
            return None
        instances = pacs.source_instances(study_id)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return None  # deleted since the event
        raise
    token = pseudonymizer.token(STUDY_TOKEN_PURPOSE, study_id)
    content = pseudonymizer.token("pacs-return-content", content_fingerprint([(i["ID"], int(i.get("FileSize", 0))) for i in instances]), 24)
    return RunRequest(
        run_key=f"pacs-seg-{token}-{content}",
        run_config={"ops": {"pacs_lesion_segmentations": {"config": {"study_tokens": [token]}}}},
        tags={"radplan/trigger": "pacs-stable-study"},
    )


@sensor(
    job=pacs_segmentation_job,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.STOPPED,
    description="Orthanc's /changes feed (StableStudy, own cursor): one pacs_segmentation_job run per study with CT from the "
    "hospital whose content is new; radplan's own SEG/RTSTRUCT do not count as new content (no feedback loop).",
)
def pacs_segmentation_sensor(context: SensorEvaluationContext, pacs: PacsResource, deid_key: DeidKeyResource) -> SensorResult:
    if not isinstance(pacs, OrthancPacs):
        return SensorResult(skip_reason=SkipReason(f"results go back through Orthanc's REST API; the PACS is a {type(pacs).__name__}"))
    cursor = SensorCursor.parse(context.cursor)
    since = int(cursor.get("orthanc_last", 0))
    feed = read_change_feed(pacs.changes, since, page_limit=ORTHANC_PAGE_LIMIT)
    next_cursor = cursor.with_value("orthanc_last", feed.last).dump()
    pseudonymizer = deid_key.pseudonymizer()
    requests_ = [r for r in (_segmentation_request(pacs, pseudonymizer, study) for study in feed.stable_studies) if r is not None]
    if not requests_:
        return SensorResult(
            skip_reason=SkipReason(f"changes {since + 1}..{feed.last}: {len(feed.stable_studies)} stable studies, none with a CT series to segment"),
            cursor=next_cursor,
        )
    context.log.info(f"changes {since + 1}..{feed.last}: {len(requests_)} stable studies with CT: requesting segmentation")
    return SensorResult(run_requests=requests_, cursor=next_cursor)
