"""The JSON API: the same data as the pages, for scripts (session login; read-only)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify, request
from flask.typing import ResponseReturnValue

from survey6.server import tokens
from survey6.server.registry.models import utcnow
from survey6.server.web import queries
from survey6.server.web.auth import current_account, login_required
from survey6.server.web.context import web_context
from survey6.server.web.ingest import ingest_status
from survey6.server.web.probes import history_window, listed_probes

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DETAIL_COMMANDS = 20


def _limit() -> int:
    text = request.args.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        abort(400, description=f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _probe_or_404(probe_id: str) -> None:
    services = web_context().services
    with services.sessions() as session:
        if queries.probe_view(session, services.fleet, probe_id) is None:
            abort(404, description=f"no probe {probe_id}")


@bp.get("/me")
@login_required
def me() -> ResponseReturnValue:
    account = current_account()
    assert account is not None
    return jsonify(username=account.username, role=account.role)


@bp.get("/probes")
@login_required
def probes() -> ResponseReturnValue:
    """Probes with live state; ``state``, ``q``, ``sort`` and ``order`` as on the list page."""
    now = utcnow()
    shown, counts = listed_probes()
    return jsonify(probes=[v.to_json(now) for v in shown], counts=counts, generated_at=now.isoformat())


@bp.get("/probes/<probe_id>")
@login_required
def probe(probe_id: str) -> ResponseReturnValue:
    services = web_context().services
    now = utcnow()
    with services.sessions() as session:
        view = queries.probe_view(session, services.fleet, probe_id)
        if view is None:
            abort(404, description=f"no probe {probe_id}")
        commands = queries.recent_commands(session, probe_id, DETAIL_COMMANDS)
    return jsonify(
        probe=view.to_json(now),
        commands=[queries.command_json(c) for c in commands],
        generated_at=now.isoformat(),
    )


@bp.get("/probes/<probe_id>/history")
@login_required
def history(probe_id: str) -> ResponseReturnValue:
    """Health samples over ``window`` (1h, 6h or 24h), oldest first."""
    _probe_or_404(probe_id)
    window, start, _end = history_window()
    with web_context().services.sessions() as session:
        samples = queries.history(session, probe_id, start)
    return jsonify(window=window, samples=[queries.sample_json(s) for s in samples])


@bp.get("/probes/<probe_id>/files")
@login_required
def files(probe_id: str) -> ResponseReturnValue:
    _probe_or_404(probe_id)
    limit = _limit()
    with web_context().services.sessions() as session:
        rows = queries.recent_files(session, probe_id, limit)
        totals = queries.file_totals(session, probe_id)
    return jsonify(files=[queries.file_json(r) for r in rows], totals=_totals_json(totals))


@bp.get("/probes/<probe_id>/events")
@login_required
def events(probe_id: str) -> ResponseReturnValue:
    _probe_or_404(probe_id)
    limit = _limit()
    with web_context().services.sessions() as session:
        rows = queries.recent_events(session, probe_id, limit)
    return jsonify(events=[queries.event_json(e) for e in rows])


@bp.get("/probes/<probe_id>/commands")
@login_required
def commands(probe_id: str) -> ResponseReturnValue:
    _probe_or_404(probe_id)
    limit = _limit()
    with web_context().services.sessions() as session:
        rows = queries.recent_commands(session, probe_id, limit)
    return jsonify(commands=[queries.command_json(c) for c in rows])


@bp.get("/tokens")
@login_required
def token_list() -> ResponseReturnValue:
    """Token ids and status; secrets are never stored, so never listed."""
    now = utcnow()
    with web_context().services.sessions.begin() as session:
        rows = tokens.list_tokens(session)
    return jsonify(
        tokens=[
            {
                "token_id": t.token_id,
                "status": t.status(now),
                "description": t.description,
                "created_at": t.created_at.isoformat(),
                "expires_at": t.expires_at.isoformat(),
                "usages_left": t.usages_left,
                "used_count": t.used_count,
                "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
            }
            for t in rows
        ]
    )


@bp.get("/ingest")
@login_required
def ingest() -> ResponseReturnValue:
    status = ingest_status()
    return jsonify(
        totals=_totals_json(status.totals),
        days=[
            {
                "day": d.day,
                "files": d.files,
                "by_state": d.by_state,
                "size_bytes": d.size_bytes,
                "complete": d.complete,
            }
            for d in status.days
        ],
        probes=[
            {
                "probe_id": p.probe_id,
                "files": p.files,
                "size_bytes": p.size_bytes,
                "ingested": p.ingested,
                "failed": p.failed,
                "last_received_at": p.last_received_at.isoformat() if p.last_received_at else None,
            }
            for p in status.probes
        ],
        failures=[{"probe_id": f.probe_id, **queries.file_json(f)} for f in status.failures],
        queue_depth=status.queue_depth,
        queue_error=status.queue_error,
    )


def _totals_json(totals: dict[str, queries.StateTotal]) -> dict[str, Any]:
    return {state: {"files": t.files, "size_bytes": t.size_bytes} for state, t in totals.items()}
