"""DAG ``survey6_aggregate_datasets``: rebuild the derived datasets of dirty partitions with Spark.

dirty_partitions ─► build (one mapped task per batch of date/probe partitions) ─► summarize ─► Asset

It runs when ``survey6_parse_captures`` publishes the ``survey6_dirty_partitions`` Asset, and once a
day whatever happened, so a partition left dirty by a failed build or by the queue worker is built
anyway. The ledger is the list of work, not the Asset event: each build recomputes one partition from
all of its packet files and replaces its outputs atomically, then clears the partition unless it was
marked dirty again meanwhile. A run, or a retry, therefore never builds anything twice for nothing
and never leaves a half-written partition.

This DAG always uses the Spark engine, whatever ``engine`` the settings name ("clean and aggregate
with Spark"): ``engine`` chooses for ``survey6-aggregate run`` and the queue worker. ``spark.master``
and ``spark.driver_memory`` of the settings apply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Final, TypedDict, cast

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from pydantic import JsonValue

from survey6.aggregator.dags.common import (
    DEFAULT_ARGS,
    DERIVED_DATASETS,
    DIRTY_PARTITIONS,
    START_DATE,
    TAGS,
    load_aggregator_settings,
)

log = logging.getLogger(__name__)

DAG_ID = "survey6_aggregate_datasets"
# The daily sweep, after midnight UTC when the previous day's partitions stop growing.
SWEEP_CRON = "15 1 * * *"
# Partitions one run takes on; more wait for the next run (the sweep, or the next Asset event).
MAX_PARTITIONS_PER_RUN = 200
# Partitions one build task builds in one Spark application. A Spark application's start and JIT
# warm-up cost more than building a day of a probe, so a task per partition would mostly start JVMs;
# each partition is still built and published on its own, so a retried batch redoes only what is
# still dirty.
PARTITIONS_PER_BUILD = 8
# Builds of one run at a time. Each task is its own Spark application with every core of
# ``local[*]``: two keep a worker busy while one reads its input, more only compete for the cores.
PARALLEL_BUILDS = 2
RUN_TIMEOUT = timedelta(hours=12)
ENGINE: Final = "spark"
# How the UI names each mapped build: its first partition.
BUILD_LABEL = (
    "{{ task.op_kwargs['partitions'][0] | join('/') }} (+{{ task.op_kwargs['partitions'] | length - 1 }})"
)

Partition = list[str]  # [date, probe_id], as it travels through XCom


class BuildResult(TypedDict):
    built: list[Partition]  # those still dirty when the task came to them (another run may be faster)
    rows: dict[str, int]  # per derived dataset, over the partitions built


@task
def dirty_partitions() -> list[list[Partition]]:
    """The partitions the ledger lists as dirty, longest waiting first, bounded, in batches."""
    from survey6.aggregator.ledger import Ledger

    settings = load_aggregator_settings()
    with Ledger.in_state_dir(settings.state_dir) as ledger:
        dirty = sorted(ledger.dirty(), key=lambda d: (d.dirty_since, d.key))
    if len(dirty) > MAX_PARTITIONS_PER_RUN:
        log.warning("%d dirty partitions; building %d in this run", len(dirty), MAX_PARTITIONS_PER_RUN)
    keys = [list(d.key) for d in dirty[:MAX_PARTITIONS_PER_RUN]]
    return [keys[i : i + PARTITIONS_PER_BUILD] for i in range(0, len(keys), PARTITIONS_PER_BUILD)]


@task(max_active_tis_per_dagrun=PARALLEL_BUILDS, map_index_template=BUILD_LABEL)
def build(partitions: list[Partition]) -> BuildResult:
    """Rebuilds every derived dataset of each partition of the batch that is still dirty, with Spark."""
    import contextlib

    from survey6.aggregator import pipeline
    from survey6.aggregator.engines import open_engine
    from survey6.aggregator.ledger import Ledger

    settings = load_aggregator_settings()
    settings.engine = ENGINE
    keys = {(p[0], p[1]) for p in partitions}
    with (
        Ledger.in_state_dir(settings.state_dir) as ledger,
        contextlib.closing(open_engine(settings)) as engine,
    ):
        report = pipeline.aggregate_dirty(
            ledger=ledger,
            engine=engine,
            output_root=settings.output_dir,
            settings=settings.datasets,
            only=keys,
        )
    return BuildResult(built=[list(k) for k in report.partitions], rows=report.rows)


@task(outlets=[DERIVED_DATASETS])
def summarize(results: Sequence[BuildResult]) -> dict[str, int]:
    """Totals the rows rebuilt per dataset and publishes the partitions as an Asset event."""
    from airflow.sdk.exceptions import AirflowSkipException

    built = [p for r in results for p in r["built"]]
    totals: dict[str, int] = {}
    for result in results:
        for dataset, rows in result["rows"].items():
            totals[dataset] = totals.get(dataset, 0) + rows
    log.info("rebuilt %d partitions: %s", len(built), totals)
    if not built:
        raise AirflowSkipException("no partition was dirty")
    event: list[JsonValue] = [f"{date}/{probe_id}" for date, probe_id in built]
    get_current_context()["outlet_events"][DERIVED_DATASETS].extra = {"partitions": event}
    return totals


@dag(
    dag_id=DAG_ID,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SWEEP_CRON, timezone="UTC"), assets=[DIRTY_PARTITIONS]
    ),
    start_date=START_DATE,
    catchup=False,
    # One run at a time: two would race for the same partitions (harmless, but twice the work).
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "spark"],
    doc_md=__doc__,
)
def survey6_aggregate_datasets() -> None:
    results = build.expand(partitions=dirty_partitions())
    # At run time the argument is the mapped task's XCom values; mypy sees the XComArg.
    summarize(cast("Sequence[BuildResult]", results))


survey6_aggregate_datasets()
