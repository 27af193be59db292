"""DAG ``survey6_maintenance``: the daily look at what went wrong, and the cleanup with retention.

report_backlog ─► clean_up

- ``report_backlog`` logs the quarantine (files the pipeline refused, by reason, and each one refused
  since the previous day with its detail) and the partitions still waiting to be aggregated, and
  returns the counts (the run's XCom) for a dashboard or an alert to read.
- ``clean_up`` removes staging left-overs older than ``staging_retention_s`` and quarantined files
  older than ``quarantine_retention_s`` (0 keeps them forever). Their ledger entries stay, so an
  expired file is still never ingested again.

Error handling in the other two DAGs: every task retries (``common.RETRIES``, with exponential
backoff) what may heal by itself; a capture that fails a check is quarantined with a reason by the
pipeline at once and its task succeeds, because retrying cannot repair a file.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from survey6.aggregator.dags.common import DEFAULT_ARGS, START_DATE, TAGS, load_aggregator_settings

log = logging.getLogger(__name__)

DAG_ID = "survey6_maintenance"
# Daily, at a quiet hour after the aggregate DAG's sweep.
SCHEDULE_CRON = "45 3 * * *"
# Quarantined files logged one by one: those refused within this window (the previous day's run).
RECENT_QUARANTINE_S = 86_400.0
# A partition dirty for longer than this means the aggregate DAG is not keeping up or keeps failing.
STALE_DIRTY_S = 2 * 86_400.0
RUN_TIMEOUT = timedelta(hours=2)


@task
def report_backlog() -> dict[str, Any]:
    """Counts quarantined files by reason and dirty partitions; logs what needs a human."""
    import datetime as dt
    import time

    from survey6.aggregator.ledger import Ledger
    from survey6.aggregator.quarantine import Quarantine

    settings = load_aggregator_settings()
    now = time.time()
    by_reason: dict[str, int] = {}
    recent = 0
    for entry in Quarantine.in_state_dir(settings.state_dir).entries():
        reason = str(entry.get("reason", "unknown"))
        by_reason[reason] = by_reason.get(reason, 0) + 1
        at = dt.datetime.fromisoformat(str(entry.get("quarantined_at", "1970-01-01T00:00:00Z"))).timestamp()
        if now - at <= RECENT_QUARANTINE_S:
            recent += 1
            log.warning("quarantined %s (%s): %s", entry.get("source_path"), reason, entry.get("detail"))
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        dirty = ledger.dirty()
    stale = [d for d in dirty if now - d.dirty_since > STALE_DIRTY_S]
    for partition in stale:
        waited_h = (now - partition.dirty_since) / 3600
        log.warning("partition %s/%s has waited %.0f h to be aggregated", *partition.key, waited_h)
    report = {
        "quarantined_by_reason": by_reason,
        "quarantined_recently": recent,
        "dirty_partitions": len(dirty),
        "stale_dirty_partitions": len(stale),
    }
    log.info("backlog: %s", report)
    return report


@task
def clean_up() -> dict[str, int]:
    """Removes staging and quarantine past their retention (settings ``*_retention_s``)."""
    from survey6.aggregator import pipeline
    from survey6.aggregator.quarantine import Quarantine

    settings = load_aggregator_settings()
    report = pipeline.cleanup(
        state_dir=settings.state_dir,
        output_root=settings.output_dir,
        quarantine=Quarantine.in_state_dir(settings.state_dir),
        staging_retention_s=settings.staging_retention_s,
        quarantine_retention_s=settings.quarantine_retention_s,
    )
    log.info(
        "removed %d staging left-overs and %d expired quarantined files",
        report.staging_removed,
        report.quarantine_removed,
    )
    return {"staging_removed": report.staging_removed, "quarantine_removed": report.quarantine_removed}


@dag(
    dag_id=DAG_ID,
    schedule=CronTriggerTimetable(SCHEDULE_CRON, timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
)
def survey6_maintenance() -> None:
    # The report first, so a file expiring today is still counted once.
    report_backlog() >> clean_up()


survey6_maintenance()
