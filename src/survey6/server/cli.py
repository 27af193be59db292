"""``survey6-server``: the command-and-control server's command line."""

from __future__ import annotations

import click

from survey6 import __version__
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group
from survey6.server.settings import ServerSettings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success, 1 error (one line on stderr), 2 usage error.",
)
@config_option()
@click.version_option(__version__, prog_name="survey6-server")
def cli(config_file: object) -> None:
    """survey6 command-and-control server: enrols probes, watches their heartbeats, receives
    their captures and queues them for the aggregator."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, ServerSettings, "server"))


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-server"))
