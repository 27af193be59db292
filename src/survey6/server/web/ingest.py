"""Ingest and dataset status: where the landed captures are on their way into the datasets."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import redis
from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from survey6.server.registry.models import CapturedFile, utcnow
from survey6.server.web import queries
from survey6.server.web.auth import login_required
from survey6.server.web.context import web_context

log = logging.getLogger(__name__)

bp = Blueprint("ingest", __name__)

DAYS_SHOWN = 14
FAILURES_SHOWN = 50


@dataclass(frozen=True)
class IngestStatus:
    totals: dict[str, queries.StateTotal]
    days: list[queries.DayRow]
    probes: list[queries.ProbeIngest]
    failures: list[CapturedFile]
    # Jobs waiting in Redis; None with the reason when Redis cannot be asked.
    queue_depth: int | None
    queue_error: str


def ingest_status() -> IngestStatus:
    services = web_context().services
    since = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=DAYS_SHOWN - 1)
    with services.sessions() as session:
        totals = queries.file_totals(session)
        days = queries.ingest_by_day(session, since)
        probes = queries.ingest_by_probe(session)
        failures = queries.recent_failures(session, FAILURES_SHOWN)
    depth, error = None, "not configured"
    if services.queue_depth is not None:
        try:
            depth, error = services.queue_depth(), ""
        except redis.RedisError as exc:
            error = f"Redis cannot be reached: {exc}"
            log.debug("queue depth unavailable: %s", exc)
    return IngestStatus(totals, days, probes, failures, depth, error)


@bp.get("/ingest")
@login_required
def ingest_page() -> ResponseReturnValue:
    return render_template("ingest.html", status=ingest_status(), now=utcnow())
