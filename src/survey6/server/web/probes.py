"""The probe list, a probe's page and the commands sent from it."""

from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from survey6.server.commands import queue_command
from survey6.server.errors import CommandError, UnknownProbeError
from survey6.server.liveness import STATES
from survey6.server.registry.models import utcnow
from survey6.server.web import queries
from survey6.server.web.auth import admin_required, current_account, login_required
from survey6.server.web.charts import health_charts
from survey6.server.web.context import web_context

log = logging.getLogger(__name__)

bp = Blueprint("probes", __name__)

# Commands the probe page offers (config changes stay on the command line for now).
PAGE_ACTIONS = ("suspend", "resume", "upload-now", "leave")
HISTORY_WINDOWS_S = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
DEFAULT_WINDOW = "1h"
FILES_SHOWN = 100
EVENTS_SHOWN = 100
COMMANDS_SHOWN = 50


def list_arguments() -> tuple[str, str, str, bool]:
    """The list's filter and sort from the query string: state, text, sort key, descending."""
    state = request.args.get("state", "")
    if state not in STATES:
        state = ""
    sort = request.args.get("sort", queries.DEFAULT_SORT)
    if sort not in queries.SORT_KEYS:
        sort = queries.DEFAULT_SORT
    return state, request.args.get("q", "")[:200], sort, request.args.get("order") == "desc"


def listed_probes() -> tuple[list[queries.ProbeView], dict[str, int]]:
    """The probes the list shows now, filtered and sorted, and the counts of all by state."""
    state, text, sort, descending = list_arguments()
    services = web_context().services
    with services.sessions() as session:
        views = queries.probe_views(session, services.fleet)
    shown = queries.sort_probes(
        queries.filter_probes(views, state=state, text=text), sort, descending=descending
    )
    return shown, queries.state_counts(views)


@bp.get("/")
def index() -> ResponseReturnValue:
    return redirect(url_for("probes.probe_list"))


@bp.get("/probes")
@login_required
def probe_list() -> ResponseReturnValue:
    state, text, sort, descending = list_arguments()
    shown, counts = listed_probes()
    return render_template(
        "probes.html",
        probes=shown,
        counts=counts,
        states=STATES,
        state=state,
        text=text,
        sort=sort,
        descending=descending,
        sort_keys=queries.SORT_KEYS,
        now=utcnow(),
        refresh_ms=int(web_context().web.refresh_interval_s * 1000),
    )


def history_window() -> tuple[str, dt.datetime, dt.datetime]:
    window = request.args.get("window", DEFAULT_WINDOW)
    if window not in HISTORY_WINDOWS_S:
        window = DEFAULT_WINDOW
    end = utcnow()
    return window, end - dt.timedelta(seconds=HISTORY_WINDOWS_S[window]), end


@bp.get("/probes/<probe_id>")
@login_required
def probe_detail(probe_id: str) -> ResponseReturnValue:
    services = web_context().services
    window, start, end = history_window()
    with services.sessions() as session:
        view = queries.probe_view(session, services.fleet, probe_id)
        if view is None:
            abort(404, description=f"No probe {probe_id}.")
        samples = queries.history(session, probe_id, start)
        files = queries.recent_files(session, probe_id, FILES_SHOWN)
        totals = queries.file_totals(session, probe_id)
        events = queries.recent_events(session, probe_id, EVENTS_SHOWN)
        commands = queries.recent_commands(session, probe_id, COMMANDS_SHOWN)
        audit = queries.probe_audit(session, probe_id)
    return render_template(
        "probe.html",
        probe=view,
        charts=health_charts(samples, start, end),
        window=window,
        windows=list(HISTORY_WINDOWS_S),
        files=files,
        totals=totals,
        events=events,
        commands=commands,
        audit=audit,
        actions=PAGE_ACTIONS,
        now=utcnow(),
        refresh_ms=int(web_context().web.refresh_interval_s * 1000),
    )


@bp.post("/probes/<probe_id>/commands")
@admin_required
def probe_command(probe_id: str) -> ResponseReturnValue:
    action = request.form.get("action", "")
    if action not in PAGE_ACTIONS:
        abort(400, description=f"Unknown action; one of {', '.join(PAGE_ACTIONS)}.")
    services = web_context().services
    account = current_account()
    try:
        with services.sessions.begin() as session:
            command_id = queue_command(session, probe_id, action)
    except UnknownProbeError:
        abort(404, description=f"No probe {probe_id}.")
    except CommandError as exc:
        flash(str(exc), "error")
        return redirect(url_for("probes.probe_detail", probe_id=probe_id))
    # At once rather than at the next refresh round: the probe's next heartbeat carries it.
    services.fleet.refresh()
    log.info(
        "%s queued %s for %s",
        account.username if account else "-",
        action,
        probe_id,
        extra={"probe_id": probe_id, "command_id": command_id, "client": request.remote_addr},
    )
    flash(f"{action} queued for {probe_id}; the probe gets it with its next heartbeat.", "info")
    return redirect(url_for("probes.probe_detail", probe_id=probe_id))
