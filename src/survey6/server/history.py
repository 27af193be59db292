"""Retention of the health history (``heartbeat_samples``).

The fleet writes one sample per probe every history interval (30 s) and one at each change of
capture health: about 2,900 rows per probe per day, 29 M a day for 10,000 probes. The web UI's
charts look back 24 hours at most, so older rows are deleted after ``history_retention_s`` — except
each probe's newest sample, which the audit reads as the time of the probe's last known health.

Rows go in batches, each in its own short transaction, so the write-behind's inserts (and, on
SQLite, every other writer) wait for one batch at most, never for the whole purge.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from survey6.server.registry.models import HeartbeatSample

log = logging.getLogger(__name__)

PRUNE_BATCH_ROWS = 5_000  # rows deleted per transaction
PRUNE_MAX_BATCHES = 200  # per round; the rest waits for the next round


def prune_history(
    sessions: sessionmaker[Session], cutoff: dt.datetime, *, batch_rows: int = PRUNE_BATCH_ROWS
) -> int:
    """Deletes samples older than ``cutoff``, keeping each probe's newest; returns how many went."""
    newer = aliased(HeartbeatSample)
    has_newer = (
        select(newer.id)
        .where(newer.probe_id == HeartbeatSample.probe_id, newer.at > HeartbeatSample.at)
        .exists()
    )
    deleted = 0
    for _ in range(PRUNE_MAX_BATCHES):
        victims = select(HeartbeatSample.id).where(HeartbeatSample.at < cutoff, has_newer).limit(batch_rows)
        with sessions.begin() as session:
            result = session.execute(
                delete(HeartbeatSample).where(HeartbeatSample.id.in_(victims.scalar_subquery()))
            )
            count = int(getattr(result, "rowcount", 0) or 0)
        deleted += count
        if count < batch_rows:
            break
    if deleted:
        log.info("pruned %d health history samples older than %s", deleted, cutoff.isoformat())
    return deleted


def history_rows(sessions: sessionmaker[Session]) -> int:
    """How many samples the registry holds (for tests and operators)."""
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(HeartbeatSample)) or 0)
