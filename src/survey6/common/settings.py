"""Typed settings, loaded once at start-up: defaults < TOML file < ``SURVEY6_*`` environment < flags.

Each side declares its own settings model (a :class:`StrictModel`) and calls :func:`load_settings`
from its command line. Nothing is read at import time.

Environment variables name a setting by its path, upper-cased, sections joined by a double
underscore: ``capture.snaplen_bytes`` is ``SURVEY6_CAPTURE__SNAPLEN_BYTES``. ``SURVEY6_CONFIG``
names the config file. Variables meant for another side are ignored, but a variable that names a
section of this side with an unknown key is an error, so that a typo is never silently dropped.
"""

from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from survey6.common.errors import ConfigError, UnitError
from survey6.common.units import parse_duration, parse_size

ENV_PREFIX = "SURVEY6_"
ENV_SECTION_SEPARATOR = "__"
CONFIG_FILE_ENV = "SURVEY6_CONFIG"

ModelT = TypeVar("ModelT", bound="StrictModel")


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str | int) else value


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str | int | float) else value


# Fields of these types accept "64MiB" / "60s" as well as plain numbers.
ByteCount = Annotated[int, BeforeValidator(_size)]
Seconds = Annotated[float, BeforeValidator(_duration)]


class StrictModel(BaseModel):
    """A settings section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class LoggingSettings(StrictModel):
    """Where and how the process logs. Services log to stdout; journald picks that up."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object a line (for journald and log shippers); "text": for a terminal.
    format: Literal["json", "text"] = "json"


def load_settings(
    model: type[ModelT],
    *,
    side: str,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelT:
    """Builds a side's settings from every source, later sources winning.

    Args:
        model: the side's settings model.
        side: "probe", "server" or "aggregator"; names the default file /etc/survey6/<side>.toml.
        config_file: a file named on the command line; it must exist. Without one,
            ``SURVEY6_CONFIG`` is used, and without that the default file if it exists.
        environ: the environment (``os.environ`` when None).
        overrides: values from command-line flags, by dotted path (``"capture.snaplen_bytes"``);
            None values mean "flag not given" and are skipped.

    Raises:
        ConfigError: an unreadable or malformed file, an unknown key or an invalid value; the
            message names the key and where it came from.
    """
    env = os.environ if environ is None else environ
    values: dict[str, tuple[Any, str]] = {}

    path = _choose_config_file(side, config_file, env)
    if path is not None:
        for key, value in _flatten(_read_toml(path)).items():
            values[key] = (value, str(path))
    for key, value in _from_environment(model, env).items():
        values[key] = (value, ENV_PREFIX + key.upper().replace(".", ENV_SECTION_SEPARATOR))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = (value, "command line")

    try:
        return model.model_validate(_unflatten({k: v for k, (v, _) in values.items()}))
    except ValidationError as exc:
        raise ConfigError(_describe_first_error(exc, values)) from exc


def _choose_config_file(side: str, given: Path | None, env: Mapping[str, str]) -> Path | None:
    if given is not None:
        return given
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV])
    default = Path("/etc/survey6") / f"{side}.toml"
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except PermissionError as exc:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *sections, leaf = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


def _section_model(annotation: Any) -> type[StrictModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    return None


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_list(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in get_args(annotation))
    return origin in (list, tuple, set, frozenset)


def _from_environment(model: type[StrictModel], env: Mapping[str, str]) -> dict[str, Any]:
    """Settings named by SURVEY6_* variables that belong to this model."""
    found: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_SECTION_SEPARATOR)
        current: type[StrictModel] = model
        for depth, part in enumerate(parts):
            field = current.model_fields.get(part)
            if field is None:
                if depth == 0:
                    break  # a setting of another side, or not a setting at all
                raise ConfigError(f"{name}: unknown setting '{'.'.join(parts)}'")
            section = _section_model(field.annotation)
            if depth == len(parts) - 1:
                if section is not None:
                    raise ConfigError(f"{name}: '{'.'.join(parts)}' is a section, not a setting")
                found[".".join(parts)] = _parse_env_value(raw, _is_list(field.annotation))
                break
            if section is None:
                raise ConfigError(f"{name}: '{part}' is a setting, not a section")
            current = section
    return found


def _parse_env_value(raw: str, is_list: bool) -> Any:
    if not is_list:
        return raw
    if raw.strip().startswith("["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a JSON list: {raw!r}") from exc
    return [item.strip() for item in raw.split(",") if item.strip()]


def _describe_first_error(exc: ValidationError, values: Mapping[str, tuple[Any, str]]) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    source = _source_of(key, values)
    if error["type"] == "extra_forbidden":
        return f"{source}: unknown setting '{key}'"
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, UnitError):
        return f"{source}: invalid setting '{key}': {cause}"  # the unit error shows the value
    reason = error["msg"]
    if error["type"] in ("model_type", "model_attributes_type"):
        reason = "expected a section (a TOML table)"
    shown = values[key][0] if key in values else None
    got = f" (got {shown!r})" if shown is not None else ""
    return f"{source}: invalid setting '{key}': {reason}{got}"


def _source_of(key: str, values: Mapping[str, tuple[Any, str]]) -> str:
    if key in values:
        return values[key][1]
    for path, (_, source) in values.items():  # a section error: name a key inside it
        if path.startswith(key + "."):
            return source
    return "settings"
