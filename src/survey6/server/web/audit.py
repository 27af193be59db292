"""The accounting audit of the fleet (docs/audit.md): the ``/audit`` page and ``/api/audit``.

Both show what ``survey6-server audit`` prints, from the same function; each probe's page shows its
own part.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from survey6.server.errors import UnknownProbeError
from survey6.server.registry.models import utcnow
from survey6.server.web import queries
from survey6.server.web.auth import login_required
from survey6.server.web.context import web_context

bp = Blueprint("audit", __name__)
# How long a computed report is served again: the audit reads every catalog row, and a page
# reloaded or polled must not make the web process do that each time. App config may change it.
AUDIT_CACHE_S = 5.0
_CACHE_ENTRIES_MAX = 256  # reports kept (the fleet's and one per probe asked for)


class _ReportCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[str | None, tuple[float, dict[str, Any]]] = {}

    def get(self, probe_id: str | None, max_age_s: float) -> dict[str, Any] | None:
        with self._lock:
            found = self._reports.get(probe_id)
        if found is None or time.monotonic() - found[0] >= max_age_s:
            return None
        return found[1]

    def put(self, probe_id: str | None, document: dict[str, Any]) -> None:
        with self._lock:
            if len(self._reports) >= _CACHE_ENTRIES_MAX:
                self._reports.clear()
            self._reports[probe_id] = (time.monotonic(), document)


def _document(probe_id: str | None) -> dict[str, Any]:
    cache: _ReportCache = current_app.extensions.setdefault("survey6.audit_cache", _ReportCache())
    max_age_s = float(current_app.config.get("SURVEY6_AUDIT_CACHE_S", AUDIT_CACHE_S))
    document = cache.get(probe_id, max_age_s)
    if document is not None:
        return document
    services = web_context().services
    try:
        with services.sessions() as session:
            document = queries.audit_document(session, probe_id)
    except UnknownProbeError:
        abort(404, description=f"no probe {probe_id}")
    cache.put(probe_id, document)
    return document


@bp.get("/audit")
@login_required
def audit_page() -> ResponseReturnValue:
    return render_template("audit.html", document=_document(None), now=utcnow())


@bp.get("/api/audit")
@login_required
def audit_json() -> ResponseReturnValue:
    """The audit document of docs/audit.md; ``?probe=ID`` for one probe."""
    probe_id = request.args.get("probe") or None
    if probe_id is not None and len(probe_id) > 64:
        abort(400, description="probe is not a probe id")
    return jsonify(_document(probe_id))
