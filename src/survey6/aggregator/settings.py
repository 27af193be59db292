"""Aggregator settings: /etc/survey6/aggregator.toml, SURVEY6_* environment, flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survey6.common.settings import LoggingSettings, Seconds, StrictModel


class SparkSettings(StrictModel):
    # "local[*]" runs Spark in this process's JVM; a spark:// URL uses a cluster.
    master: str = "local[*]"
    # Spark's driver heap; the JVM's own default (1 GiB) is too small for a day of a busy probe.
    driver_memory: str = "2g"


class DatasetSettings(StrictModel):
    """Parameters of the derived datasets (flow tuples, time series, scanner candidates)."""

    # Flow tuples are counted per interval, as Corsaro's flowtuple counts per minute.
    flow_interval_s: Seconds = 60.0
    # Protocol and port time series bucket width.
    series_interval_s: Seconds = 60.0
    # A source is a scanner candidate when, within one day at one probe, it reaches at least this many
    # distinct destination addresses, or this many distinct destination /64s.
    scanner_min_destinations: int = Field(default=100, ge=1)
    scanner_min_destination_64s: int = Field(default=16, ge=1)


class AggregatorSettings(StrictModel):
    landing_dir: Path = Path("/var/lib/survey6/server/landing")
    output_dir: Path = Path("/var/lib/survey6/datasets")
    # The ledger (ledger.sqlite3), quarantine/ and staging/ live here.
    state_dir: Path = Path("/var/lib/survey6/aggregator")
    engine: Literal["duckdb", "spark"] = "duckdb"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Staging directories older than this are left-overs of an interrupted run and are removed.
    staging_retention_s: Seconds = 86400.0
    # Quarantined files are kept this long for a human to look at (0 = forever).
    quarantine_retention_s: Seconds = 30 * 86400.0
    datasets: DatasetSettings = Field(default_factory=DatasetSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
