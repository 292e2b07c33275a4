"""CDS Hooks 2.0 patient-view: requests posted as an EHR would (signed JWT, FHIR patient id in the context)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from radplan.audit import iter_records
from radplan_dashboard.lakeview import read_table

EHR_ISSUER = "https://ehr.hospital.test"
SERVICE = "/cds-services/radplan-recommendations"
BASE = "http://127.0.0.1"


@pytest.fixture()
def ehr_key():
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-signing-1"})


@pytest.fixture()
def cds_client(app, settings, ehr_key):
    settings.cds_clients_file.parent.mkdir(parents=True, exist_ok=True)
    settings.cds_clients_file.write_text(json.dumps({"clients": [{"iss": EHR_ISSUER, "jwks": {"keys": [ehr_key.as_dict(private=False)]}}]}))
    with TestClient(app, base_url=BASE) as client:
        yield client


def bearer(key, *, audience: str = BASE + SERVICE, issuer: str = EHR_ISSUER, expires_in: int = 300, jti: str | None = None) -> dict:
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "exp": now + expires_in, "iat": now, "jti": jti or str(uuid.uuid4())}
    return {"Authorization": "Bearer " + jwt.encode({"alg": "RS384", "kid": "ehr-signing-1"}, claims, key, algorithms=["RS384"])}


def hook(patient_id: str) -> dict:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": "https://ehr.hospital.test/fhir",
            "context": {"userId": "Practitioner/123", "patientId": patient_id}}


def test_discovery_lists_the_patient_view_service(app):
    with TestClient(app, base_url=BASE) as client:
        services = client.get("/cds-services").json()["services"]
    assert [(s["hook"], s["id"]) for s in services] == [("patient-view", "radplan-recommendations")]
    assert all(s["description"] and s["title"] for s in services)


def test_cards_for_the_ehr_patient_come_from_their_recommendations(cds_client, ehr_key, small_lake, settings):
    response = cds_client.post(SERVICE, json=hook(small_lake["ehr_ids"]["lung"]), headers=bearer(ehr_key))
    assert response.status_code == 200
    cards = response.json()["cards"]
    recs = read_table(small_lake["home"] / "lake", "features", "patient_recommendations", small_lake["keys"]["lung"]).sort_values("rank")
    assert len(cards) == len(recs) > 0
    for card, rec in zip(cards, recs.to_dict("records")):
        assert len(card["summary"]) <= 140 and rec["therapy"][:40] in card["summary"]
        assert card["indicator"] == {"avoid": "critical", "adjust_dose": "warning"}.get(rec["action"], "info")
        assert rec["rule_base_version"] in card["source"]["label"]
        assert card["links"][0]["url"].endswith(f"/patients/{small_lake['keys']['lung']}") and card["links"][0]["type"] == "absolute"
        uuid.UUID(card["uuid"])
    scored = [c for c, r in zip(cards, recs.to_dict("records")) if r["model_version"] == "3"]
    assert scored and all("model radplan-response v3" in c["source"]["label"] for c in scored)
    recommended = [c for c, r in zip(cards, recs.to_dict("records")) if r["action"] == "recommend"]
    assert recommended and all(c["suggestions"][0]["isRecommended"] and c["selectionBehavior"] == "at-most-one" for c in recommended)
    assert cards[0]["indicator"] == "critical"  # the clopidogrel alert ranks first
    audited = [r for r in iter_records(settings.audit_dir) if r["target"] == "cds-hooks/patient-view"]
    assert audited and audited[0]["patient_key"] == small_lake["keys"]["lung"] and audited[0]["who"]["cds_client"] == EHR_ISSUER


def test_a_long_therapy_name_is_cut_to_140_characters(small_lake):
    from radplan_dashboard import cds

    recs = read_table(small_lake["home"] / "lake", "features", "patient_recommendations", small_lake["keys"]["lung"])
    recs.loc[0, "therapy"] = "Clinical trial NCT00000000: " + "a very long title " * 20
    card = cds.card_for(recs.iloc[0].to_dict(), "http://x")
    assert len(card["summary"]) == 140 and card["summary"].endswith("…")


@pytest.mark.parametrize("who", ["unknown", "colorectal"])
def test_unknown_patients_and_patients_without_recommendations_get_no_cards(cds_client, ehr_key, small_lake, who):
    response = cds_client.post(SERVICE, json=hook(small_lake["ehr_ids"][who]), headers=bearer(ehr_key))
    assert response.status_code == 200 and response.json() == {"cards": []}


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"hookInstance": "x", "context": {"patientId": "1"}}).encode(), "'hook' must be 'patient-view'"),
    (json.dumps({"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "1"}}).encode(), "'hook' must be"),
    (json.dumps({"hook": "patient-view", "context": {"patientId": "1"}}).encode(), "'hookInstance'"),
    (json.dumps({"hook": "patient-view", "hookInstance": "x"}).encode(), "'context'"),
    (json.dumps({"hook": "patient-view", "hookInstance": "x", "context": {}}).encode(), "'context.patientId'"),
    (json.dumps({"hook": "patient-view", "hookInstance": "x", "context": {"patientId": 42}}).encode(), "'context.patientId'"),
])
def test_malformed_requests_are_400_with_a_reason(cds_client, ehr_key, body, reason):
    response = cds_client.post(SERVICE, content=body, headers={**bearer(ehr_key), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_requests_without_a_valid_ehr_token_are_refused(cds_client, ehr_key, small_lake):
    body = hook(small_lake["ehr_ids"]["lung"])
    stranger = RSAKey.generate_key(2048, parameters={"kid": "ehr-signing-1"})
    refused = {
        "no token": {},
        "unregistered issuer": bearer(ehr_key, issuer="https://other.test"),
        "wrong signing key": bearer(stranger),
        "wrong audience": bearer(ehr_key, audience=BASE + "/cds-services/other"),
        "expired": bearer(ehr_key, expires_in=-120),
    }
    for case, headers in refused.items():
        response = cds_client.post(SERVICE, json=body, headers=headers)
        assert response.status_code == 401, case
        assert response.json()["error"], case
    replayed = bearer(ehr_key, jti="once")
    assert cds_client.post(SERVICE, json=body, headers=replayed).status_code == 200
    again = cds_client.post(SERVICE, json=body, headers=replayed)
    assert again.status_code == 401 and "replay" in again.json()["error"]


def test_unknown_service_id_is_404(cds_client, ehr_key, small_lake):
    response = cds_client.post("/cds-services/nope", json=hook(small_lake["ehr_ids"]["lung"]), headers=bearer(ehr_key))
    assert response.status_code == 404
