"""Engines build the derived datasets of a partition from its packet files.

Both run the same definitions (``datasets.derived_sql``): DuckDB in this process, the embedded
default; Spark (``local[*]`` or a cluster) for scale. ``open_engine`` picks one from the settings;
an engine holds a connection or a Spark session, so keep it for many builds and close it once::

    with contextlib.closing(open_engine(settings)) as engine:
        rows = engine.build(output_root, partition, settings.datasets)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from survey6.aggregator.datasets import Partition
    from survey6.aggregator.settings import AggregatorSettings, DatasetSettings


class Engine(Protocol):
    name: str

    def build(self, output_root: Path, partition: Partition, settings: DatasetSettings) -> dict[str, int]:
        """(Re)computes every derived dataset of one partition from all packet files under
        ``output_root/packets/<partition>`` and replaces each output partition atomically.

        Returns:
            Rows written per dataset.

        Raises:
            AggregatorError: the packet files cannot be read or a dataset cannot be written.
        """
        ...

    def close(self) -> None: ...


def open_engine(settings: AggregatorSettings) -> Engine:
    """The engine ``settings.engine`` names, ready to build.

    Raises:
        AggregatorError: the engine cannot start (PySpark missing, no Java, a cluster unreachable).
    """
    # Imported here: a DuckDB-only installation never loads PySpark, and Spark starts a JVM.
    if settings.engine == "spark":
        from survey6.aggregator.engines.spark import SparkEngine

        return SparkEngine(settings.spark)
    from survey6.aggregator.engines.duckdb import DuckDBEngine

    return DuckDBEngine()
