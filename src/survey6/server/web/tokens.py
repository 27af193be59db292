"""Bootstrap tokens: create one (its join command is shown once), list, revoke."""

from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from survey6.common.errors import UnitError
from survey6.common.units import parse_duration
from survey6.server import tokens
from survey6.server.errors import TokenError
from survey6.server.registry.models import utcnow
from survey6.server.web.apt import probe_install
from survey6.server.web.auth import admin_required, current_account, login_required
from survey6.server.web.context import web_context

log = logging.getLogger(__name__)

bp = Blueprint("tokens", __name__)

DEFAULT_TTL = "24h"
MAX_TTL_S = 365 * 86400.0
MAX_DESCRIPTION_CHARS = 255


def join_command(token: str) -> str:
    context = web_context()
    address = context.web.join_address or context.services.join_address()
    return f"survey6-probe join {address} --token {token} --ca-cert-hash {context.services.ca_cert_hash}"


def _page(status: int = 200, **extra: object) -> ResponseReturnValue:
    with web_context().services.sessions.begin() as session:  # listing also drops long-dead tokens
        rows = tokens.list_tokens(session)
    page = render_template(
        "tokens.html", tokens=rows, now=utcnow(), default_ttl=DEFAULT_TTL, install=probe_install(), **extra
    )
    return page, status


@bp.get("/tokens")
@login_required
def token_list() -> ResponseReturnValue:
    return _page()


@bp.post("/tokens")
@admin_required
def token_create() -> ResponseReturnValue:
    form = {k: request.form.get(k, "").strip() for k in ("ttl", "usages", "description")}
    try:
        ttl_s = parse_duration(form["ttl"] or DEFAULT_TTL)
        if not 0 < ttl_s <= MAX_TTL_S:
            raise UnitError("the time to live must be more than 0 and at most 365d")
        usages = int(form["usages"]) if form["usages"] else None
        if len(form["description"]) > MAX_DESCRIPTION_CHARS:
            raise TokenError(f"the description is longer than {MAX_DESCRIPTION_CHARS} characters")
        with web_context().services.sessions.begin() as session:
            token = tokens.create_token(
                session, ttl=dt.timedelta(seconds=ttl_s), usages=usages, description=form["description"]
            )
    except (UnitError, TokenError) as exc:
        return _page(400, error=str(exc), form=form)
    except ValueError:
        return _page(400, error="Uses must be a whole number, or empty for unlimited.", form=form)
    account = current_account()
    token_id = token.split(".", 1)[0]
    log.info(
        "%s created token %s",
        account.username if account else "-",
        token_id,
        extra={"token_id": token_id, "client": request.remote_addr},
    )
    # Shown in this response only: the secret is not stored, and not put in the session cookie.
    return _page(201, created={"token": token, "join_command": join_command(token)})


@bp.post("/tokens/<token_id>/revoke")
@admin_required
def token_revoke(token_id: str) -> ResponseReturnValue:
    try:
        with web_context().services.sessions.begin() as session:
            tokens.revoke_token(session, token_id)
    except TokenError as exc:
        flash(str(exc), "error")
        return redirect(url_for("tokens.token_list"))
    account = current_account()
    log.info(
        "%s revoked token %s",
        account.username if account else "-",
        token_id,
        extra={"token_id": token_id, "client": request.remote_addr},
    )
    flash(f"Token {token_id} revoked.", "info")
    return redirect(url_for("tokens.token_list"))
