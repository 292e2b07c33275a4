"""The dashboard on the shared 12-patient demo (the `demo_home` fixture): every patient page renders, the cohort
lists exactly the lake's patients, the CDS service answers for the EHR's own patient ids."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from radplan.pseudonym import DEMO_KEY, Pseudonymizer
from radplan_dashboard.accounts import UserStore
from radplan_dashboard.app import create_app
from radplan_dashboard.config import DashboardSettings
from radplan_dashboard.lakeview import read_table

from .conftest import PASSWORD, USERS, sign_in

pytestmark = pytest.mark.slow


@pytest.fixture()
def demo_copy(demo_home, tmp_path):
    """The demo's lake tables the dashboard reads, copied so its audit records and feedback stay out of the shared demo."""
    home = tmp_path / "home"
    for part in ("features", "exports", "deid/ehr_observations", "ops"):
        source = demo_home / "lake" / part
        if source.exists():
            shutil.copytree(source, home / "lake" / part)
    (home / "landing").symlink_to(demo_home / "landing")
    store = UserStore(home / "dashboard" / "users.json")
    for role, name in USERS.items():
        store.add(name, role, PASSWORD)
    return home


def test_dashboard_on_the_demo(demo_copy, demo_home):
    settings = DashboardSettings(home=demo_copy, session_secret=b"d" * 32, deid_key=DEMO_KEY)
    ehr_key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    settings.cds_clients_file.write_text(json.dumps({"clients": [{"iss": "https://ehr.test", "jwks": {"keys": [ehr_key.as_dict(private=False)]}}]}))
    lake = demo_copy / "lake"
    patients = sorted(p.name.split("=", 1)[1] for p in (lake / "features" / "patient_features").glob("patient_key=*"))
    recommendations = read_table(lake, "features", "patient_recommendations")
    assert patients
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        sign_in(client, "clinician")
        cohort = client.get("/cohort").text
        assert f"{len(patients)} of {len(patients)} patients" in cohort
        for key in patients:
            page = client.get(f"/patients/{key}")
            assert page.status_code == 200, key
            assert page.text.count('class="feedback"') == int((recommendations["patient_key"] == key).sum())
        engineer = TestClient(create_app(settings), base_url="http://127.0.0.1")
        sign_in(engineer, "data_engineer")
        assert engineer.get("/health").status_code == 200
        # The EHR's own ids: the Synthea patient ids in the demo's landing extracts.
        pseudonymizer = Pseudonymizer(DEMO_KEY)
        ids = pd.read_csv(next((demo_home / "landing" / "ehr" / "csv").rglob("patients*.csv")))["Id"].astype(str)
        mapped = {i: pseudonymizer.patient_key(i) for i in ids}
        with_recs = [i for i, key in mapped.items() if key in set(recommendations["patient_key"])]
        assert with_recs
        for ehr_id in with_recs[:3]:
            now = int(time.time())
            token = jwt.encode({"alg": "RS384", "kid": "k"}, {"iss": "https://ehr.test", "aud": "http://127.0.0.1/cds-services/radplan-recommendations",
                                                            "exp": now + 60, "iat": now, "jti": str(uuid.uuid4())}, ehr_key, algorithms=["RS384"])
            body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": {"patientId": ehr_id}}
            cards = client.post("/cds-services/radplan-recommendations", json=body, headers={"Authorization": f"Bearer {token}"}).json()["cards"]
            assert len(cards) == min(20, int((recommendations["patient_key"] == mapped[ehr_id]).sum()))
