"""CSRF protection: one random token per session, required on every state-changing request.

Forms carry it in a hidden ``csrf_token`` field, scripts in the ``X-CSRF-Token`` header. A page of
another site can make the browser send the session cookie (SameSite=Lax narrows that but does not
remove it), but cannot read the token, so its forged request is refused: 400 when no token came,
403 when a wrong one did.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from flask import Flask, abort, request, session

log = logging.getLogger(__name__)

SESSION_KEY = "csrf"
FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
TOKEN_BYTES = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token() -> str:
    """The session's token, made on first use (templates call this for every form)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session[SESSION_KEY] = token
    return token


def rotate() -> None:
    """A new token, e.g. at login: one seen before authentication is not trusted after it."""
    session[SESSION_KEY] = secrets.token_urlsafe(TOKEN_BYTES)


def check() -> None:
    """Refuses an unsafe request without the session's token (a ``before_request`` hook)."""
    if request.method in SAFE_METHODS:
        return
    given = request.headers.get(HEADER) or request.form.get(FORM_FIELD, "")
    expected = session.get(SESSION_KEY)
    if not given:
        log.warning("refused %s %s: no CSRF token", request.method, request.path, extra=_client())
        abort(400, description="The form is missing its CSRF token; reload the page and try again.")
    if not isinstance(expected, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        log.warning("refused %s %s: wrong CSRF token", request.method, request.path, extra=_client())
        abort(403, description="The form's CSRF token is not this session's; reload the page and try again.")


def _client() -> dict[str, str]:
    return {"client": request.remote_addr or "-"}


def init_app(app: Flask) -> None:
    app.before_request(check)
    app.jinja_env.globals["csrf_token"] = csrf_token
