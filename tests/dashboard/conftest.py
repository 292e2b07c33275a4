"""A small hand-written lake for the dashboard tests (the demo takes minutes; one slow test reads it).

Patients are real FHIR Patient ids from the shared Synthea bulk export, keyed with the demo key as the pipeline
keys them; recommendations come from the real rule base and the shared ClinicalTrials.gov records; the image is
the IBSI soft-tissue-sarcoma CT with its published mask.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from radplan.decision.recommend import recommend_for_patient
from radplan.decision.rules import load_rule_base
from radplan.decision.trials import load_trial_catalog
from radplan.monitoring import drift_table
from radplan.pseudonym import DEMO_KEY, Pseudonymizer
from radplan_dashboard.accounts import ADMINISTRATOR, CLINICIAN, DATA_ENGINEER, UserStore
from radplan_dashboard.app import create_app
from radplan_dashboard.config import DashboardSettings

PASSWORD = "correct horse battery staple"
USERS = {CLINICIAN: "oncologist-03", DATA_ENGINEER: "pipeline-eng-1", ADMINISTRATOR: "admin-1"}
ATTRIBUTIONS = [{"feature": "alt_egfr_sensitizing", "attribution": 0.34}, {"feature": "ecog", "attribution": -0.11}]


def fhir_patient_ids(shared_data: Path, n: int) -> list[str]:
    lines = (shared_data / "ehr" / "synthea_fhir_bulk" / "Patient.ndjson").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines[:n]]


def write_partition(lake: Path, zone: str, table: str, key: str, frame: pd.DataFrame) -> None:
    # The pipeline's hive layout: the partition value is the folder name, not a column of the file.
    folder = lake / zone / table / f"patient_key={key}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame.drop(columns=["patient_key"], errors="ignore"), preserve_index=False),
                   folder / "part-0.parquet")


def lung_facts(key: str) -> dict:
    return {"patient_key": key, "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "age_years": 58.0, "sex": "M",
            "prior_lines_of_therapy": 0, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False,
            "actionable_alterations": ["EGFR L858R"], "current_medications": ["clopidogrel", "omeprazole"],
            "pgx_CYP2C19_phenotype": "Poor Metabolizer", "pgx_CYP2C19_diplotype": "*2/*2",
            "pgx_DPYD_phenotype": None, "pgx_DPYD_activity_score": None, "lesion_count": 1,
            "total_lesion_volume_ml": 17.1, "stratum": 1}


def breast_facts(key: str) -> dict:
    return {"patient_key": key, "cancer_type": "breast", "stage": "II", "ecog": 0, "age_years": 47.0, "sex": "F",
            "prior_lines_of_therapy": 0, "alt_erbb2": True, "actionable_alterations": ["ERBB2 amplification"],
            "current_medications": [], "pgx_CYP2C19_phenotype": "Normal Metabolizer", "pgx_CYP2C19_diplotype": "*1/*1",
            "lesion_count": 0, "stratum": 2}


def colorectal_facts(key: str) -> dict:
    return {"patient_key": key, "cancer_type": "colorectal", "stage": "III", "ecog": None, "age_years": 66.0, "sex": "F",
            "prior_lines_of_therapy": 1, "actionable_alterations": [], "current_medications": [], "stratum": 0}


@pytest.fixture(scope="session")
def small_lake_template(tmp_path_factory, shared_data) -> dict:
    """Built once per session; each test gets its own copy (``small_lake``)."""
    home = tmp_path_factory.mktemp("dashboard-home")
    lake = home / "lake"
    ids = fhir_patient_ids(shared_data, 4)
    pseudonymizer = Pseudonymizer(DEMO_KEY)
    keys = [pseudonymizer.patient_key(i) for i in ids]
    lung, breast, colorectal = keys[:3]
    rule_base = load_rule_base()
    trials = load_trial_catalog([shared_data / "trials"])
    predictions = pd.DataFrame([{"patient_key": lung, "probability": 0.66, "ci_low": 0.5, "ci_high": 0.79,
                                 "top_attributions": json.dumps(ATTRIBUTIONS), "model_name": "radplan-response", "model_version": "3"}])
    all_facts = {lung: lung_facts(lung), breast: breast_facts(breast), colorectal: colorectal_facts(colorectal)}
    for key, facts in all_facts.items():
        write_partition(lake, "features", "patient_features", key, pd.DataFrame([{k: v for k, v in facts.items() if k != "stratum"}]))
    # The colorectal patient has features but no recommendation run yet.
    for key in (lung, breast):
        recs = recommend_for_patient(all_facts[key], rule_base, model_predictions=predictions, trials=trials,
                                     versions={"knowledge_base_version": "kb-test", "model_name": "radplan-response", "model_version": "3"})
        write_partition(lake, "features", "patient_recommendations", key, recs)
    # Imaging for the lung patient: the IBSI CT and its mask, where normalized_volumes/lesion_masks point.
    nifti = shared_data / "imaging" / "ibsi_sts_002" / "nifti"
    volumes = lake / "features" / "volumes" / lung
    volumes.mkdir(parents=True)
    shutil.copy(nifti / "CT_image.nii.gz", volumes / "ct.nii.gz")
    shutil.copy(nifti / "CT_mask.nii.gz", volumes / "ct_mask.nii.gz")
    write_partition(lake, "features", "normalized_volumes", lung, pd.DataFrame([
        {"series_uid": "2.25.1", "volume_path": f"features/volumes/{lung}/ct.nii.gz", "modality": "CT"}]))
    write_partition(lake, "features", "lesion_masks", lung, pd.DataFrame([
        {"image_series_uid": "2.25.1", "mask_path": f"features/volumes/{lung}/ct_mask.nii.gz"}]))
    # Cohort tables: predictions, strata, drift (current cohort vs a shifted reference).
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"patient_key": [lung, breast], "probability": [0.66, 0.31],
                                                      "ci_low": [0.5, 0.2], "ci_high": [0.79, 0.45]})),
                   lake / "features" / "response_predictions.parquet")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"patient_key": keys[:3], "stratum": [1, 2, 0]})),
                   lake / "features" / "patient_strata.parquet")
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"age_years": rng.normal(60, 8, 60), "ecog": rng.integers(0, 2, 60).astype(float)})
    current = pd.DataFrame({"age_years": rng.normal(70, 8, 60), "ecog": rng.integers(0, 2, 60).astype(float)})
    pq.write_table(pa.Table.from_pandas(drift_table(reference, current, psi_threshold=0.25)), lake / "features" / "feature_drift.parquet")
    (home / "landing" / "genomics").mkdir(parents=True)
    (home / "landing" / "genomics" / "sample.vcf.gz").write_bytes(b"placeholder: only its time is read")
    (lake / "exports").mkdir(parents=True)
    (lake / "exports" / "model_report.json").write_text(json.dumps({"response_model": {"name": "radplan-response", "mlflow_version": "3",
                                                                                        "alias": "champion", "trained": True}}))
    store = UserStore(home / "dashboard" / "users.json")
    for role, name in USERS.items():
        store.add(name, role, PASSWORD)
    return {"home": home, "keys": {"lung": lung, "breast": breast, "colorectal": colorectal, "unknown": keys[3]},
            "ehr_ids": {"lung": ids[0], "breast": ids[1], "colorectal": ids[2], "unknown": ids[3]}}


@pytest.fixture()
def small_lake(tmp_path, small_lake_template) -> dict:
    home = tmp_path / "home"
    shutil.copytree(small_lake_template["home"], home)
    return {**small_lake_template, "home": home}


@pytest.fixture()
def settings(small_lake) -> DashboardSettings:
    home = small_lake["home"]
    return DashboardSettings(home=home, session_secret=b"s" * 32, deid_key=DEMO_KEY, session_ttl_s=3600)


@pytest.fixture()
def app(settings):
    return create_app(settings)


def sign_in(client: TestClient, role: str) -> TestClient:
    page = client.get("/login")
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = client.post("/login", data={"username": USERS[role], "password": PASSWORD, "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def csrf_of(page_html: str) -> str:
    return page_html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


@pytest.fixture()
def signed_in(app):
    """``signed_in(role)`` -> a TestClient with that role's session cookie."""
    clients = []

    def make(role: str) -> TestClient:
        client = TestClient(app, base_url="http://127.0.0.1")
        clients.append(client)
        return sign_in(client, role)

    yield make
    for client in clients:
        client.close()
