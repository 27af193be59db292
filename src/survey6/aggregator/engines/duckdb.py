"""The DuckDB engine: in this process, one in-memory connection per engine."""

from __future__ import annotations

from pathlib import Path

import duckdb

from survey6.aggregator import datasets
from survey6.aggregator.engines.base import SqlEngine
from survey6.aggregator.engines.dialect import DUCKDB
from survey6.aggregator.errors import AggregatorError


class DuckDBEngine(SqlEngine):
    name = "duckdb"
    dialect = DUCKDB

    def __init__(self) -> None:
        self._connection = duckdb.connect()
        # The dialect's timestamps are cast to TIMESTAMPTZ in the session's zone.
        self._connection.execute("SET TimeZone = 'UTC'")
        # Statistics propagation proves columns NOT NULL from the Parquet statistics of the input
        # (a day without a truncated packet has no null protocol) and the writer then marks them
        # REQUIRED: the schema would depend on the data. Spark's never does; without it, ours neither.
        self._connection.execute("SET disabled_optimizers = 'statistics_propagation'")

    def _register(self, files: list[Path]) -> None:
        listing = ", ".join(_literal(str(path)) for path in files)
        self._execute(
            "CREATE OR REPLACE TEMP VIEW packets AS "
            f"SELECT * FROM read_parquet([{listing}], hive_partitioning = false)",
            what="read the packet files",
        )

    def _write(self, query: str, target: Path, staging: Path) -> None:
        temporary = datasets.temporary_path(target)
        try:
            options = f"FORMAT parquet, COMPRESSION {datasets.COMPRESSION}"
            self._execute(f"COPY ({query}) TO {_literal(str(temporary))} ({options})", what=f"write {target}")
            datasets.publish(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def close(self) -> None:
        self._connection.close()

    def _execute(self, statement: str, *, what: str) -> None:
        try:
            self._connection.execute(statement)
        except duckdb.Error as exc:
            raise AggregatorError(f"duckdb could not {what}: {exc}") from exc


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
