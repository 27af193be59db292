"""The accounting audit of the fleet (docs/audit.md): the ``/audit`` page and ``/api/audit``.

Both show what ``survey6-server audit`` prints, from the same function; each probe's page shows its
own part.
"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from survey6.server.errors import UnknownProbeError
from survey6.server.registry.models import utcnow
from survey6.server.web import queries
from survey6.server.web.auth import login_required
from survey6.server.web.context import web_context

bp = Blueprint("audit", __name__)


def _document(probe_id: str | None) -> dict[str, object]:
    services = web_context().services
    try:
        with services.sessions() as session:
            return queries.audit_document(session, probe_id)
    except UnknownProbeError:
        abort(404, description=f"no probe {probe_id}")


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
