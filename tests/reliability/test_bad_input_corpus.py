"""The bad-input corpus (tests/corpus) dropped into a landing zone beside good patients, through ingest and
per-patient preparation, in process on an ephemeral Dagster instance.

Every corpus case must be quarantined exactly once, at its expected stage, with a machine-readable reason
(file, stage, error class, message); nothing else may be quarantined; the good synthetic patients and the
corpus patient's good files ("controls") must come out complete; the raw bad files stay where they were
dropped; Dagster's events hold none of the identifiers in play.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from dagster import DagsterInstance, Definitions, load_asset_checks_from_modules, load_assets_from_modules, serialize_value

from radplan.lake import file_sha256
from radplan.privacy import CanaryMatcher, load_canaries
from radplan.pseudonym import DEMO_KEY, Pseudonymizer
from support import with_lake_io

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text())
BAD_CASES = [c for c in MANIFEST["cases"] if c["expect"] == "quarantine"]
CONTROLS = {c["id"]: c for c in MANIFEST["cases"] if c["expect"] == "keep"}
GOOD_PATIENTS = 2
# Stages that run after de-identification see de-identified copies: matched by pseudonymized UID, not bytes.
DEID_STAGES = {"volume", "lesion-mask"}
REASON_FIELDS = {"file", "stage", "error_class", "message"}


def _landing_path(home: Path, corpus_file: str) -> Path:
    return home / corpus_file  # corpus files live under "landing/...", like the landing zone under home


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    from jobs import ingest_job, patient_preparation_job
    from radplan.synth import generate_cohort
    from radplan_assets import ASSET_MODULES
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME
    from radplan_resources import DeidKeyResource, LakeResource, LandingFolderPacs, LandingZoneResource, MlflowResource, SparkResource

    home = tmp_path_factory.mktemp("bad-input-corpus")
    generate_cohort(home, GOOD_PATIENTS, seed=23, bad_inputs=False)
    shutil.copytree(CORPUS / "landing", home / "landing", dirs_exist_ok=True)
    defs = Definitions(
        assets=load_assets_from_modules(ASSET_MODULES),
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[ingest_job, patient_preparation_job],
        resources=with_lake_io({
            "lake": LakeResource(root=str(home / "lake")),
            "landing": LandingZoneResource(folder=str(home / "landing")),
            "pacs": LandingFolderPacs(folder=str(home / "landing" / "dicom")),
            "deid_key": DeidKeyResource(demo=True),
            # Required by the cohort/model assets in the same code location; preparation never uses them.
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "mlflow")),
            "spark": SparkResource(master="local[1]"),
        }),
    )
    instance = DagsterInstance.ephemeral()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance, run_config=quiet).success
    keys = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
    failed = {}  # patient key -> the failed steps and their errors, so a failure says what broke
    for key in keys:
        result = defs.resolve_job_def("patient_preparation_job").execute_in_process(
            instance=instance, partition_key=key, run_config=quiet, raise_on_error=False)
        if not result.success:
            failed[key] = [f"{event.step_key}: {event.event_specific_data.error.to_string()}"
                           for event in result.all_events if event.is_step_failure] or ["the run failed outside a step"]
    return {"home": home, "instance": instance, "keys": list(keys), "failed": failed, "lake": defs.resources["lake"]}


@pytest.fixture(scope="module")
def quarantine(corpus_run):
    root = corpus_run["home"] / "lake" / "quarantine"
    reasons = [json.loads(p.read_text()) | {"_folder": p.parent} for p in sorted(root.rglob("reason.json"))]
    lines = [json.loads(line) for p in sorted(root.rglob("*.rejected.jsonl")) for line in p.read_text().splitlines()]
    return reasons, lines


def _pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(DEMO_KEY)


def _expected_file_name(case: dict, home: Path) -> str | None:
    """For stages after de-identification: the name the quarantined copy has (pseudonymized UID)."""
    if case["stage"] not in DEID_STAGES:
        return None
    ds = pydicom.dcmread(_landing_path(home, case["files"][0]), stop_before_pixels=True)
    if case["level"] == "series":
        return _pseudonymizer().uid(ds.SeriesInstanceUID)
    return f"{_pseudonymizer().uid(ds.SOPInstanceUID)}.dcm"


def _matching_reasons(case: dict, reasons: list[dict], home: Path) -> list[dict]:
    expected_name = _expected_file_name(case, home)
    if expected_name is not None:
        return [r for r in reasons if r["stage"] == case["stage"] and r["file"] == expected_name]
    digest = file_sha256(_landing_path(home, case["files"][0]))
    return [r for r in reasons if r["sha256"] == digest]


def test_every_patient_run_succeeds(corpus_run):
    # Bad files are quarantined file by file: no patient run fails because of one (the corpus patient included).
    assert corpus_run["failed"] == {}
    assert len(corpus_run["keys"]) == GOOD_PATIENTS + 1


def test_every_bad_input_is_quarantined_exactly_once_with_a_reason(corpus_run, quarantine):
    home = corpus_run["home"]
    reasons, lines = quarantine
    tried: Counter = Counter()
    quarantined: Counter = Counter()
    matched_reason_folders: set[Path] = set()
    for case in BAD_CASES:
        if case["level"] == "lines":
            name = Path(case["files"][0]).name
            tried[case["format"]] += len(case["lines"])
            digest = file_sha256(_landing_path(home, case["files"][0]))  # the lake renames genomics files
            records = [r for r in lines if r["file"] == name or r.get("sha256") == digest]
            assert sorted(r["line"] for r in records) == case["lines"], case["id"]  # each bad line once, no good line
            for record in records:
                assert REASON_FIELDS <= set(record) and record["message"], case["id"]
                assert (record["stage"], record["error_class"]) == (case["stage"], case["error_class"]), case["id"]
            quarantined[case["format"]] += len(records)
            continue
        tried[case["format"]] += 1
        found = _matching_reasons(case, reasons, home)
        assert len(found) == 1, f"{case['id']}: quarantined {len(found)} times"
        reason = found[0]
        assert REASON_FIELDS <= set(reason) and reason["message"], case["id"]
        assert (reason["stage"], reason["error_class"]) == (case["stage"], case["error_class"]), case["id"]
        kept = reason["_folder"] / reason["file"]
        assert kept.exists(), f"{case['id']}: the quarantined copy is missing"
        if case["level"] == "series":
            assert len([p for p in kept.rglob("*.dcm")]) == len(case["files"]), case["id"]
        matched_reason_folders.add(reason["_folder"])
        quarantined[case["format"]] += 1
    # Nothing good was quarantined: every reason.json belongs to a corpus case, every rejected line too.
    assert {r["_folder"] for r in reasons} == matched_reason_folders
    corpus_line_files = {Path(c["files"][0]).name for c in BAD_CASES if c["level"] == "lines"}
    corpus_line_digests = {file_sha256(_landing_path(home, c["files"][0])) for c in BAD_CASES if c["level"] == "lines"}
    assert all(r["file"] in corpus_line_files or r.get("sha256") in corpus_line_digests for r in lines)
    print("\nformat        tried  quarantined")
    for fmt in sorted(tried):
        print(f"{fmt:<13} {tried[fmt]:>5}  {quarantined[fmt]:>11}")
    assert tried == quarantined
    assert sum(tried.values()) == sum(len(c["lines"]) if c["level"] == "lines" else 1 for c in BAD_CASES) >= 21


def test_raw_bad_files_stay_where_they_were_dropped(corpus_run):
    home = corpus_run["home"]
    for case in BAD_CASES:
        for name in case["files"]:
            assert file_sha256(_landing_path(home, name)) == file_sha256(CORPUS / name), name


def _corpus_key() -> str:
    return _pseudonymizer().patient_key(MANIFEST["patient_id"])


def test_the_corpus_patients_good_files_are_kept(corpus_run):
    lake, home, key = corpus_run["lake"], corpus_run["home"], _corpus_key()
    assert key in corpus_run["keys"]
    good_series = pydicom.dcmread(_landing_path(home, CONTROLS["dicom-control-good-series"]["files"][0]), stop_before_pixels=True)
    volumes = lake.read_table("features", "normalized_volumes", key)
    assert volumes["series_uid"].tolist() == [_pseudonymizer().uid(good_series.SeriesInstanceUID)]
    variants = lake.read_table("features", "variants", key)
    assert len(variants) > 1000 and variants["sample"].unique().tolist() == [key]  # PharmCAT's example: 1261 rows
    patients = lake.read_table("deid", "ehr_patients", key)
    assert len(patients) == 1  # the patients file with a byte-order mark was read


def test_good_patients_are_complete(corpus_run):
    lake, home = corpus_run["lake"], corpus_run["home"]
    truth = json.loads((home / "truth" / "truth.json").read_text())["patients"]
    by_key = {_pseudonymizer().patient_key(mrn): patient for mrn, patient in truth.items()}
    assert len(by_key) == GOOD_PATIENTS and set(by_key) <= set(corpus_run["keys"])
    for key, patient in by_key.items():
        studies = len(patient["studies"])
        assert len(lake.read_table("features", "normalized_volumes", key)) == studies
        assert len(lake.read_table("features", "lesion_masks", key)) == studies
        assert len(lake.read_table("features", "variants", key)) > 0
        assert len(lake.read_table("deid", "notes", key)) == len(patient["notes"])
        clinical = lake.read_table("features", "clinical_features", key)
        assert clinical["cancer_type"].iloc[0] == patient["cancer_type"]


def _corpus_canaries(home: Path) -> list[str]:
    """Identifiers the corpus brings: its patient id, original DICOM UIDs and names, the FHIR patient's
    identifiers, and the corpus file names (messages name files; file names can carry PHI)."""
    canaries = {MANIFEST["patient_id"]}
    for case in MANIFEST["cases"]:
        for name in case["files"]:
            canaries.add(Path(name).name)
            if case["format"] == "dicom":
                try:
                    ds = pydicom.dcmread(_landing_path(home, name), stop_before_pixels=True)
                except Exception:  # noqa: BLE001 - the unreadable cases have nothing to collect
                    continue
                for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientName"):
                    if ds.get(keyword):
                        canaries.add(str(ds.get(keyword)))
    fhir = (CORPUS / "landing" / "ehr" / "fhir" / "Patient.corpus-invalid.ndjson").read_text().splitlines()
    patient = json.loads(fhir[2])
    canaries |= {patient["name"][0]["family"], *patient["name"][0]["given"]}
    return sorted(c for c in canaries if len(c) >= 4)


def test_dagster_events_hold_no_identifiers(corpus_run):
    home, instance = corpus_run["home"], corpus_run["instance"]
    matcher = CanaryMatcher(load_canaries(home / "truth" / "phi_canaries.json") + _corpus_canaries(home))
    runs = instance.get_runs()
    assert len(runs) == GOOD_PATIENTS + 2  # ingest + one preparation run per patient
    texts = [serialize_value(record) for run in runs for record in instance.all_logs(run.run_id)]
    quarantine_events = [t for t in texts if "quarantine_ids" in t]
    assert quarantine_events  # the quarantine summaries did reach Dagster (ids, stages, error classes)
    hits = sorted({hit for text in texts for hit in matcher.find(text)})
    assert hits == []
