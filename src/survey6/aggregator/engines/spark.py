"""The Spark engine: one SparkSession per engine, on ``local[*]`` or a cluster.

Spark writes a directory of part files, so each dataset is written with one partition into a
staging directory under ``<output>/_staging/`` and its single part file is then renamed into place;
the staging directory is removed whatever happens. On a cluster, the output directory must be one
that the driver and the executors see at the same path (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from survey6.aggregator import datasets
from survey6.aggregator.engines.base import SqlEngine
from survey6.aggregator.engines.dialect import SPARK
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.settings import SparkSettings

log = logging.getLogger(__name__)

APP_NAME = "survey6-aggregate"
SHUFFLE_PARTITIONS_PER_CORE = 2  # enough to balance uneven groups, few enough to stay cheap
LOCAL_IP = "127.0.0.1"  # a local master binds here rather than to whatever the hostname resolves to
_CONFIG = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.log.level": "ERROR",
    # The default INT96 is deprecated and unreadable as a timestamp by most tools; DuckDB writes µs.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": datasets.COMPRESSION,
    # A partition's derived files are small; _SUCCESS markers would only litter the staging area.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}


class SparkEngine(SqlEngine):
    name = "spark"
    dialect = SPARK

    def __init__(self, settings: SparkSettings) -> None:
        if settings.master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", LOCAL_IP)  # read by the JVM when it starts
        try:
            from py4j.protocol import Py4JError  # type: ignore[import-untyped]  # no stubs, no py.typed
            from pyspark.errors import PySparkException
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise AggregatorError("the spark engine needs PySpark: install survey6[spark]") from exc
        self._errors: tuple[type[BaseException], ...] = (PySparkException, Py4JError)
        config = {**_CONFIG, "spark.driver.memory": settings.driver_memory}
        cores = _local_cores(settings.master)
        if cores is not None:
            # Spark's 200 shuffle partitions suit a cluster; on one machine they are 200 tiny tasks
            # per aggregation. A cluster keeps whatever its spark-defaults.conf says.
            config["spark.sql.shuffle.partitions"] = str(SHUFFLE_PARTITIONS_PER_CORE * cores)
        builder = SparkSession.builder.master(settings.master).appName(APP_NAME)
        for key, value in config.items():
            builder = builder.config(key, value)
        try:
            self._spark: Any = builder.getOrCreate()
        except (*self._errors, OSError) as exc:
            raise AggregatorError(f"cannot start Spark on {settings.master}: {_first_line(exc)}") from exc
        log.info("spark session started on %s", settings.master)

    def _register(self, files: list[Path]) -> None:
        try:
            # basePath = the partition directory: its date= and probe_id= parents are not columns.
            frame = self._spark.read.option("basePath", str(files[0].parent)).parquet(*map(str, files))
            frame.createOrReplaceTempView(datasets.PACKETS)
        except self._errors as exc:
            raise AggregatorError(f"spark could not read {files[0].parent}: {_first_line(exc)}") from exc

    def _write(self, query: str, target: Path, staging: Path) -> None:
        directory = staging / f"{target.parent.parent.parent.name}-{uuid.uuid4().hex}"
        try:
            self._spark.sql(query).coalesce(1).write.parquet(str(directory))
            parts = sorted(directory.glob("part-*.parquet"))
            if len(parts) != 1:
                raise AggregatorError(f"spark wrote {len(parts)} part files for {target}, not 1")
            datasets.publish(parts[0], target)
        except self._errors as exc:
            raise AggregatorError(f"spark could not write {target}: {_first_line(exc)}") from exc
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        self._spark.stop()


def _local_cores(master: str) -> int | None:
    """The cores a ``local``, ``local[N]``, ``local[*]`` or ``local[N,F]`` master uses; None otherwise."""
    match = re.fullmatch(r"local(?:\[(\*|[0-9]+)(?:,[0-9]+)?\])?", master)
    if match is None:
        return None
    count = match.group(1) or "1"
    return (os.cpu_count() or 1) if count == "*" else max(1, int(count))


def _first_line(exc: BaseException) -> str:
    # A JVM error's text carries its whole stack trace; the first line says what happened.
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
