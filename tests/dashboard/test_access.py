"""Sign-in, roles and sessions, checked on the server for every page and API call; bad sessions are refused."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer

from radplan.audit import iter_records, verify_chain
from radplan_dashboard.accounts import UserStore
from radplan_dashboard.sessions import SESSION_COOKIE, SESSION_SALT, SessionCodec

from .conftest import PASSWORD, USERS, csrf_of

CLINICIAN_PAGES = ["/cohort", "/api/cohort", "/patients/{lung}", "/patients/{lung}/slices/0.png", "/patients/{lung}/explanation.png",
                   "/patients/{lung}/recommendations.csv"]
ENGINEER_PAGES = ["/health"]
ADMIN_PAGES = ["/admin/users"]


def pages(paths, small_lake):
    return [p.format(lung=small_lake["keys"]["lung"]) for p in paths]


@pytest.mark.parametrize("role, allowed, refused", [
    ("clinician", CLINICIAN_PAGES, ENGINEER_PAGES + ADMIN_PAGES),
    ("data_engineer", ENGINEER_PAGES, CLINICIAN_PAGES + ADMIN_PAGES),
    ("administrator", ADMIN_PAGES, CLINICIAN_PAGES + ENGINEER_PAGES),
])
def test_each_role_sees_its_pages_and_is_refused_the_others(signed_in, small_lake, role, allowed, refused):
    client = signed_in(role)
    for path in pages(allowed, small_lake):
        assert client.get(path).status_code == 200, path
    for path in pages(refused, small_lake):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "you are signed in as" in response.text
        assert not any(key in response.text for key in small_lake["keys"].values())  # no patient data in the refusal


def test_no_session_redirects_pages_to_sign_in_and_refuses_the_api(app, small_lake):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/cohort", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert client.get("/api/cohort").status_code == 401
        assert client.get(f"/patients/{small_lake['keys']['lung']}", follow_redirects=False).status_code == 303


def test_wrong_password_and_unknown_user_get_the_same_refusal(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answers = []
        for name, password in ((USERS["clinician"], "wrong password here"), ("nobody-9", PASSWORD)):
            token = csrf_of(client.get("/login").text)
            response = client.post("/login", data={"username": name, "password": password, "csrf_token": token}, follow_redirects=False)
            answers.append((response.status_code, "Wrong user name or password." in response.text))
            assert SESSION_COOKIE not in response.cookies
        assert answers == [(401, True), (401, True)]


def test_sign_in_form_without_its_csrf_token_is_refused(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        client.get("/login")
        response = client.post("/login", data={"username": USERS["clinician"], "password": PASSWORD}, follow_redirects=False)
        assert response.status_code == 403
        assert SESSION_COOKIE not in response.cookies


def test_a_forged_role_in_the_cookie_is_refused_and_logged(signed_in, small_lake, caplog):
    client = signed_in("data_engineer")
    cookie = client.cookies[SESSION_COOKIE]
    body, timestamp, signature = cookie.rsplit(".", 2)  # itsdangerous: payload.timestamp.signature
    codec = URLSafeTimedSerializer(b"unused")
    payload = codec.load_payload(body.encode())
    assert payload["r"] == "data_engineer"
    payload["r"] = "clinician"
    client.cookies.set(SESSION_COOKIE, ".".join([codec.dump_payload(payload).decode(), timestamp, signature]))
    with caplog.at_level("WARNING", logger="radplan_dashboard"):
        response = client.get(f"/patients/{small_lake['keys']['lung']}", follow_redirects=False)
    assert response.status_code == 401
    assert "signature check" in response.text
    assert "Alerts" not in response.text
    assert any("session-invalid" in r.getMessage() for r in caplog.records)
    assert "max-age=0" in response.headers.get("set-cookie", "").lower()  # the bad cookie is cleared


def test_a_session_signed_with_another_secret_is_refused(signed_in, settings):
    client = signed_in("clinician")
    other = URLSafeTimedSerializer(b"x" * 32, salt=SESSION_SALT).dumps({"u": USERS["clinician"], "r": "clinician", "s": "local", "c": "t"})
    client.cookies.set(SESSION_COOKIE, other)
    assert client.get("/cohort", follow_redirects=False).status_code == 401


def test_an_expired_session_is_refused_with_a_clear_message(signed_in, monkeypatch, settings, caplog):
    client = signed_in("clinician")
    assert client.get("/cohort").status_code == 200
    # The same cookie the server issues, signed one TTL (and a bit) ago.
    real_time = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real_time() - settings.session_ttl_s - 5)
        stale, _ = SessionCodec(settings.session_secret, settings.session_ttl_s).issue(USERS["clinician"], "clinician", "local")
    client.cookies.set(SESSION_COOKIE, stale)
    with caplog.at_level("WARNING", logger="radplan_dashboard"):
        response = client.get("/cohort", follow_redirects=False)
    assert response.status_code == 401
    assert "your session has expired" in response.text
    assert "Cohort</h1>" not in response.text
    assert any("session-expired" in r.getMessage() for r in caplog.records)


def test_a_removed_account_or_changed_role_ends_the_session(signed_in, settings):
    client = signed_in("clinician")
    UserStore(settings.users_file).set_role(USERS["clinician"], "data_engineer")
    response = client.get("/cohort", follow_redirects=False)
    assert response.status_code == 401 and "role changed" in response.text


def test_unknown_and_malformed_patient_keys_are_404_with_a_reason_and_not_audited(signed_in, small_lake, settings):
    client = signed_in("clinician")
    for key, reason in ((small_lake["keys"]["unknown"], "no patient with this key"),
                        ("p<img src=x onerror=alert(1)>", "not a patient key"), ("p0123", "not a patient key")):
        response = client.get(f"/patients/{key}")
        assert response.status_code == 404, key
        assert reason in response.text
        assert "<img src=x" not in response.text  # echoed escaped, if at all
    assert not [r for r in iter_records(settings.audit_dir) if r.get("target") == "dashboard/patient-page"]


def test_patient_page_view_and_export_are_audited_with_who_and_the_patient_key(signed_in, small_lake, settings):
    client = signed_in("clinician")
    key = small_lake["keys"]["lung"]
    assert client.get(f"/patients/{key}").status_code == 200
    export = client.get(f"/patients/{key}/recommendations.csv")
    assert export.status_code == 200 and export.text.startswith("patient_key,recommendation_id")
    records = list(iter_records(settings.audit_dir))
    by_target = {r["target"]: r for r in records}
    for target in ("dashboard/patient-page", "dashboard/export-recommendations-csv"):
        record = by_target[target]
        assert record["action"] == "read" and record["patient_key"] == key
        assert record["who"]["user"] == USERS["clinician"] and record["who"]["role"] == "clinician"
        assert record["time"]
    assert verify_chain(settings.audit_dir) == []


def test_pages_carry_a_content_security_policy_and_the_cookie_is_httponly(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/login")
        token = csrf_of(page.text)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        response = client.post("/login", data={"username": USERS["clinician"], "password": PASSWORD, "csrf_token": token},
                               follow_redirects=False)
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "max-age=3600" in cookie


def test_administrator_adds_an_account_through_the_form_and_a_bad_one_is_refused(signed_in, settings):
    client = signed_in("administrator")
    token = csrf_of(client.get("/admin/users").text)
    added = client.post("/admin/users", data={"csrf_token": token, "username": "radiologist-7", "role": "clinician",
                                              "password": "a long enough password"}, follow_redirects=False)
    assert added.status_code == 303
    assert UserStore(settings.users_file).get("radiologist-7").role == "clinician"
    refused = client.post("/admin/users", data={"csrf_token": token, "username": "jane.doe@example.org", "role": "clinician",
                                                "password": "a long enough password"})
    assert refused.status_code == 400 and "pseudonymous id" in refused.text
    no_csrf = client.post("/admin/users", data={"username": "radiologist-8", "role": "clinician", "password": "a long enough password"})
    assert no_csrf.status_code == 403
    assert UserStore(settings.users_file).get("radiologist-8") is None


def test_the_dagster_ui_gate_admits_only_data_engineers(app, signed_in):
    with TestClient(app, base_url="http://127.0.0.1") as anonymous:
        assert anonymous.get("/auth/dagster").status_code == 401
        anonymous.cookies.set(SESSION_COOKIE, "forged.value.here")
        assert anonymous.get("/auth/dagster").status_code == 401
    assert signed_in("clinician").get("/auth/dagster").status_code == 403
    engineer = signed_in("data_engineer").get("/auth/dagster")
    assert engineer.status_code == 204 and engineer.headers["x-radplan-user"] == USERS["data_engineer"]


def test_sign_in_returns_only_to_a_path_on_this_host(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for target, expected in (("/patients/x", "/patients/x"), ("//evil.example/", "/cohort"), ("/\\evil.example", "/cohort"),
                                 ("https://evil.example/", "/cohort")):
            token = csrf_of(client.get("/login").text)
            response = client.post("/login", data={"username": USERS["clinician"], "password": PASSWORD, "csrf_token": token,
                                                   "next": target}, follow_redirects=False)
            assert response.headers["location"] == expected, target
