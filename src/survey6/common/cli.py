"""What the three command lines share: one-line errors, settings loading and the config command.

Only command-line modules print or exit; everything below them raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from survey6.common.errors import Survey6Error
from survey6.common.settings import StrictModel, load_settings

ModelT = TypeVar("ModelT", bound=StrictModel)

# Exit statuses, as documented in each --help epilog.
EXIT_ERROR = 1
EXIT_USAGE = 2


def run_group(group: click.Group, prog_name: str, argv: list[str] | None = None) -> int:
    """Runs a click group; a survey6 error becomes ``prog: error: reason`` and exit status 1."""
    try:
        # Without standalone mode click returns ctx.exit()'s status instead of exiting.
        status = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{prog_name}: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Survey6Error as exc:
        click.echo(f"{prog_name}: error: {exc}", err=True)
        return EXIT_ERROR
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return status if isinstance(status, int) else 0


def config_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--config FILE`` option every group takes."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TOML config file (default: $SURVEY6_CONFIG, else /etc/survey6/<side>.toml if present).",
    )


def load_side_settings(
    ctx: click.Context, model: type[ModelT], side: str, overrides: Mapping[str, Any] | None = None
) -> ModelT:
    """Loads a side's settings with the group's ``--config`` and a command's flag overrides."""
    config_file = ctx.find_root().params.get("config_file")
    return load_settings(model, side=side, config_file=config_file, overrides=overrides)


def print_settings(settings: StrictModel) -> None:
    """Prints effective settings as JSON, for ``<side> config``."""
    click.echo(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
