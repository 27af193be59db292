"""``/metrics`` for Prometheus: open by default, as is the convention; HTTP Basic or off by config."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from survey6.server.web.auth import current_account
from survey6.server.web.context import web_context

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

REALM = "survey6 metrics"


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    context = web_context()
    if context.web.metrics == "off":
        abort(404)
    if context.web.metrics == "basic-auth" and current_account() is None and not _basic_auth_ok():
        return Response(
            "authentication required\n", 401, {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        )
    return Response(generate_latest(context.metrics.registry), mimetype=CONTENT_TYPE_LATEST)


def _basic_auth_ok() -> bool:
    """A web account's name and password; failures count against the address like logins."""
    credentials = request.authorization
    if credentials is None or credentials.type != "basic":
        return False
    context = web_context()
    address = request.remote_addr or "-"
    if context.limiter.retry_after_s(address) > 0:
        return False
    username, password = credentials.username or "", credentials.password or ""
    with context.services.sessions.begin() as db:
        account = context.passwords.authenticate(db, username, password)
    if account is None:
        context.limiter.failed(address, username)
        return False
    return True
