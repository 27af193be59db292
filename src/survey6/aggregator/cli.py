"""``survey6-aggregate``: the aggregator's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from survey6 import __version__
from survey6.aggregator.report_cli import report_command
from survey6.aggregator.settings import AggregatorSettings
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group
from survey6.common.log import configure_logging
from survey6.common.settings import LoggingSettings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from survey6.aggregator.pipeline import RunSummary

# `run` finished, but this run quarantined some files or could not read them (the summary lists them).
EXIT_INCOMPLETE = 3
EPILOG = (
    "Exit status: 0 success, 1 error (one line on stderr), 2 usage error, 3 `run` finished but"
    " quarantined or could not read some files (its summary lists them)."
)
SUMMARY_LIST_MAX = 20  # quarantined/unreadable files listed by name in the summary table


def _settings(ctx: click.Context, **overrides: Any) -> AggregatorSettings:
    return load_side_settings(ctx, AggregatorSettings, "aggregator", overrides=overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@config_option()
@click.version_option(__version__, prog_name="survey6-aggregate")
def cli(config_file: object) -> None:
    """survey6 aggregator: turns landed IPv6 captures into Parquet datasets."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, AggregatorSettings, "aggregator"))


def _output_options(function: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--output",
                type=click.Path(path_type=Path, file_okay=False),
                default=None,
                help="Dataset root (Parquet, date=/probe_id= partitions) [settings output_dir].",
            ),
            click.option(
                "--state-dir",
                type=click.Path(path_type=Path, file_okay=False),
                default=None,
                help="Ledger, quarantine/ and staging/ [settings state_dir].",
            ),
            click.option(
                "--engine",
                type=click.Choice(["duckdb", "spark"]),
                default=None,
                help="Engine that builds the derived datasets [duckdb].",
            ),
        ]
    ):
        function = option(function)
    return function


@cli.command("run", epilog=EPILOG)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--landing",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Landing zone <probe_id>/<yyyy>/<mm>/<dd>/<seq>.pcap to ingest [settings landing_dir, when no"
    " PATHS are given].",
)
@_output_options
@click.option("--probe-id", default=None, help="Probe id of PATHS captures that have no sidecar naming one.")
@click.option("--no-aggregate", is_flag=True, help="Only ingest; a later run builds the derived datasets.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("-v", "--verbose", is_flag=True, help="Log every file (stderr); otherwise only warnings.")
@click.pass_context
def run_command(ctx: click.Context, paths: tuple[Path, ...], landing: Path | None, output: Path | None,
                state_dir: Path | None, engine: str | None, probe_id: str | None, no_aggregate: bool,
                as_json: bool, verbose: bool) -> None:  # fmt: skip
    """Ingest captures and build the datasets, without Airflow: parse, enrich, write `packets`,
    rebuild the derived datasets of the partitions that changed, clean up.

    PATHS are pcap or pcapng files or folders of them (found by their magic; folders recursively),
    for studying existing captures; the user's files are never changed or removed. A file is done
    once (the ledger knows it by SHA-256), so re-running changes nothing. Unreadable, damaged or
    inconsistent files are quarantined with a reason and the run goes on.
    """
    from survey6.aggregator import pipeline

    settings = _settings(
        ctx,
        landing_dir=landing,
        output_dir=output,
        state_dir=state_dir,
        engine=engine,
    )
    level = settings.logging.level if verbose else "WARNING"
    configure_logging(LoggingSettings(level=level, format=settings.logging.format), stream=sys.stderr)
    if probe_id is not None and not paths:
        raise click.UsageError("--probe-id names the probe of PATHS; no PATHS were given")
    # The configured landing zone is the default input; PATHS alone mean only those.
    landing_zone = landing if landing is not None or paths else settings.landing_dir
    with _ProgressDisplay() as progress:
        summary = pipeline.run(
            settings,
            landing=landing_zone,
            paths=paths,
            probe_id=probe_id,
            aggregate=not no_aggregate,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        _print_summary(summary)
    if not summary.complete:
        raise _Incomplete(
            f"{summary.files_quarantined} files quarantined, {summary.files_unreadable} unreadable"
            " (listed in the summary)"
        )


@cli.command("worker", epilog=EPILOG)
@click.option("--redis-url", default=None, help="Redis of the server's ingest queue [settings redis_url].")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty instead of waiting for jobs.")
@_output_options
@click.pass_context
def worker_command(ctx: click.Context, redis_url: str | None, burst: bool, output: Path | None,
                   state_dir: Path | None, engine: str | None) -> None:  # fmt: skip
    """Consume the server's ingest queue (survey6-ingest): ingest each landed file, rebuild the
    derived datasets of its partitions, report the outcome to the server.

    SIGTERM or SIGINT stops the worker after the current job; a second one stops it at once.
    """
    from survey6.aggregator import jobs

    settings = _settings(ctx, redis_url=redis_url, output_dir=output, state_dir=state_dir, engine=engine)
    configure_logging(settings.logging)
    jobs.work(settings, burst=burst)


class _Incomplete(click.ClickException):
    """``run`` finished, but some of its files are not ingested: exit status 3 with a one-line note.

    An exception rather than ``ctx.exit``: ``run_group`` runs click without standalone mode, where
    an exit status returned by the command is dropped.
    """

    exit_code = EXIT_INCOMPLETE

    def show(self, file: Any = None) -> None:
        click.echo(f"survey6-aggregate: {self.format_message()}", err=True)


class _ProgressDisplay:
    """A rich progress bar on stderr, one task per stage; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console: Console = Console(stderr=True)
        self._progress: Progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[label]}", style="dim"),
            console=console,
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int) -> None:
        self._task = self._progress.add_task(name, total=total, label="")

    def advance(self, label: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, advance=1, label=label)


def _print_summary(summary: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="survey6-aggregate run", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    rows: list[tuple[str, object]] = [
        ("files seen", summary.files_seen),
        ("  ingested", summary.files_ingested),
        ("  already done (ledger)", summary.files_already_done),
        ("    of which quarantined earlier", summary.files_already_quarantined),
        ("  quarantined now", summary.files_quarantined),
        ("  unreadable", summary.files_unreadable),
        ("not captures (ignored)", summary.files_ignored),
        ("packets in ingested files", summary.packets),
        ("  rows written", summary.rows_written),
        *((f"  skipped: {reason}", n) for reason, n in sorted(summary.skipped_packets.items())),
        ("partitions built", summary.partitions_built),
        *((f"rows: {dataset}", n) for dataset, n in sorted(summary.dataset_rows.items())),
        ("staging left-overs removed", summary.staging_removed),
        ("quarantined files expired", summary.quarantine_expired),
        ("seconds", f"{summary.seconds:.1f}"),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    console: Console = Console(soft_wrap=True)
    console.print(table)
    problems = [(q["path"], f"{q['reason']}: {q['detail']}") for q in summary.quarantined]
    problems += [(u["path"], f"unreadable: {u['detail']}") for u in summary.unreadable]
    for path, why in problems[:SUMMARY_LIST_MAX]:
        # Text, not markup: a file name must never be read as rich markup.
        console.print(Text.assemble((path, "bold"), "  ", why), highlight=False)
    if len(problems) > SUMMARY_LIST_MAX:
        console.print(f"... and {len(problems) - SUMMARY_LIST_MAX} more (see --json)")


cli.add_command(report_command)


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-aggregate"))
