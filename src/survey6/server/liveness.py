"""Probe states from heartbeat age and reported capture state.

Alive and capturing are different things: ``state`` says whether the probe is reachable (and
whether it was told to stop capturing), ``capture_health`` what its capture is doing.
"""

from __future__ import annotations

import datetime as dt

from survey6.wire.v1 import control_pb2

ONLINE, STALE, OFFLINE, SUSPENDED, LEFT = "online", "stale", "offline", "suspended", "left"
STATES = (ONLINE, STALE, OFFLINE, SUSPENDED, LEFT)


def liveness_state(
    now: dt.datetime,
    last_heartbeat_at: dt.datetime | None,
    capture_state: int,
    *,
    left: bool,
    stale_after_s: float,
    offline_after_s: float,
) -> str:
    if left:
        return LEFT
    if last_heartbeat_at is None:
        return OFFLINE
    age_s = (now - last_heartbeat_at).total_seconds()
    if age_s > offline_after_s:
        return OFFLINE
    if age_s > stale_after_s:
        return STALE
    if capture_state == control_pb2.CAPTURE_STATE_SUSPENDED:
        return SUSPENDED
    return ONLINE


def capture_health(
    request: control_pb2.HeartbeatRequest, previous: control_pb2.HeartbeatRequest | None
) -> str:
    """capturing | dropping | spool full | failed | stopped | suspended, from the last two heartbeats."""
    state = request.capture_state
    if state == control_pb2.CAPTURE_STATE_SUSPENDED:
        return "suspended"
    if state == control_pb2.CAPTURE_STATE_FAILED:
        return "failed"
    if state == control_pb2.CAPTURE_STATE_SPOOL_FULL or request.spool.full:
        return "spool full"
    if state != control_pb2.CAPTURE_STATE_CAPTURING:
        return "stopped"
    if previous is not None and _dropped(request) > _dropped(previous):
        return "dropping"
    return "capturing"


def _dropped(request: control_pb2.HeartbeatRequest) -> int:
    return sum(i.dropped_packets_total + i.interface_dropped_packets_total for i in request.interfaces)
