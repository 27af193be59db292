from __future__ import annotations

import os
from pathlib import Path

import pytest

from survey6.common.errors import ConfigError
from survey6.common.settings import load_settings
from survey6.probe.settings import ProbeSettings
from survey6.server.settings import ServerSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(text)
    return path


def test_defaults_when_no_source_is_given() -> None:
    settings = load_settings(ProbeSettings, side="probe", environ={})
    assert settings.capture.rotate_interval_s == 60.0
    assert settings.spool.full_policy == "pause"


def test_each_source_overrides_the_one_before(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[capture]\nsnaplen_bytes = 1000\nrotate_interval_s = "5m"\nrotate_max_bytes = "8MiB"\n'
        '[spool]\nfull_policy = "drop-oldest"\n',
    )
    environ = {"SURVEY6_CAPTURE__SNAPLEN_BYTES": "2000", "SURVEY6_CAPTURE__ROTATE_INTERVAL_S": "30s"}
    settings = load_settings(
        ProbeSettings,
        side="probe",
        config_file=config,
        environ=environ,
        overrides={"capture.rotate_interval_s": 10.0, "capture.promiscuous": None},
    )
    assert settings.capture.snaplen_bytes == 2000  # env over file
    assert settings.capture.rotate_interval_s == 10.0  # flag over env
    assert settings.capture.rotate_max_bytes == 8 << 20  # file over default, units parsed
    assert settings.spool.full_policy == "drop-oldest"
    assert settings.capture.promiscuous is True  # a flag not given (None) changes nothing


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, 'state_dir = "/srv/probe"\n')
    settings = load_settings(ProbeSettings, side="probe", environ={"SURVEY6_CONFIG": str(config)})
    assert settings.state_dir == Path("/srv/probe")


def test_list_settings_from_environment() -> None:
    environ = {"SURVEY6_CAPTURE__INTERFACES": "eth0, eth1"}
    assert load_settings(ProbeSettings, side="probe", environ=environ).capture.interfaces == ["eth0", "eth1"]
    environ = {"SURVEY6_CAPTURE__INTERFACES": '["eth2"]'}
    assert load_settings(ProbeSettings, side="probe", environ=environ).capture.interfaces == ["eth2"]


def test_variables_of_another_side_are_ignored() -> None:
    environ = {"SURVEY6_GRPC_LISTEN": "[::]:1", "SURVEY6_LIVENESS__STALE_AFTER_S": "5"}
    load_settings(ProbeSettings, side="probe", environ=environ)
    server = load_settings(ServerSettings, side="server", environ=environ)
    assert server.grpc_listen == "[::]:1" and server.liveness.stale_after_s == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[capture]\nsnaplenx = 3\n", "unknown setting 'capture.snaplenx'"),
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
        ('[capture]\nsnaplen_bytes = "big"\n', "invalid setting 'capture.snaplen_bytes'"),
        ("[capture]\nsnaplen_bytes = 1\n", "invalid setting 'capture.snaplen_bytes'"),
        ('[spool]\nfull_policy = "panic"\n', "invalid setting 'spool.full_policy'"),
        ('[capture]\nrotate_interval_s = "5x"\n', "not a duration: '5x'"),
        ("capture = 3\n", "invalid setting 'capture': expected a section"),
        ("[capture\n", "is not valid TOML"),
    ],
)
def test_bad_file_names_the_key_and_file(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(ProbeSettings, side="probe", config_file=config, environ={})
    message = str(caught.value)
    assert expected in message
    assert str(config) in message
    assert "\n" not in message


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SURVEY6_CAPTURE__SNAPLEN_BYTES: invalid setting"):
        load_settings(ProbeSettings, side="probe", environ={"SURVEY6_CAPTURE__SNAPLEN_BYTES": "x"})
    with pytest.raises(ConfigError, match="SURVEY6_CAPTURE__SNAPLENX: unknown setting 'capture.snaplenx'"):
        load_settings(ProbeSettings, side="probe", environ={"SURVEY6_CAPTURE__SNAPLENX": "1"})
    with pytest.raises(ConfigError, match="is a section"):
        load_settings(ProbeSettings, side="probe", environ={"SURVEY6_CAPTURE": "1"})


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_settings(ProbeSettings, side="probe", config_file=tmp_path / "absent.toml", environ={})
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(ProbeSettings, side="probe", config_file=tmp_path, environ={})
    locked = write(tmp_path, "")
    locked.chmod(0)
    if os.geteuid() == 0:
        # root reads any file; prove the message with a path that cannot be opened instead
        locked = tmp_path / "probe.toml" / "below-a-file"
        with pytest.raises(ConfigError, match="cannot be read"):
            load_settings(ProbeSettings, side="probe", config_file=locked, environ={})
    else:
        with pytest.raises(ConfigError, match="not readable"):
            load_settings(ProbeSettings, side="probe", config_file=locked, environ={})
