"""Login, logout and the role checks every other view goes through.

The session (a signed cookie) holds the user name, the login time and the CSRF token. The account
is read from the registry on every request, so a removed user or a changed role counts at once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Blueprint, abort, g, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from survey6.server.web import csrf
from survey6.server.web.context import web_context
from survey6.server.web.users import Account, get_account

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

USER_KEY = "user"
LOGIN_AT_KEY = "login_at"
API_PREFIX = "/api/"

View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


def is_api_request() -> bool:
    """Answered in JSON (by path: a request for a route that does not exist has no blueprint)."""
    return request.path.startswith(API_PREFIX)


def current_account() -> Account | None:
    account = g.get("account")
    return account if isinstance(account, Account) else None


def load_account() -> None:
    """Finds the logged-in account, if any (a ``before_request`` hook)."""
    g.account = None
    if request.endpoint == "static":
        return  # stylesheet and script: no need to ask the registry
    username = session.get(USER_KEY)
    if not isinstance(username, str):
        return
    login_at = session.get(LOGIN_AT_KEY)
    lifetime_s = web_context().web.session_lifetime_s
    # The cookie's own expiry is up to the browser; the login time is checked here too.
    if not isinstance(login_at, int | float) or time.time() - login_at > lifetime_s:
        _forget_login()
        return
    with web_context().services.sessions() as db:
        g.account = get_account(db, username)
    if g.account is None:
        _forget_login()


def _forget_login() -> None:
    session.pop(USER_KEY, None)
    session.pop(LOGIN_AT_KEY, None)


def login_required(view: View) -> View:
    """Pages redirect to the login page; the JSON API answers 401."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        if current_account() is None:
            if is_api_request():
                return jsonify(error="login required"), 401
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return cast(View, wrapped)


def admin_required(view: View) -> View:
    """Like login_required; a viewer gets 403."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        account = current_account()
        if account is not None and not account.is_admin:
            log.warning(
                "refused %s %s to viewer %s",
                request.method,
                request.path,
                account.username,
                extra={"client": request.remote_addr},
            )
            abort(403, description="Only an admin may do this.")
        return view(*args, **kwargs)

    return cast(View, login_required(wrapped))


def _safe_next(target: str | None) -> str:
    """Only a path on this site: an absolute or scheme-relative URL would be an open redirect."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return url_for("probes.probe_list")


@bp.get("/login")
def login() -> ResponseReturnValue:
    if current_account() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", next=request.args.get("next", ""))


@bp.post("/login")
def login_post() -> ResponseReturnValue:
    context = web_context()
    address = request.remote_addr or "-"
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    next_page = request.form.get("next", "")
    retry_after_s = context.limiter.retry_after_s(address)
    if retry_after_s > 0:
        context.metrics.logins.labels("limited").inc()
        log.warning("login refused: too many failures from %s", address, extra={"client": address})
        message = f"Too many failed logins from your address; try again in {int(retry_after_s) + 1} s."
        response = render_template("login.html", error=message, next=next_page, username=username)
        return response, 429, {"Retry-After": str(int(retry_after_s) + 1)}
    with context.services.sessions.begin() as db:
        account = context.passwords.authenticate(db, username, password)
    if account is None:
        context.limiter.failed(address, username)
        context.metrics.logins.labels("failure").inc()
        error = "Wrong user name or password."
        return render_template("login.html", error=error, next=next_page, username=username), 401
    context.limiter.succeeded(address)
    context.metrics.logins.labels("success").inc()
    session.clear()  # nothing from before the login carries over
    session.permanent = True
    session[USER_KEY] = account.username
    session[LOGIN_AT_KEY] = time.time()
    csrf.rotate()
    log.info(
        "%s logged in from %s", account.username, address, extra={"client": address, "role": account.role}
    )
    return redirect(_safe_next(next_page))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    account = current_account()
    session.clear()
    if account is not None:
        log.info("%s logged out", account.username, extra={"client": request.remote_addr})
    return redirect(url_for("auth.login"))
