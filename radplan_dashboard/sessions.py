"""Signed, expiring session cookies and CSRF tokens (itsdangerous; the secret lives under RADPLAN_HOME)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from radplan_dashboard.accounts import ROLES

SESSION_COOKIE = "radplan_session"
LOGIN_CSRF_COOKIE = "radplan_login_csrf"
SESSION_SALT = "radplan-dashboard-session"
LOGIN_SALT = "radplan-dashboard-login"


class SessionRefused(Exception):
    """A session cookie that cannot be used; ``reason`` is shown to the user and logged."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "expired" or "invalid"


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    source: str  # "local" or "oidc"
    csrf: str


class SessionCodec:
    def __init__(self, secret: bytes, ttl_s: int):
        self._serializer = URLSafeTimedSerializer(secret, salt=SESSION_SALT)
        self._login = URLSafeTimedSerializer(secret, salt=LOGIN_SALT)
        self.ttl_s = ttl_s

    def issue(self, user: str, role: str, source: str) -> tuple[str, Session]:
        session = Session(user, role, source, secrets.token_urlsafe(32))
        return self._serializer.dumps({"u": user, "r": role, "s": source, "c": session.csrf}), session

    def read(self, cookie: str) -> Session:
        try:
            payload = self._serializer.loads(cookie, max_age=self.ttl_s)
        except SignatureExpired:
            raise SessionRefused("your session has expired: sign in again", "expired") from None
        except BadSignature:
            # Any edit to the cookie (a changed role, user or expiry) breaks the signature.
            raise SessionRefused("your session cookie failed its signature check (altered or from another server): "
                                 "sign in again", "invalid") from None
        if not isinstance(payload, dict) or payload.get("r") not in ROLES or not payload.get("u") or not payload.get("c"):
            raise SessionRefused("your session cookie is incomplete: sign in again", "invalid")
        return Session(payload["u"], payload["r"], payload.get("s", "local"), payload["c"])

    def login_token(self) -> str:
        """A signed random value for the sign-in form's double-submit CSRF check (there is no session yet)."""
        return self._login.dumps(secrets.token_urlsafe(24))

    def login_token_valid(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field or not hmac.compare_digest(cookie, field):
            return False
        try:
            self._login.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return True


def csrf_matches(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted)
