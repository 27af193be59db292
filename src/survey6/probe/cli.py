"""``survey6-probe``: the probe's command line."""

from __future__ import annotations

import click

from survey6 import __version__
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group
from survey6.probe.settings import ProbeSettings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success, 1 error (one line on stderr), 2 usage error.",
)
@config_option()
@click.version_option(__version__, prog_name="survey6-probe")
def cli(config_file: object) -> None:
    """survey6 probe: records every IPv6 packet on this host's interfaces and ships the captures
    to the survey6 server when the link is idle."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, ProbeSettings, "probe"))


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-probe"))
