"""The report a researcher looks at first: who sends, what, when, and who scans, as one HTML page.

``build_report`` chooses the files of a selection (dates, probes) under an output root and has
``report_data`` gather a ``Report`` of plain values from them with read-only DuckDB queries;
``render_html`` turns it into a self-contained page (``report_html``), ``write_html`` writes it.
``docs/report.md`` says what the page shows and how each number is counted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from survey6.aggregator import datasets
from survey6.aggregator.datasets import Partition
from survey6.aggregator.errors import AggregatorError
from survey6.aggregator.report_data import DATASETS_READ, SERIES_POINTS_MAX, Layout, Report, read
from survey6.common.files import write_atomically

if TYPE_CHECKING:
    from survey6.aggregator.settings import DatasetSettings

__all__ = ["SERIES_POINTS_MAX", "TOP_N_MAX", "Report", "build_report", "render_html", "write_html"]

log = logging.getLogger(__name__)

TOP_N_MAX = 1000  # rows per table; beyond this a page stops being something one reads


# -- building it ------------------------------------------------------------------------------------


def build_report(
    output_root: Path,
    *,
    dates: tuple[str | None, str | None] | None = None,
    probe_ids: list[str] | None = None,
    top_n: int = 20,
    settings: DatasetSettings | None = None,
) -> Report:
    """Gathers the report of the datasets under ``output_root``.

    Args:
        output_root: the datasets' root (``<root>/packets/date=.../probe_id=...``).
        dates: first and last UTC date (``YYYY-MM-DD``, inclusive); None or a None end: no bound.
        probe_ids: only these probes; None: all.
        top_n: rows in each "top" table.
        settings: the dataset settings, to name the scanner criteria on the page.

    Raises:
        AggregatorError: bad arguments, no datasets under ``output_root``, nothing in the
            selection, or a dataset file that cannot be read.
    """
    _check_arguments(dates, top_n)
    layout = _scan(output_root)
    selected = _select(layout, output_root, dates, probe_ids)
    criteria = None if settings is None else (
        settings.scanner_min_destinations, settings.scanner_min_destination_64s
    )  # fmt: skip
    return read(
        selected,
        output_root=output_root,
        dates=dates,
        probe_ids=None if probe_ids is None else tuple(probe_ids),
        top_n=top_n,
        criteria=criteria,
        notes=_missing_notes(selected),
    )


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched."""
    from survey6.aggregator import report_html  # Jinja2 is loaded only when a page is made

    return report_html.render(report)


def write_html(html: str, path: Path) -> None:
    """Writes the page atomically: a reader (a browser, a mailer) sees the old page or the new one.

    Raises:
        AggregatorError: the file cannot be written.
    """
    try:
        write_atomically(path, html.encode())
    except OSError as exc:
        raise AggregatorError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _check_arguments(dates: tuple[str | None, str | None] | None, top_n: int) -> None:
    if not 1 <= top_n <= TOP_N_MAX:
        raise AggregatorError(f"top {top_n}: the tables take 1 to {TOP_N_MAX} rows")
    if dates is None:
        return
    for date in dates:
        if date is not None and not _is_date(date):
            raise AggregatorError(f"{date!r} is not a date: use YYYY-MM-DD")
    first, last = dates
    if first is not None and last is not None and first > last:
        raise AggregatorError(f"the date range {first} to {last} ends before it starts")


def _is_date(text: str) -> bool:
    try:
        return len(text) == len("YYYY-MM-DD") and dt.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


# -- which files --------------------------------------------------------------------------------------


def _scan(output_root: Path) -> Layout:
    if not output_root.exists():
        raise AggregatorError(f"the output directory {output_root} does not exist")
    if not output_root.is_dir():
        raise AggregatorError(f"the output directory {output_root} is not a directory")
    layout: Layout = {}
    for name in (datasets.PACKETS, *DATASETS_READ):
        layout[name] = {}
        for directory in sorted((output_root / name).glob("date=*/probe_id=*")):
            # A writer's temporary files are hidden; they are never read.
            files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
            try:
                partition = Partition.of_directory(directory)
            except AggregatorError:
                log.warning("not a dataset partition, left out of the report: %s", directory)
                continue
            if files:
                layout[name][partition] = files
    if not any(layout.values()):
        raise AggregatorError(
            f"no survey6 datasets in {output_root}: it has no packets/date=*/probe_id=* partitions"
            " (`survey6-aggregate run --output` writes them)"
        )
    return layout


def _select(
    layout: Layout,
    output_root: Path,
    dates: tuple[str | None, str | None] | None,
    probe_ids: list[str] | None,
) -> Layout:
    first, last = dates if dates is not None else (None, None)
    wanted = None if probe_ids is None else set(probe_ids)

    def keep(p: Partition) -> bool:
        in_range = (first is None or p.date >= first) and (last is None or p.date <= last)
        return in_range and (wanted is None or p.probe_id in wanted)

    selected = {name: {p: f for p, f in parts.items() if keep(p)} for name, parts in layout.items()}
    if any(selected.values()):
        return selected
    everything = {p for parts in layout.values() for p in parts}
    held_dates = sorted({p.date for p in everything})
    held_probes = sorted({p.probe_id for p in everything})
    asked = []
    if dates is not None:
        asked.append(f"from {first or 'the first date'} to {last or 'the last date'}")
    if wanted is not None:
        asked.append("of probe " + ", ".join(sorted(wanted)))
    shown = ", ".join(held_probes[:10]) + (
        f" and {len(held_probes) - 10} more" if len(held_probes) > 10 else ""
    )
    raise AggregatorError(
        f"no data {' '.join(asked)} in {output_root}; it holds {held_dates[0]} to {held_dates[-1]}"
        f" of probes {shown}"
    )


def _missing_notes(selected: Layout) -> tuple[str, ...]:
    with_packets = set(selected[datasets.PACKETS])
    notes = []
    if not with_packets:
        notes.append("The packets dataset is empty for this selection: packet and byte totals are missing.")
    # Datasets that lack the same partitions share one note: usually all of them (a run with
    # --no-aggregate) or none.
    lacking: dict[frozenset[Partition], list[str]] = defaultdict(list)
    for name in DATASETS_READ:
        missing = frozenset(with_packets - set(selected[name]))
        if missing:
            lacking[missing].append(name)
    for missing, names in lacking.items():
        example = min(missing)
        notes.append(
            f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not built for {len(missing)} of"
            f" {len(with_packets)} partitions (e.g. date={example.date}/probe_id={example.probe_id}):"
            " their packets are missing from those figures; `survey6-aggregate run` builds them."
        )
    return tuple(notes)
