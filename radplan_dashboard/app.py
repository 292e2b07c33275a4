"""The dashboard's web application (FastAPI, server-rendered Jinja2 templates with autoescaping).

Why FastAPI and server-rendered pages: every page is plain HTML produced on the server, so the role check, the
audit record and the escaping all happen in one place that tests can call directly (``fastapi.testclient``) and a
real browser can drive; FastAPI, Starlette, uvicorn and Jinja2 are already pinned for the Dagster webserver. Plots
are matplotlib PNGs (matplotlib is pinned too): no charting code of our own, no JavaScript charting bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from starlette.middleware.sessions import SessionMiddleware

from radplan.audit import AuditLog, AuditRecord
from radplan.decision import export
from radplan.decision.export import ACTION_LABELS, CANCER_LABELS, SEVERITY
from radplan.monitoring import REASON_CODES
from radplan.pseudonym import Pseudonymizer
from radplan_dashboard import cds, lakeview, plots
from radplan_dashboard.accounts import (ADMINISTRATOR, CLINICIAN, DATA_ENGINEER, ROLE_LABELS, ROLES, AccountError,
                                        UserStore, oidc_username)
from radplan_dashboard.config import DashboardSettings
from radplan_dashboard.feedback import CHOICES, FeedbackFormError, parse_feedback_form, write_feedback
from radplan_dashboard.sessions import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session, SessionCodec, SessionRefused,
                                        csrf_matches)

log = logging.getLogger("radplan_dashboard")
PACKAGE_DIR = Path(__file__).resolve().parent
MAX_FORM_BYTES = 64 * 1024
HOME_PAGE = {CLINICIAN: "/cohort", DATA_ENGINEER: "/health", ADMINISTRATOR: "/admin/users"}
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Refused(Exception):
    """A request refused with a status and a message shown to the user (and logged)."""

    def __init__(self, status: int, message: str, *, clear_session: bool = False, log_kind: str = "refused"):
        super().__init__(message)
        self.status, self.message, self.clear_session, self.log_kind = status, message, clear_session, log_kind


class NeedsSignIn(Exception):
    pass


def _png_data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display(value: Any) -> str:
    if value is None or (not isinstance(value, (list, tuple)) and not hasattr(value, "__len__") and pd.isna(value)):
        return "not known"
    if isinstance(value, float):
        return "not known" if pd.isna(value) else f"{value:.4g}"
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, str) and not value:
        return "not known"
    return str(value)


def create_app(settings: DashboardSettings) -> FastAPI:
    """The dashboard and the CDS Hooks service in one ASGI application."""
    app = FastAPI(title="radplan dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    codec = SessionCodec(settings.session_secret, settings.session_ttl_s)
    users = UserStore(settings.users_file)
    audit = AuditLog(settings.audit_dir)
    pseudonymizer = Pseudonymizer(settings.deid_key)
    cds_clients = cds.CdsClientRegistry(settings.cds_clients_file)
    environment = Environment(loader=FileSystemLoader(PACKAGE_DIR / "templates"), autoescape=True)
    environment.filters["show"] = _display
    environment.filters["records"] = lakeview.records
    templates = Jinja2Templates(env=environment)
    image_cache: OrderedDict = OrderedDict()
    image_lock = threading.Lock()
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")

    oauth = None
    if settings.oidc_enabled:
        from authlib.integrations.starlette_client import OAuth

        # Only the OIDC round trip (state, nonce) lives in this short-lived cookie; the sign-in session is ours.
        app.add_middleware(SessionMiddleware, secret_key=settings.session_secret.hex(), session_cookie="radplan_oidc",
                           max_age=600, same_site="lax", https_only=settings.secure_cookies)
        oauth = OAuth()
        oauth.register("oidc", client_id=settings.oidc_client_id, client_secret=settings.oidc_client_secret,
                       server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
                       client_kwargs={"scope": "openid profile"})

    # ------------------------------------------------------------------ helpers

    def audit_access(session: Session, action: str, zone: str, target: str, patient_key: str | None, rows: int | None = None) -> None:
        audit.append(AuditRecord(action=action, zone=zone, target=target, patient_key=patient_key, rows=rows,
                                 who={"user": session.user, "role": session.role, "auth": session.source, "via": "radplan-dashboard"}))

    def current_session(request: Request) -> Session:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise NeedsSignIn()
        try:
            session = codec.read(cookie)
        except SessionRefused as refused:
            raise Refused(401, refused.reason, clear_session=True, log_kind=f"session-{refused.kind}") from None
        if session.source == "local":
            # The account file is the authority: a removed account or a changed role ends the session.
            account = users.get(session.user)
            if account is None or account.role != session.role:
                raise Refused(401, "your account was removed or its role changed: sign in again", clear_session=True,
                              log_kind="session-stale")
        return session

    def require(request: Request, role: str) -> Session:
        session = current_session(request)
        if session.role != role:
            raise Refused(403, f"this page is for the {ROLE_LABELS[role]} role; you are signed in as "
                               f"{ROLE_LABELS[session.role]}", log_kind="wrong-role")
        return session

    async def form_fields(request: Request) -> dict[str, str]:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise Refused(400, "form data must be sent as application/x-www-form-urlencoded", log_kind="bad-form")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "form too large", log_kind="bad-form")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Refused(400, "form data is not UTF-8", log_kind="bad-form") from None
        return {name: values[-1] for name, values in parsed.items()}

    def check_csrf(session: Session, fields: dict[str, str]) -> None:
        if not csrf_matches(session, fields.get("csrf_token")):
            raise Refused(403, "the form's security token is missing or does not match your session: reload the page "
                               "and submit again", log_kind="csrf")

    def render(request: Request, name: str, context: dict, status: int = 200, session: Session | None = None) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"session": session, "role_labels": ROLE_LABELS, **context},
                                          status_code=status)

    def set_session_cookie(response: Response, value: str) -> None:
        response.set_cookie(SESSION_COOKIE, value, max_age=settings.session_ttl_s, httponly=True, samesite="lax",
                            secure=settings.secure_cookies, path="/")

    def image_pair(patient_key: str):
        paths = lakeview.patient_image_paths(settings.lake, patient_key)
        if paths is None:
            return None
        stamp = (patient_key, *(str(p) for p in paths), *(p.stat().st_mtime_ns for p in paths if p is not None and p.exists()))
        with image_lock:  # the slider asks for slices one after another: decode the NIfTI pair once
            if stamp not in image_cache:
                image_cache[stamp] = lakeview.load_image_pair(settings.lake, patient_key)
                while len(image_cache) > 4:
                    image_cache.popitem(last=False)
            return image_cache[stamp]

    def patient_or_404(patient_key: str) -> lakeview.PatientView:
        try:
            return lakeview.patient_view(settings.lake, patient_key)
        except lakeview.UnknownPatientError as error:
            raise Refused(404, str(error), log_kind="unknown-patient") from None

    # ------------------------------------------------------------------ errors and headers

    @app.exception_handler(NeedsSignIn)
    async def _needs_sign_in(request: Request, _: NeedsSignIn):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, refused: Refused):
        # The route's template, not the path: a mistyped URL could hold an identifier, and logs must not.
        route = request.scope.get("route")
        log.warning("refused %s %s: %s (%s)", request.method, getattr(route, "path", "(no route)"), refused.log_kind, refused.status)
        if request.url.path.startswith("/api/"):
            response: Response = JSONResponse({"error": refused.message}, status_code=refused.status)
        else:
            response = render(request, "error.html.j2", {"status": refused.status, "message": refused.message}, status=refused.status)
        if refused.clear_session:
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------------ sign-in

    # Handlers that only read are plain functions: FastAPI runs them in its thread pool, so file reads and
    # matplotlib rendering do not hold up other requests.
    @app.get("/", include_in_schema=False)
    def index(request: Request):
        return RedirectResponse(HOME_PAGE[current_session(request).role], status_code=303)

    def login_page(request: Request, message: str | None = None, status: int = 200) -> HTMLResponse:
        token = codec.login_token()
        response = render(request, "login.html.j2", {"csrf_token": token, "message": message, "oidc": settings.oidc_enabled,
                                                      "next": request.query_params.get("next", "")}, status=status)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                            secure=settings.secure_cookies, path="/login")
        return response

    @app.get("/login")
    def login_form(request: Request):
        return login_page(request)

    @app.post("/login")
    async def login(request: Request):
        fields = await form_fields(request)
        if not codec.login_token_valid(request.cookies.get(LOGIN_CSRF_COOKIE), fields.get("csrf_token")):
            log.warning("refused POST /login: csrf")
            return login_page(request, "The sign-in form expired or was not sent by this page: try again.", 403)
        user = users.verify(fields.get("username", ""), fields.get("password", ""))
        if user is None:
            log.warning("refused POST /login: wrong user name or password")
            return login_page(request, "Wrong user name or password.", 401)
        value, _ = codec.issue(user.name, user.role, "local")
        target = fields.get("next", "")
        # Only a path on this host: "//host" and "/\\host" would send the user elsewhere.
        same_host = target.startswith("/") and not target.startswith(("//", "/\\"))
        response = RedirectResponse(target if same_host else HOME_PAGE[user.role],
                                    status_code=303)
        set_session_cookie(response, value)
        log.info("signed in: %s (%s)", user.name, user.role)
        return response

    @app.post("/logout")
    async def logout(request: Request):
        session = current_session(request)
        check_csrf(session, await form_fields(request))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/login/oidc")
    async def login_oidc(request: Request):
        if oauth is None:
            raise Refused(404, "single sign-on is not configured (RADPLAN_OIDC_ISSUER, RADPLAN_OIDC_CLIENT_ID)")
        return await oauth.oidc.authorize_redirect(request, str(request.url_for("oidc_callback")))

    @app.get("/auth/oidc/callback", name="oidc_callback")
    async def oidc_callback(request: Request):
        if oauth is None:
            raise Refused(404, "single sign-on is not configured")
        from authlib.integrations.base_client import OAuthError

        try:
            token = await oauth.oidc.authorize_access_token(request)
        except OAuthError as error:
            raise Refused(401, f"single sign-on failed: {error.error}", log_kind="oidc-failed") from None
        claims = token.get("userinfo") or {}
        granted = claims.get(settings.oidc_role_claim) or []
        granted = [granted] if isinstance(granted, str) else list(granted)
        role = next((r for r in ROLES if r in granted), None)
        if role is None or not claims.get("sub"):
            raise Refused(403, f"your identity provider grants no radplan role (claim '{settings.oidc_role_claim}' "
                               f"must list one of {', '.join(ROLES)})", log_kind="oidc-no-role")
        value, _ = codec.issue(oidc_username(settings.oidc_issuer, str(claims["sub"])), role, "oidc")
        response = RedirectResponse(HOME_PAGE[role], status_code=303)
        set_session_cookie(response, value)
        return response

    # ------------------------------------------------------------------ clinician pages

    @app.get("/cohort")
    def cohort_page(request: Request):
        session = require(request, CLINICIAN)
        query = request.query_params
        problems = []
        since = None
        if query.get("new_since"):
            try:
                since = dt.date.fromisoformat(query["new_since"])
            except ValueError:
                problems.append("'new since' must be a date (YYYY-MM-DD); the filter was not applied")

        def yes_no(name: str) -> bool | None:
            return {"yes": True, "no": False}.get(query.get(name, ""))

        filters = lakeview.CohortFilters(query.get("cancer_type") or None, query.get("stage") or None, since,
                                         yes_no("has_alert"), yes_no("has_trial"))
        table = lakeview.cohort_table(settings.lake)
        shown = lakeview.filter_cohort(table, filters)
        by_stratum = lakeview.response_by_stratum(settings.lake)
        calibration = lakeview.calibration_points(settings.lake)
        report = lakeview.model_report(settings.lake) or {}
        response_entry = report.get("response_model") or {}
        model_label = (f"{response_entry.get('name')} v{response_entry.get('mlflow_version')}" if response_entry.get("mlflow_version")
                       else "current model")
        return render(request, "cohort.html.j2", {
            "rows": lakeview.records(shown), "total": len(table), "filters": filters, "problems": problems,
            "cancer_types": sorted(t for t in table["cancer_type"].dropna().unique()),
            "stages": sorted(s for s in table["stage"].dropna().unique()),
            "cancer_labels": CANCER_LABELS, "alert_labels": ACTION_LABELS,
            "stratum_plot": _png_data_uri(plots.response_by_stratum_png(by_stratum)) if by_stratum is not None else None,
            "calibration_plot": _png_data_uri(plots.calibration_png(calibration, model_label))
            if calibration is not None and calibration["responded"].nunique() == 2 else None,
            "calibration_n": 0 if calibration is None else len(calibration),
            "response_entry": response_entry,
        }, session=session)

    @app.get("/api/cohort")
    def cohort_api(request: Request):
        require(request, CLINICIAN)
        table = lakeview.cohort_table(settings.lake)
        table["updated_at"] = table["updated_at"].map(lambda t: None if t is None or pd.isna(t) else t.isoformat())
        return JSONResponse({"patients": table.astype(object).where(table.notna(), None).to_dict("records")})

    @app.get("/patients/{patient_key}")
    def patient_page(request: Request, patient_key: str):
        session = require(request, CLINICIAN)
        view = patient_or_404(patient_key)
        pair = image_pair(patient_key)
        slices = key_slice = None
        has_mask = pair is not None and pair[1] is not None
        if pair is not None:
            slices = int(pair[0].shape[0])
            key_slice = slices // 2
            if has_mask:
                try:
                    key_slice = export.largest_lesion_slice(pair[1])
                except export.InvalidExportInputError:  # an empty mask: no lesion to open on
                    pass
        attributions = None
        if view.recommendations is not None:
            scored = view.recommendations.dropna(subset=["top_attributions"])
            attributions = scored.iloc[0]["top_attributions"] if len(scored) else None
        audit_access(session, "read", "features", "dashboard/patient-page", patient_key,
                     rows=None if view.recommendations is None else len(view.recommendations))
        return render(request, "patient.html.j2", {
            "view": view, "slices": slices, "key_slice": key_slice, "has_mask": has_mask, "has_explanation": attributions is not None,
            "action_labels": ACTION_LABELS, "severity": SEVERITY, "cancer_labels": CANCER_LABELS,
            "summary_facts": [(name, view.facts.get(name)) for name in lakeview.SUMMARY_FACTS],
            "choices": list(CHOICES), "reason_codes": REASON_CODES, "saved": request.query_params.get("saved"),
        }, session=session)

    @app.get("/patients/{patient_key}/slices/{index}.png")
    def patient_slice(request: Request, patient_key: str, index: int):
        require(request, CLINICIAN)
        patient_or_404(patient_key)
        pair = image_pair(patient_key)
        if pair is None:
            raise Refused(404, "this patient has no image in the lake")
        image, mask = pair
        try:
            # Without a mask the slice is drawn with no outline (key_slice_png draws none on an empty slice).
            png = export.key_slice_png(image, mask if mask is not None else np.zeros(image.shape, dtype=np.uint8), slice_index=index)
        except export.InvalidExportInputError as error:
            raise Refused(404, str(error)) from None
        return Response(png, media_type="image/png")

    @app.get("/patients/{patient_key}/explanation.png")
    def patient_explanation(request: Request, patient_key: str):
        require(request, CLINICIAN)
        view = patient_or_404(patient_key)
        scored = view.recommendations.dropna(subset=["top_attributions"]) if view.recommendations is not None else None
        if scored is None or scored.empty:
            raise Refused(404, "no model explanation for this patient (no model estimate)")
        try:
            png = export.attribution_png(scored.iloc[0]["top_attributions"])
        except export.InvalidExportInputError as error:
            raise Refused(404, str(error)) from None
        return Response(png, media_type="image/png")

    @app.get("/patients/{patient_key}/recommendations.csv")
    def patient_export(request: Request, patient_key: str):
        session = require(request, CLINICIAN)
        view = patient_or_404(patient_key)
        if view.recommendations is None:
            raise Refused(404, "no recommendations computed for this patient yet")
        buffer = io.StringIO()
        view.recommendations.to_csv(buffer, index=False)
        audit_access(session, "read", "features", "dashboard/export-recommendations-csv", patient_key, rows=len(view.recommendations))
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{patient_key}-recommendations.csv"'})

    @app.post("/patients/{patient_key}/feedback")
    async def patient_feedback(request: Request, patient_key: str):
        session = require(request, CLINICIAN)
        fields = await form_fields(request)
        check_csrf(session, fields)
        view = patient_or_404(patient_key)
        try:
            entry = parse_feedback_form(fields, view.recommendation_ids())
        except FeedbackFormError as error:
            log.warning("refused POST feedback for %s: %d problem(s)", patient_key, len(error.problems))
            return render(request, "feedback_refused.html.j2", {"problems": error.problems, "patient_key": patient_key},
                          status=400, session=session)
        path = write_feedback(settings.feedback_dir, entry, session.user, dt.datetime.now(dt.timezone.utc))
        audit_access(session, "write", "landing", f"feedback/{path.name}", patient_key, rows=1)
        return RedirectResponse(f"/patients/{patient_key}?saved={entry.recommendation_id}", status_code=303)

    # ------------------------------------------------------------------ data engineer pages

    @app.get("/health")
    def health_page(request: Request):
        session = require(request, DATA_ENGINEER)
        now = dt.datetime.now(dt.timezone.utc)
        drift = lakeview.drift(settings.lake)
        freshness = lakeview.data_freshness(settings.lake, settings.landing, now)
        history = lakeview.quality_history(settings.lake)
        latest_quality = None
        if history is not None and len(history):
            from radplan.monitoring import quality_trend

            latest_quality = lakeview.records(quality_trend(history))
        report = lakeview.model_report(settings.lake)
        return render(request, "health.html.j2", {
            "drift_plot": _png_data_uri(plots.drift_png(drift)) if drift is not None and len(drift) else None,
            "drift_measured": drift is not None,
            "drifted": [] if drift is None else drift[drift["drifted"].astype(bool)]["feature"].tolist(),
            "freshness": lakeview.records(freshness),
            "freshness_plot": _png_data_uri(plots.freshness_png(freshness)) if freshness[["landing_age_h", "lake_age_h"]].notna().any().any() else None,
            "quality": latest_quality, "quarantine": lakeview.quarantine_counts(settings.lake).to_dict("records"),
            "failures": lakeview.run_failures(settings.lake), "report": report,
        }, session=session)

    @app.get("/auth/dagster")
    def dagster_gate(request: Request):
        """For a reverse proxy's auth_request in front of the Dagster UI (docs/dashboard.md): 204 for a data engineer's
        valid session, 401 without one, 403 for other roles. Dagster itself stays on loopback."""
        try:
            session = current_session(request)
        except NeedsSignIn:
            return Response(status_code=401)
        except Refused as refused:
            log.warning("refused Dagster UI access: %s", refused.log_kind)
            return Response(status_code=401)
        if session.role != DATA_ENGINEER:
            log.warning("refused Dagster UI access: wrong-role")
            return Response(status_code=403)
        return Response(status_code=204, headers={"X-Radplan-User": session.user})

    # ------------------------------------------------------------------ administrator pages

    @app.get("/admin/users")
    def users_page(request: Request):
        session = require(request, ADMINISTRATOR)
        return render(request, "users.html.j2", {"users": users.list(), "roles": ROLES, "message": request.query_params.get("done")},
                      session=session)

    @app.post("/admin/users")
    async def users_add(request: Request):
        session = require(request, ADMINISTRATOR)
        fields = await form_fields(request)
        check_csrf(session, fields)
        try:
            if fields.get("action") == "remove":
                if fields.get("username") == session.user:
                    raise AccountError("you cannot remove your own account")
                users.remove(fields.get("username", ""))
            else:
                users.add(fields.get("username", ""), fields.get("role", ""), fields.get("password", ""))
        except AccountError as error:
            raise Refused(400, str(error), log_kind="account-refused") from None
        log.info("accounts changed by %s", session.user)
        return RedirectResponse("/admin/users?done=saved", status_code=303)

    # ------------------------------------------------------------------ CDS Hooks

    @app.get("/cds-services")
    async def cds_discovery():
        return JSONResponse(cds.discovery())

    @app.post("/cds-services/{service_id}")
    async def cds_service(request: Request, service_id: str):
        if service_id != cds.SERVICE_ID:
            return JSONResponse({"error": f"no CDS service '{service_id[:80]}'"}, status_code=404)
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        try:
            issuer = cds_clients.verify(request.headers.get("authorization"), f"{base}/cds-services/{cds.SERVICE_ID}")
        except cds.ClientRefused as refused:
            log.warning("refused CDS call: %s", refused)
            return JSONResponse({"error": str(refused)}, status_code=401)
        try:
            hook = cds.parse_hook_request(await request.body())
        except cds.HookRequestError as error:
            log.warning("refused CDS call from %s: %s", issuer, error)
            return JSONResponse({"error": str(error)}, status_code=400)
        patient_key = pseudonymizer.patient_key(hook["context"]["patientId"])
        recommendations = lakeview.read_table(settings.lake, "features", "patient_recommendations", patient_key)
        cards = cds.cards(recommendations, f"{base}/patients/{patient_key}")
        if recommendations is not None:
            audit.append(AuditRecord(action="read", zone="features", target="cds-hooks/patient-view", patient_key=patient_key,
                                     rows=len(cards), who={"cds_client": issuer, "via": "radplan-dashboard"}))
        return JSONResponse({"cards": cards})

    return app
