"""What every engine does alike around its SQL: find the packet files, publish each dataset, count rows."""

from __future__ import annotations

import abc
import logging
from pathlib import Path

import pyarrow.parquet as pq

from survey6.aggregator import datasets
from survey6.aggregator.datasets import Partition
from survey6.aggregator.engines.dialect import Dialect
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.settings import DatasetSettings
from survey6.common.files import fsync_directory

log = logging.getLogger(__name__)


class SqlEngine(abc.ABC):
    """An engine that runs the datasets' SQL over a view ``packets``; subclasses say how."""

    name: str
    dialect: Dialect

    def build(self, output_root: Path, partition: Partition, settings: DatasetSettings) -> dict[str, int]:
        """See ``Engine.build``. A partition without packet files loses its derived files."""
        # Every query is made before anything is written, so a bad setting changes nothing.
        queries = {
            name: datasets.derived_sql(name, self.dialect, settings) for name in datasets.DERIVED_DATASETS
        }
        files = datasets.packet_files(output_root, partition)
        rows = dict.fromkeys(queries, 0)
        if not files:
            for name in queries:
                _remove(datasets.derived_path(output_root, name, partition))
            log.info(
                "partition %s/%s has no packets: derived files removed", partition.date, partition.probe_id
            )
            return rows
        self._register(files)
        for name, query in queries.items():
            target = datasets.derived_path(output_root, name, partition)
            _mkdir(target.parent)
            self._write(query, target, output_root / datasets.STAGING_DIR)
            rows[name] = _rows(target)
        log.debug(
            "built %s/%s with %s from %d files", partition.date, partition.probe_id, self.name, len(files)
        )
        return rows

    @abc.abstractmethod
    def _register(self, files: list[Path]) -> None:
        """Makes ``packets`` the view of exactly these packet files."""

    @abc.abstractmethod
    def _write(self, query: str, target: Path, staging: Path) -> None:
        """Writes the rows of ``query`` as one Parquet file and publishes it at ``target``."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _rows(path: Path) -> int:
    try:
        return int(pq.read_metadata(path).num_rows)
    except OSError as exc:
        raise AggregatorError(f"cannot read back {path}: {exc}") from exc


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AggregatorError(f"cannot create {directory}: {exc.strerror or exc}") from exc


def _remove(path: Path) -> None:
    try:
        if path.exists():
            path.unlink()
            fsync_directory(path.parent)
    except OSError as exc:
        raise AggregatorError(f"cannot remove {path}: {exc.strerror or exc}") from exc
