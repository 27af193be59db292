"""DAG ``survey6_parse_captures``: ingest the captures that landed since the last run.

discover_new_captures ─► ingest (one mapped task per file) ─┬─► announce_dirty_partitions ─► Asset
                                                            └─► summarize

Each ingest hashes its file, skips it when the ledger knows the SHA-256, otherwise parses it into the
``packets`` dataset and marks its (date, probe) partitions dirty, or quarantines it with a reason. A
run therefore does nothing twice, and a re-run of a failed run picks up exactly what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TypedDict, cast

from airflow.sdk import CronTriggerTimetable, TriggerRule, dag, get_current_context, task
from pydantic import JsonValue

from survey6.aggregator.dags.common import (
    DEFAULT_ARGS,
    DIRTY_PARTITIONS,
    START_DATE,
    TAGS,
    load_aggregator_settings,
)

log = logging.getLogger(__name__)

DAG_ID = "survey6_parse_captures"
# Probes rotate every minute; every ten minutes keeps the packets dataset fresh without a run
# that finds nothing most of the time.
SCHEDULE_CRON = "*/10 * * * *"
# Files one run maps over: far below Airflow's max_map_length (1024), so a backlog after an outage
# is worked off over several runs instead of one run with tens of thousands of task instances.
MAX_FILES_PER_RUN = 500
# Ingests of one run at a time: parsing is CPU-bound (numpy), the ledger serialises the writes.
PARALLEL_INGESTS = 4
RUN_TIMEOUT = timedelta(hours=6)
# How the UI names each mapped ingest: probe/sequence instead of 0, 1, 2...
INGEST_LABEL = "{{ task.op_kwargs['capture']['probe_id'] }}/{{ task.op_kwargs['capture']['sequence'] }}"


class CaptureRef(TypedDict):
    """A landed capture, as it travels through XCom."""

    path: str
    probe_id: str
    sequence: int


class IngestResult(TypedDict):
    path: str
    state: str  # ingested, quarantined, already-ingested, already-quarantined
    sha256_hex: str
    reason: str  # quarantine reason code
    detail: str
    rows: int
    partitions: list[list[str]]  # [date, probe_id]


@task
def discover_new_captures() -> list[CaptureRef]:
    """Landed captures the ledger has no record of (by path), oldest day first, bounded."""
    from survey6.aggregator import pipeline
    from survey6.aggregator.ledger import Ledger

    settings = load_aggregator_settings()
    found = pipeline.discover(landing=settings.landing_dir)
    # A landed path names one (probe, sequence) and the server never replaces its content, so a
    # recorded path is a finished file; ingest still checks the SHA-256 of what it reads.
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        known = {record.path for record in ledger.files()}
    new = [c for c in found.captures if str(c.path) not in known]
    # Oldest day first across all probes (the path's yyyy/mm/dd), so one probe's backlog after an
    # outage does not hold back the others' files beyond the per-run bound.
    new.sort(key=lambda c: (c.path.parts[-4:-1], c.probe_id or "", c.sequence))
    if len(new) > MAX_FILES_PER_RUN:
        log.warning(
            "%d new captures; ingesting %d now, the rest in the next runs", len(new), MAX_FILES_PER_RUN
        )
    return [
        CaptureRef(path=str(c.path), probe_id=c.probe_id or "", sequence=c.sequence)
        for c in new[:MAX_FILES_PER_RUN]
    ]


@task(
    max_active_tis_per_dagrun=PARALLEL_INGESTS,
    map_index_template=INGEST_LABEL,
)
def ingest(capture: CaptureRef) -> IngestResult:
    """Ingests one capture or quarantines it; a file that cannot be opened raises, to be retried."""
    from pathlib import Path

    from survey6.aggregator import pipeline
    from survey6.aggregator.errors import AggregatorError
    from survey6.aggregator.ledger import Ledger
    from survey6.aggregator.quarantine import Quarantine

    settings = load_aggregator_settings()
    landed = pipeline.Capture(Path(capture["path"]), "landing", capture["probe_id"], capture["sequence"])
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        outcome = pipeline.ingest_file(
            landed,
            ledger=ledger,
            quarantine=Quarantine.in_state_dir(settings.state_dir),
            output_root=settings.output_dir,
        )
    if outcome.state == "unreadable":
        # Not recorded by the pipeline (a permission or disk error may heal): fail this try so the
        # task's retries, with their backoff, try again.
        raise AggregatorError(outcome.detail)
    return IngestResult(
        path=capture["path"],
        state=outcome.state,
        sha256_hex=outcome.sha256_hex,
        reason=outcome.reason,
        detail=outcome.detail,
        rows=outcome.rows,
        partitions=[list(p) for p in outcome.partitions],
    )


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[DIRTY_PARTITIONS])
def announce_dirty_partitions(results: Sequence[IngestResult]) -> list[list[str]]:
    """Publishes the partitions this run made dirty as an Asset event, which starts the aggregate DAG.

    Runs even when some ingests failed, so the files that made it are aggregated without waiting.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    partitions = sorted({(p[0], p[1]) for r in results if r["state"] == "ingested" for p in r["partitions"]})
    if not partitions:
        # No event: the aggregate DAG has nothing new to do.
        raise AirflowSkipException("no partition changed in this run")
    event: list[JsonValue] = [[date, probe_id] for date, probe_id in partitions]
    get_current_context()["outlet_events"][DIRTY_PARTITIONS].extra = {"partitions": event}
    return [list(p) for p in partitions]


@task(trigger_rule=TriggerRule.ALL_DONE)
def summarize(captures: Sequence[CaptureRef], results: Sequence[IngestResult]) -> dict[str, int]:
    """Counts the run's files by outcome, logs every quarantined one, and fails the run when an ingest
    failed all its tries (those files are left for the next run; their task logs say why)."""
    from survey6.aggregator.errors import AggregatorError

    counts: dict[str, int] = {}
    for result in results:
        counts[result["state"]] = counts.get(result["state"], 0) + 1
        if result["state"] == "quarantined":
            log.warning("quarantined %s (%s): %s", result["path"], result["reason"], result["detail"])
    counts["failed"] = len(captures) - len(results)
    log.info("parse run: %s", counts)
    if counts["failed"]:
        raise AggregatorError(f"{counts['failed']} of {len(captures)} captures could not be ingested")
    return counts


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
def survey6_parse_captures() -> None:
    captures = discover_new_captures()
    results = ingest.expand(capture=captures)
    # At run time each argument is the upstream task's XCom value; mypy sees the XComArg.
    announce_dirty_partitions(cast("Sequence[IngestResult]", results))
    summarize(cast("Sequence[CaptureRef]", captures), cast("Sequence[IngestResult]", results))


survey6_parse_captures()
