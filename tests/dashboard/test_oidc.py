"""OpenID Connect sign-in through Authlib against a small provider started on loopback (tests/dashboard/oidc_provider.py)."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import requests
from fastapi.testclient import TestClient

from radplan_dashboard.accounts import oidc_username
from radplan_dashboard.app import create_app
from radplan_dashboard.sessions import SESSION_COOKIE

from .oidc_provider import CLIENT_ID, CLIENT_SECRET, LoopbackOidcProvider


def code_flow(client: TestClient):
    """Browser steps of the authorization-code flow: dashboard -> provider (auto-approves) -> dashboard callback."""
    start = client.get("/login/oidc", follow_redirects=False)
    assert start.status_code == 302, start.text
    at_provider = requests.get(start.headers["location"], allow_redirects=False, timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    callback = urlsplit(at_provider.headers["location"])
    return client.get(f"{callback.path}?{callback.query}", follow_redirects=False)


@pytest.fixture()
def provider():
    with LoopbackOidcProvider() as running:
        yield running


@pytest.fixture()
def oidc_app(settings, provider):
    return create_app(replace(settings, oidc_issuer=provider.issuer, oidc_client_id=CLIENT_ID, oidc_client_secret=CLIENT_SECRET))


def test_single_sign_on_gives_a_session_with_the_role_from_the_id_token(oidc_app, provider):
    with TestClient(oidc_app, base_url="http://127.0.0.1") as client:
        assert "single sign-on" in client.get("/login").text
        done = code_flow(client)
        assert done.status_code == 303 and done.headers["location"] == "/cohort"
        assert SESSION_COOKIE in client.cookies
        page = client.get("/cohort")
        assert page.status_code == 200
        # The user is known by a pseudonymous id derived from issuer and subject, never by a name from the provider.
        assert oidc_username(provider.issuer, "user-42") in page.text
        assert client.get("/health").status_code == 403


def test_single_sign_on_without_a_radplan_role_is_refused(oidc_app, provider):
    provider.user_claims = {"sub": "user-7", "radplan_roles": ["nurse"]}
    with TestClient(oidc_app, base_url="http://127.0.0.1") as client:
        done = code_flow(client)
        assert done.status_code == 403 and "grants no radplan role" in done.text
        assert SESSION_COOKIE not in client.cookies


def test_a_callback_with_a_forged_state_is_refused(oidc_app, provider):
    with TestClient(oidc_app, base_url="http://127.0.0.1") as client:
        client.get("/login/oidc", follow_redirects=False)
        response = client.get("/auth/oidc/callback?code=stolen&state=forged", follow_redirects=False)
        assert response.status_code == 401 and "single sign-on failed" in response.text
        assert SESSION_COOKIE not in client.cookies


def test_without_configuration_single_sign_on_is_off(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert "single sign-on" not in client.get("/login").text
        assert client.get("/login/oidc").status_code == 404
