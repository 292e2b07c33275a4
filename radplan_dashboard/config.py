"""Dashboard settings: the one place that reads the environment (the rest takes settings as parameters)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from radplan.lake import atomic_write_bytes
from radplan.pseudonym import load_key
from radplan.settings import lake_dir, landing_dir, radplan_home, variables_with_prefix

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
DEFAULT_SESSION_TTL_S = 8 * 3600
SECRET_BYTES = 32


@dataclass(frozen=True)
class DashboardSettings:
    home: Path
    session_secret: bytes
    deid_key: bytes  # the pipeline's pseudonymization key: maps an EHR's patient id to the lake's patient key
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    session_ttl_s: int = DEFAULT_SESSION_TTL_S
    secure_cookies: bool = False  # True behind TLS (a reverse proxy); plain http on loopback otherwise
    public_url: str | None = None  # base URL links in CDS cards point to; None: the request's own
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_role_claim: str = "radplan_roles"

    @property
    def lake(self) -> Path:
        return lake_dir(self.home)

    @property
    def landing(self) -> Path:
        return landing_dir(self.home)

    @property
    def feedback_dir(self) -> Path:
        # The folder the clinician_feedback asset reads (README "Clinician feedback").
        return self.landing / "feedback"

    @property
    def state_dir(self) -> Path:
        return self.home / "dashboard"

    @property
    def users_file(self) -> Path:
        return self.state_dir / "users.json"

    @property
    def cds_clients_file(self) -> Path:
        return self.state_dir / "cds_clients.json"

    @property
    def audit_dir(self) -> Path:
        return self.lake / "audit"

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id)


def session_secret_file(home: Path) -> Path:
    return home / "dashboard" / "session.key"


def load_or_create_session_secret(home: Path) -> bytes:
    """A random signing key kept under RADPLAN_HOME (mode 0600), created on first start: never in the repository."""
    path = session_secret_file(home)
    if path.exists():
        secret = path.read_bytes()
        if len(secret) >= SECRET_BYTES:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    secret = secrets.token_bytes(SECRET_BYTES)
    written = atomic_write_bytes(path, secret)
    os.chmod(written, 0o600)
    return secret


def settings_from_environment(home: Path | None = None) -> DashboardSettings:
    """RADPLAN_HOME (radplan.settings), the pipeline's key (radplan.pseudonym.load_key, RADPLAN_DEID_KEY or demo mode),
    and the RADPLAN_DASHBOARD_* / RADPLAN_OIDC_* variables (README "Dashboard")."""
    env = variables_with_prefix("RADPLAN_DASHBOARD_", "RADPLAN_OIDC_")
    home = (home or radplan_home()).resolve()
    secret_text = env.get("RADPLAN_DASHBOARD_SECRET", "")
    if secret_text and len(secret_text.encode()) < SECRET_BYTES:
        raise ValueError(f"RADPLAN_DASHBOARD_SECRET must be at least {SECRET_BYTES} bytes")
    secret = secret_text.encode() if secret_text else load_or_create_session_secret(home)
    return DashboardSettings(
        home=home,
        session_secret=secret,
        deid_key=load_key(),
        host=env.get("RADPLAN_DASHBOARD_HOST", DEFAULT_HOST),
        port=int(env.get("RADPLAN_DASHBOARD_PORT", DEFAULT_PORT)),
        session_ttl_s=int(env.get("RADPLAN_DASHBOARD_SESSION_TTL_S", DEFAULT_SESSION_TTL_S)),
        secure_cookies=env.get("RADPLAN_DASHBOARD_SECURE_COOKIES", "").lower() in {"1", "true", "yes"},
        public_url=env.get("RADPLAN_DASHBOARD_PUBLIC_URL") or None,
        oidc_issuer=env.get("RADPLAN_OIDC_ISSUER") or None,
        oidc_client_id=env.get("RADPLAN_OIDC_CLIENT_ID") or None,
        oidc_client_secret=env.get("RADPLAN_OIDC_CLIENT_SECRET") or None,
        oidc_role_claim=env.get("RADPLAN_OIDC_ROLE_CLAIM", "radplan_roles"),
    )
