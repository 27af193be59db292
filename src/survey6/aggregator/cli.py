"""``survey6-aggregate``: the aggregator's command line."""

from __future__ import annotations

import click

from survey6 import __version__
from survey6.aggregator.settings import AggregatorSettings
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success, 1 error (one line on stderr), 2 usage error.",
)
@config_option()
@click.version_option(__version__, prog_name="survey6-aggregate")
def cli(config_file: object) -> None:
    """survey6 aggregator: turns landed IPv6 captures into Parquet datasets."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, AggregatorSettings, "aggregator"))


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-aggregate"))
