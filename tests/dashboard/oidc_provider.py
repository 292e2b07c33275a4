"""A minimal OpenID Connect provider for the tests, on loopback: discovery, authorize (auto-approves a preset user),
token (authorization code -> RS256 ID token), JWKS. Just enough of OIDC Core for a real client library to run its
whole code flow against it; not a provider for anything else."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.jwk import RSAKey

from support.orthanc import free_port

CLIENT_ID = "radplan-dashboard"
CLIENT_SECRET = "test-client-secret-not-for-production"


@dataclass
class LoopbackOidcProvider:
    port: int = field(default_factory=free_port)
    user_claims: dict = field(default_factory=lambda: {"sub": "user-42", "radplan_roles": ["clinician"]})
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "provider-1"}))
    codes: dict = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery():
            return {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                    "response_types_supported": ["code"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

        @app.get("/jwks")
        async def jwks():
            return {"keys": [self.key.as_dict(private=False)]}

        @app.get("/authorize")
        async def authorize(request: Request):
            query = request.query_params
            if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"nonce": query.get("nonce"), "redirect_uri": query["redirect_uri"]}
            return RedirectResponse(query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")}), status_code=302)

        @app.post("/token")
        async def token(request: Request):
            form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            header = request.headers.get("authorization", "")
            if header.startswith("Basic "):
                client_id, client_secret = base64.b64decode(header[6:]).decode().split(":", 1)
            grant = self.codes.pop(form.get("code", ""), None)
            if client_id != CLIENT_ID or client_secret != CLIENT_SECRET or grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, **self.user_claims}
            if grant["nonce"]:
                claims["nonce"] = grant["nonce"]
            id_token = jwt.encode({"alg": "RS256", "kid": "provider-1"}, claims, self.key)
            return {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300, "id_token": id_token}

        return app

    def __enter__(self) -> "LoopbackOidcProvider":
        self._server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "test OIDC provider did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
