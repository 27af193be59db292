"""Aggregator settings: /etc/survey6/aggregator.toml, SURVEY6_* environment, flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from survey6.common.settings import LoggingSettings, StrictModel


class SparkSettings(StrictModel):
    # "local[*]" runs Spark in this process's JVM; a spark:// URL uses a cluster.
    master: str = "local[*]"


class AggregatorSettings(StrictModel):
    landing_dir: Path = Path("/var/lib/survey6/server/landing")
    output_dir: Path = Path("/var/lib/survey6/datasets")
    engine: Literal["duckdb", "spark"] = "duckdb"
    redis_url: str = "redis://127.0.0.1:6379/0"
    spark: SparkSettings = Field(default_factory=SparkSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
