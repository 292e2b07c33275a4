"""PACS access behind one interface: a landing folder (embedded default) or Orthanc's REST API."""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import requests
from dagster import Backoff, ConfigurableResource, Jitter, RetryPolicy
from pydantic import Field

from radplan.errors import InvalidDicomError, PacsUnavailableError
from radplan.imaging.derived import is_radplan_output
from radplan.imaging.series import read_instance_header
from radplan.inventory import landing_files
from radplan.lake import atomic_path
from radplan.settings import Settings


@dataclass(frozen=True)
class StudyLocation:
    """Where one study lives in the PACS. Holds PHI (patient id): never log it."""

    source_patient_id: str
    study_ref: str
    files: tuple[str, ...] = ()
    # Identity of the study's content (instance UIDs/ids and sizes): equal for a re-sent identical study.
    content_fingerprint: str = ""
    # The PACS's revision of the study when it was listed as stable (Orthanc: its LastUpdate); "" while the study was
    # still settling or where the PACS has none. A stable study that gets another instance is no longer stable and
    # gets a later LastUpdate (a second or more later), so the same non-empty revision means the same instances
    # had arrived: OrthancPacs.list_studies(known=...) reuses the fingerprint.
    revision: str = ""

    def unchanged_at(self, revision: str) -> bool:
        """Whether a study now listed at ``revision`` still has this listing's content (and its fingerprint)."""
        return bool(revision) and self.revision == revision and bool(self.content_fingerprint)


def content_fingerprint(items: list[tuple[str, int]]) -> str:
    """Order-independent hash of (instance identifier, size) pairs."""
    digest = hashlib.sha256()
    for identifier, size in sorted(items):
        digest.update(f"{identifier}\x00{size}\n".encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class UnreadableFile:
    path: Path
    error: InvalidDicomError


class PacsResource(ConfigurableResource):
    """Common interface; use LandingFolderPacs or OrthancPacs."""

    def list_studies(self, known: Mapping[str, StudyLocation] | None = None) -> tuple[list[StudyLocation], list[UnreadableFile]]:
        """Every study in the PACS. ``known`` (study_ref -> the study as listed before) lets a PACS that tracks
        revisions skip re-reading unchanged studies; one that does not ignores it."""
        raise NotImplementedError

    def fetch_study(self, study: StudyLocation, dest: Path) -> list[Path]:
        raise NotImplementedError


class LandingFolderPacs(PacsResource):
    """DICOM files dropped in a folder tree; grouped into studies by UIDs, never by folder names."""

    folder: str = Field(description="Landing folder of DICOM files (RADPLAN_HOME/landing/dicom by default)")

    def iter_files(self) -> Iterator[Path]:
        yield from landing_files(Path(self.folder))

    def list_studies(self, known: Mapping[str, StudyLocation] | None = None) -> tuple[list[StudyLocation], list[UnreadableFile]]:
        studies: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        unreadable: list[UnreadableFile] = []
        for path in self.iter_files():
            try:
                header = read_instance_header(path)
            except InvalidDicomError as error:
                unreadable.append(UnreadableFile(path, error))
                continue
            studies.setdefault((header.patient_id, header.study_uid), []).append((str(path), header.sop_uid, path.stat().st_size))
        locations = [
            StudyLocation(
                source_patient_id=pid,
                study_ref=study_uid,
                files=tuple(sorted(path for path, _, _ in files)),
                # SOP UIDs and sizes, not paths or mtimes: a re-copied identical study keeps its fingerprint.
                content_fingerprint=content_fingerprint([(sop_uid, size) for _, sop_uid, size in files]),
            )
            for (pid, study_uid), files in sorted(studies.items())
        ]
        return locations, unreadable

    def fetch_study(self, study: StudyLocation, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        copied = []
        for index, source in enumerate(study.files):
            target = dest / f"{index:06d}.dcm"
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            copied.append(target)
        return copied


# Step-level retries of assets that read the PACS, on top of the per-request retries below: a PACS
# restart or network outage longer than those gets three more tries, 1, 3 and 7 times the base delay
# (default 5 s, each +- one base delay) later.
PACS_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=Settings.from_env().pacs_retry_delay_s, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)

# Failures worth another try: connection refused/reset, timeouts, a body cut off mid-transfer.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
TRANSIENT_STATUSES = {429}  # and every 5xx


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: about base * 2^(attempt-1), between 50 % and 100 % of it, capped."""
    return min(max_s, base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def redacted_url(url: str) -> str:
    """The URL without user and password (what errors and logs may name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _patient_id(study: dict) -> str:
    return study["PatientMainDicomTags"].get("PatientID", "")


def _revision(study: dict) -> str:
    """An Orthanc study's LastUpdate when the study is stable, else "" (StudyLocation.revision)."""
    return str(study.get("LastUpdate") or "") if study.get("IsStable") else ""


class OrthancPacs(PacsResource):
    """An Orthanc server over its REST API (study listing, instance download, /changes feed, storing radplan's SEG/RTSTRUCT)."""

    url: str = Field(description="Orthanc base URL, e.g. http://127.0.0.1:8042")
    username: str | None = Field(default=None, description="HTTP basic auth user (from a secret store in production)")
    password: str | None = Field(default=None, description="HTTP basic auth password")
    timeout_s: float = Field(default=30.0, description="Seconds to wait for a connection or for the next bytes of an answer")
    max_retries: int = Field(default=3, description="Retries of a request after a transient failure (refused, timeout, 5xx, 429)")
    backoff_s: float = Field(default=1.0, description="Wait before the first retry; doubled for each further one")
    max_backoff_s: float = Field(default=30.0, description="Longest wait between two tries")

    def _get(self, path: str, **params) -> requests.Response:
        return self._request("GET", path, params=params or None)

    def _request(self, method: str, path: str, *, params: dict | None = None, data: bytes | None = None) -> requests.Response:
        """A request with retries on transient failures; PacsUnavailableError after the last, HTTPError at once on 4xx."""
        auth = (self.username, self.password) if self.username else None
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                response = requests.request(method, f"{self.url.rstrip('/')}{path}", params=params, data=data, auth=auth, timeout=self.timeout_s)
            except TRANSIENT_ERRORS as error:
                # The class name only: requests' messages repeat the path, whose Orthanc ids hash patient identifiers.
                failure = type(error).__name__
            else:
                if response.ok:
                    return response
                if response.status_code not in TRANSIENT_STATUSES and response.status_code < 500:
                    # Not worth retrying (bad credentials, unknown id); named without the path, like below.
                    raise requests.HTTPError(f"PACS at {redacted_url(self.url)} answered HTTP {response.status_code}", response=response)
                failure = f"HTTP {response.status_code}"
            if attempt < attempts:
                time.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s))
        raise PacsUnavailableError(redacted_url(self.url), attempts, failure)

    def list_studies(self, known: Mapping[str, StudyLocation] | None = None) -> tuple[list[StudyLocation], list[UnreadableFile]]:
        """Every study (one request), and for each its source instances (two requests per study) for the fingerprint.

        With ``known``, a study listed stable at the same LastUpdate as before keeps its known fingerprint without
        those two requests. Orthanc before 1.12.1 does not move LastUpdate when an instance is deleted (nor write a
        change for it), so a caller passes ``known`` only where a later full listing reconciles deletions.
        """
        known = known or {}
        locations = []
        for study in self._get("/studies", expand="").json():
            before = known.get(study["ID"])
            revision = _revision(study)
            if before is not None and before.unchanged_at(revision):
                locations.append(StudyLocation(source_patient_id=_patient_id(study), study_ref=study["ID"],
                                               content_fingerprint=before.content_fingerprint, revision=revision))
            else:
                locations.append(self._location(study))
        return sorted(locations, key=lambda s: s.study_ref), []

    def study_location(self, orthanc_study_id: str) -> StudyLocation:
        return self._location(self._get(f"/studies/{orthanc_study_id}").json())

    def _location(self, study: dict) -> StudyLocation:
        # Orthanc's instance ids are hashes of the UIDs: a re-sent identical study keeps its fingerprint.
        instances = self.source_instances(study["ID"])
        return StudyLocation(
            source_patient_id=_patient_id(study),
            study_ref=study["ID"],
            content_fingerprint=content_fingerprint([(i["ID"], int(i.get("FileSize", 0))) for i in instances]),
            revision=_revision(study),
        )

    def fetch_study(self, study: StudyLocation, dest: Path) -> list[Path]:
        return self._download(self.source_instances(study.study_ref), dest)

    def _download(self, instances: list[dict], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for index, instance in enumerate(sorted(instances, key=lambda i: i["ID"])):
            target = dest / f"{index:06d}.dcm"
            response = self._get(f"/instances/{instance['ID']}/file")
            with atomic_path(target) as tmp:
                tmp.write_bytes(response.content)
            written.append(target)
        return written

    def study_series(self, orthanc_study_id: str) -> list[dict]:
        """The study's series as Orthanc lists them (``ID``, ``MainDicomTags`` with Modality and Manufacturer, ...)."""
        return self._get(f"/studies/{orthanc_study_id}/series").json()

    def source_series(self, orthanc_study_id: str) -> list[dict]:
        """The study's series without those radplan wrote back (its predicted SEG and RTSTRUCT)."""
        return [
            series for series in self.study_series(orthanc_study_id)
            if not is_radplan_output(series.get("MainDicomTags", {}).get("Modality"), series.get("MainDicomTags", {}).get("Manufacturer"))
        ]

    def source_instances(self, orthanc_study_id: str) -> list[dict]:
        """The study's instances, without radplan's own SEG/RTSTRUCT: what arrived from the hospital.

        The inventory's content fingerprint and the fetched study are built from these, so storing a
        prediction back changes neither, and a predicted SEG never becomes a reference mask.
        """
        sources = {series["ID"] for series in self.source_series(orthanc_study_id)}
        instances = self._get(f"/studies/{orthanc_study_id}/instances").json()
        return [instance for instance in instances if instance.get("ParentSeries") in sources]

    def fetch_series(self, orthanc_series_id: str, dest: Path) -> list[Path]:
        """One series' instances as files ``dest/000000.dcm``... (PHI: a temporary or raw-zone folder only)."""
        return self._download(self._get(f"/series/{orthanc_series_id}/instances").json(), dest)

    def study_ids(self) -> list[str]:
        return [str(study_id) for study_id in self._get("/studies").json()]

    def store_instance(self, path: Path) -> dict:
        """Store one DICOM file through the REST API (POST /instances); Orthanc's answer (ID, ParentSeries, Status)."""
        return self._request("POST", "/instances", data=Path(path).read_bytes()).json()

    def changes(self, since: int, limit: int = 100) -> dict:
        """One page of Orthanc's change feed: {'Changes': [...], 'Done': bool, 'Last': int}."""
        return self._get("/changes", since=since, limit=limit).json()
