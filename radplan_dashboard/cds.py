"""CDS Hooks 2.0 ``patient-view`` service: cards from the latest recommendation table for the EHR's patient.

The EHR sends its own patient id (``context.patientId``); the lake knows patients only by their pseudonymous key,
which is the HMAC of that id under the deployment's de-identification key (``radplan.pseudonym``), so the service
derives the key with the same key and the same function as the pipeline. An id the lake does not know answers with
no cards (the EHR shows nothing), never an error.

EHRs authenticate with the JWT bearer token of CDS Hooks 2.0 (section "Trusting CDS Clients"): each trusted client
is registered in ``$RADPLAN_HOME/dashboard/cds_clients.json`` with its issuer and public keys; the token must be
signed by one of them, name this service's URL as audience, carry ``exp`` and ``jti`` and not be replayed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from radplan.decision.export import ACTION_LABELS

SERVICE_ID = "radplan-recommendations"
HOOK = "patient-view"
MAX_SUMMARY_CHARS = 140
INDICATOR = {"avoid": "critical", "adjust_dose": "warning"}  # every other action: info
CARD_NAMESPACE = uuid.UUID("0c8b3f0e-4b8e-5d7a-9c61-6f2d3a1e5b47")  # fixed: a card keeps its uuid across requests
ALLOWED_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
MAX_CARDS = 20


class HookRequestError(ValueError):
    """A malformed hook request (answered 400 with this reason)."""


class ClientRefused(PermissionError):
    """A request without a valid CDS client token (answered 401 with this reason)."""


def discovery() -> dict:
    return {"services": [{
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "radplan treatment recommendations",
        "description": "Ranked therapy recommendations, pharmacogenomic and interaction alerts and trial pre-screen "
                       "matches for the patient in view, with the rule base and model version behind each.",
        "prefetch": {},
    }]}


def parse_hook_request(body: bytes) -> dict:
    """The request as a dict after the checks CDS Hooks 2.0 asks of a patient-view call; HookRequestError otherwise."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HookRequestError("request body is not JSON") from None
    if not isinstance(request, dict):
        raise HookRequestError("request body must be a JSON object")
    if request.get("hook") != HOOK:
        raise HookRequestError(f"'hook' must be '{HOOK}' for this service")
    if not isinstance(request.get("hookInstance"), str) or not request["hookInstance"].strip():
        raise HookRequestError("'hookInstance' (a string) is required")
    context = request.get("context")
    if not isinstance(context, dict):
        raise HookRequestError("'context' (an object) is required")
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise HookRequestError("'context.patientId' (a non-empty string) is required")
    if "userId" in context and not isinstance(context["userId"], str):
        raise HookRequestError("'context.userId' must be a string")
    return request


def _summary(action: str, therapy: str) -> str:
    text = f"{ACTION_LABELS.get(action, action)}: {therapy}"
    return text if len(text) <= MAX_SUMMARY_CHARS else text[: MAX_SUMMARY_CHARS - 1] + "…"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value)) and value is not pd.NA


def card_for(row: Mapping[str, Any], dashboard_url: str) -> dict:
    action = str(row["action"])
    model = (f"model {row['model_name']} v{row['model_version']}" if _present(row.get("model_version")) and str(row["model_version"])
             else "no model estimate (rules only)")
    detail = [str(row.get("rationale") or "")]
    detail.append(f"Evidence level: {row.get('evidence_level') or 'not stated'}. Source: {row.get('guideline') or 'not stated'}.")
    if _present(row.get("model_probability")):
        interval = (f" (95% interval {row['model_ci_low']:.2f}-{row['model_ci_high']:.2f})"
                    if _present(row.get("model_ci_low")) and _present(row.get("model_ci_high")) else "")
        detail.append(f"Estimated probability of response: {row['model_probability']:.2f}{interval}.")
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid5(CARD_NAMESPACE, str(row["recommendation_id"]))),
        "summary": _summary(action, str(row["therapy"])),
        "detail": "\n\n".join(d for d in detail if d),
        "indicator": INDICATOR.get(action, "info"),
        "source": {"label": f"radplan rule base {row.get('rule_base_version')}, {model}"},
        "links": [{"label": "Open in the radplan dashboard", "url": dashboard_url, "type": "absolute"}],
    }
    if action in ("recommend", "consider"):
        card["suggestions"] = [{"label": _summary("consider" if action == "consider" else "recommend", str(row["therapy"])),
                                "uuid": str(uuid.uuid5(CARD_NAMESPACE, f"suggestion:{row['recommendation_id']}")),
                                "isRecommended": action == "recommend"}]
        card["selectionBehavior"] = "at-most-one"
    return card


def cards(recommendations: pd.DataFrame | None, dashboard_url: str) -> list[dict]:
    """Cards in the recommendation table's rank order (alerts first), at most MAX_CARDS."""
    if recommendations is None or recommendations.empty:
        return []
    ordered = recommendations.sort_values("rank").head(MAX_CARDS)
    return [card_for(row, dashboard_url) for row in ordered.to_dict("records")]


class CdsClientRegistry:
    """Trusted EHRs from ``cds_clients.json``: {"clients": [{"iss": ..., "jwks": {"keys": [...]}}]}."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: dict[str, float] = {}  # jti -> exp, against replays
        self._lock = threading.Lock()

    def _clients(self) -> dict[str, KeySet]:
        if not self.path.is_file():
            return {}
        payload = json.loads(self.path.read_text(encoding="utf-8"))
        return {c["iss"]: KeySet.import_key_set(c["jwks"]) for c in payload.get("clients", [])}

    def verify(self, authorization: str | None, audience: str) -> str:
        """The client's issuer when the bearer token is valid for ``audience``; ClientRefused with the reason otherwise."""
        if not authorization or not authorization.startswith("Bearer "):
            raise ClientRefused("a CDS Hooks JWT bearer token is required (Authorization: Bearer ...)")
        token_text = authorization[len("Bearer "):].strip()
        try:
            unverified = json.loads(_b64_part(token_text, 1))
            issuer = unverified.get("iss")
        except (ValueError, IndexError):
            raise ClientRefused("the bearer token is not a JWT") from None
        keys = self._clients().get(issuer)
        if keys is None:
            raise ClientRefused("the token's issuer is not a registered CDS client")
        try:
            token = jwt.decode(token_text, keys, algorithms=ALLOWED_ALGORITHMS)
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience},
                                  exp={"essential": True}, jti={"essential": True}).validate(token.claims)
        except (JoseError, ValueError) as error:
            raise ClientRefused(f"the bearer token was refused ({type(error).__name__}: {error})") from None
        now = time.time()
        with self._lock:
            self._seen = {jti: exp for jti, exp in self._seen.items() if exp > now}
            jti = str(token.claims["jti"])
            if jti in self._seen:
                raise ClientRefused("the bearer token was already used (jti replay)")
            self._seen[jti] = float(token.claims["exp"])
        return issuer


def _b64_part(token: str, index: int) -> bytes:
    import base64

    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
