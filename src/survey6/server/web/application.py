"""The Flask application: configuration, blueprints, error pages and security headers."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from survey6.server.settings import ServerSettings
from survey6.server.web import api, apt, auth, csrf, formatting, ingest, metrics, probes, tokens
from survey6.server.web import audit as audit_pages
from survey6.server.web.context import WebContext, install
from survey6.server.web.ratelimit import LoginLimiter
from survey6.server.web.secret import load_or_create_secret_key
from survey6.server.web.services import WebServices
from survey6.server.web.settings import WebSettings
from survey6.server.web.telemetry import WebMetrics
from survey6.server.web.users import PasswordChecker

log = logging.getLogger(__name__)

SESSION_COOKIE_NAME = "survey6_session"
MAX_REQUEST_BYTES = 64 << 10  # 64 KiB: forms here are a few fields
# No inline script or style, nothing from another origin; the charts are inline SVG markup.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def web_settings_of(settings: ServerSettings) -> WebSettings:
    """The ``[web]`` section of the server's settings; the defaults while the section is absent."""
    configured = getattr(settings, "web", None)
    return configured if isinstance(configured, WebSettings) else WebSettings()


def build_app(services: WebServices, settings: ServerSettings, web: WebSettings | None = None) -> Flask:
    """See :func:`survey6.server.web.create_app`."""
    web = web or web_settings_of(settings)
    app = Flask(__name__)
    tls = web.tls_cert_file is not None
    app.config.update(
        SECRET_KEY=load_or_create_secret_key(services.data_dir),
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=tls if web.cookie_secure is None else web.cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=web.session_lifetime_s),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    install(
        app,
        WebContext(
            services=services,
            web=web,
            limiter=LoginLimiter(web.login_failures_per_minute),
            passwords=PasswordChecker(),
            metrics=WebMetrics(services.sessions, services.fleet),
        ),
    )
    csrf.init_app(app)
    app.before_request(auth.load_account)
    for blueprint in (auth.bp, probes.bp, tokens.bp, ingest.bp, api.bp, metrics.bp, apt.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(audit_pages.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.after_request(_security_headers)
    app.context_processor(_template_globals)
    app.jinja_env.filters.update(
        bytes=formatting.human_bytes,
        count=formatting.human_count,
        percent=formatting.percent,
        timestamp=formatting.timestamp,
        ns_timestamp=formatting.ns_timestamp,
        labels=formatting.labels_text,
    )
    app.jinja_env.globals["age"] = formatting.age
    return app


def _template_globals() -> dict[str, Any]:
    return {"account": auth.current_account()}


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    if auth.is_api_request() or request.accept_mimetypes.best == "application/json":
        return jsonify(error=error.description), code
    return render_template("error.html", code=code, name=error.name, description=error.description), code


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        # Pages show live state and, once, token secrets: nothing for a cache to keep.
        response.headers.setdefault("Cache-Control", "no-store")
    return response
