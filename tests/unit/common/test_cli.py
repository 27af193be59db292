"""The installed console scripts, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = ["survey6-probe", "survey6-server", "survey6-aggregate"]


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name(script)
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_version(script: str) -> None:
    result = run(script, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "config" in result.stdout
    version = run(script, "--version")
    assert version.returncode == 0 and script in version.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_config_prints_effective_settings(script: str) -> None:
    result = run(script, "config", env={"SURVEY6_LOGGING__LEVEL": "DEBUG"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["logging"]["level"] == "DEBUG"


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_settings_give_one_line_and_non_zero_exit(script: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[logging]\nlevel = 'LOUD'\ncolour = true\n")
    result = run(script, "--config", str(config), "config")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{script}: error: {config}:")
    assert "Traceback" not in result.stderr


def test_unreadable_config_file_is_named(tmp_path: Path) -> None:
    result = run("survey6-probe", "--config", str(tmp_path / "nope.toml"), "config")
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"survey6-probe: error: config file {tmp_path / 'nope.toml'} does not exist"
    )


def test_unknown_command_is_a_usage_error() -> None:
    result = run("survey6-probe", "frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
