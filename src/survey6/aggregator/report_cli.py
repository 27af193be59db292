"""``survey6-aggregate report``: the click command, kept apart from ``cli`` so it registers in one line::

    cli.add_command(report_command)

Errors are ``Survey6Error``s, which the group's entry point (``run_group``) prints as one line.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from survey6.aggregator.settings import AggregatorSettings
from survey6.common.cli import load_side_settings

DEFAULT_HTML = Path("report.html")
DEFAULT_TOP_N = 20
EPILOG = "Exit status: 0 success, 1 error (one line on stderr), 2 usage error."


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        if dt.date.fromisoformat(value).isoformat() == value:
            return value
    except ValueError:
        pass
    raise click.BadParameter(f"{value!r} is not a date: use YYYY-MM-DD")


@click.command("report", epilog=EPILOG)
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Dataset root to report on (Parquet, date=/probe_id= partitions) [settings output_dir].",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_HTML,
    show_default=True,
    help="The page to write (replaced if it exists).",
)
@click.option("--date-from", callback=_date, metavar="YYYY-MM-DD", help="First UTC date to include.")
@click.option("--date-to", callback=_date, metavar="YYYY-MM-DD", help="Last UTC date to include.")
@click.option("--probe-id", "probe_ids", multiple=True, help="Only this probe (repeatable); default all.")
@click.option(
    "--top",
    "top_n",
    type=click.IntRange(1, None),
    default=DEFAULT_TOP_N,
    show_default=True,
    help="Rows in each top table (sources, /48s, scanners, DNS names).",
)
@click.pass_context
def report_command(ctx: click.Context, output: Path | None, html_path: Path, date_from: str | None,
                   date_to: str | None, probe_ids: tuple[str, ...], top_n: int) -> None:  # fmt: skip
    """Write an HTML report of the datasets: top sources and /48s, protocol mix over time,
    address-class shares, scanner candidates, DNS names and types.

    The page is self-contained (inline CSS and SVG, no script, nothing fetched), so it can be
    mailed or opened offline.
    """
    from survey6.aggregator import report

    settings = load_side_settings(ctx, AggregatorSettings, "aggregator", overrides={"output_dir": output})
    dates = None if date_from is None and date_to is None else (date_from, date_to)
    built = report.build_report(
        settings.output_dir,
        dates=dates,
        probe_ids=list(probe_ids) or None,
        top_n=top_n,
        settings=settings.datasets,
    )
    html = report.render_html(built)
    report.write_html(html, html_path)
    summary = built.summary
    days = f"{summary.dates[0]} to {summary.dates[-1]}" if len(summary.dates) > 1 else summary.dates[0]
    probes = len(summary.probes)
    count = built.scanner_count
    scanners = "" if count is None else f", {count:,} scanner candidate{'' if count == 1 else 's'}"
    click.echo(
        f"wrote {html_path} ({len(html.encode()) // 1024} KiB): {summary.packets:,} packets of"
        f" {probes} probe{'' if probes == 1 else 's'}, {days}{scanners}"
    )
    if built.notes:
        for note in built.notes:
            click.echo(f"note: {note}", err=True)
