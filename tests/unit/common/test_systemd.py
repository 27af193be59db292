"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notification socket."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from survey6.common import systemd

RECEIVE_TIMEOUT_S = 2.0
DATAGRAM_MAX_BYTES = 4096


class NotifyListener:
    """The receiving end of $NOTIFY_SOCKET: a bound datagram socket, as systemd holds it."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> str:
        return self.sock.recv(DATAGRAM_MAX_BYTES).decode("utf-8")

    def assert_nothing_sent(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(DATAGRAM_MAX_BYTES)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path holds at most 107 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="sd") as name:
        yield Path(name)


@pytest.fixture
def listener(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """A socket bound to a file path, named by $NOTIFY_SOCKET."""
    path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(RECEIVE_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield NotifyListener(sock, path)


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """A socket bound in the abstract namespace, named by $NOTIFY_SOCKET with a leading '@'."""
    name = f"survey6-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield NotifyListener(sock, "@" + name)


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


# --- outside systemd -------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_systemd")
def test_every_call_is_a_false_no_op_without_notify_socket() -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready("up") is False
    assert systemd.stopping() is False
    assert systemd.status("busy") is False
    assert systemd.watchdog_ping() is False
    assert systemd.watchdog_interval_s() is None


def test_an_empty_notify_socket_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.ready() is False


# --- the messages ----------------------------------------------------------------------------------


def test_ready(listener: NotifyListener) -> None:
    assert systemd.ready() is True
    assert listener.receive() == "READY=1\n"


def test_ready_with_status_is_one_datagram(listener: NotifyListener) -> None:
    assert systemd.ready("capturing on eth0") is True
    assert listener.receive() == "READY=1\nSTATUS=capturing on eth0\n"
    listener.assert_nothing_sent()


def test_stopping(listener: NotifyListener) -> None:
    assert systemd.stopping() is True
    assert listener.receive() == "STOPPING=1\n"


def test_status(listener: NotifyListener) -> None:
    assert systemd.status("uploading 3 files") is True
    assert listener.receive() == "STATUS=uploading 3 files\n"


def test_status_folds_a_multi_line_text_onto_one_line(listener: NotifyListener) -> None:
    assert systemd.status("spool full\nwaiting for the server") is True
    assert listener.receive() == "STATUS=spool full waiting for the server\n"


def test_watchdog_ping(listener: NotifyListener) -> None:
    assert systemd.watchdog_ping() is True
    assert listener.receive() == "WATCHDOG=1\n"


def test_notify_sends_several_assignments_in_order(listener: NotifyListener) -> None:
    assert systemd.notify("STATUS=reloading", "RELOADING=1", "MAINPID=42") is True
    assert listener.receive() == "STATUS=reloading\nRELOADING=1\nMAINPID=42\n"


def test_notify_of_nothing_sends_nothing(listener: NotifyListener) -> None:
    assert systemd.notify() is False
    listener.assert_nothing_sent()


@pytest.mark.parametrize("line", ["READY=1\nWATCHDOG=1", "READY", ""])
def test_notify_rejects_a_line_that_is_not_one_assignment(listener: NotifyListener, line: str) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        systemd.notify(line)
    listener.assert_nothing_sent()


def test_abstract_namespace_socket(abstract_listener: NotifyListener) -> None:
    assert abstract_listener.env_value.startswith("@")
    assert systemd.ready("abstract") is True
    assert abstract_listener.receive() == "READY=1\nSTATUS=abstract\n"


def test_sender_is_this_process(listener: NotifyListener) -> None:
    """With NotifyAccess=main systemd accepts only datagrams whose credentials carry the main PID."""
    listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert systemd.watchdog_ping() is True
    ucred_size = struct.calcsize("3i")
    data, ancillary, _flags, _address = listener.sock.recvmsg(
        DATAGRAM_MAX_BYTES, socket.CMSG_SPACE(ucred_size)
    )
    assert data == b"WATCHDOG=1\n"
    credentials = [
        struct.unpack("3i", cmsg_data[:ucred_size])
        for level, kind, cmsg_data in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert credentials and credentials[0][0] == os.getpid()


def test_environment_is_read_at_each_call(
    short_dir: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert systemd.status("first") is True
    assert listener.receive() == "STATUS=first\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other_path = str(short_dir / "other")
        other.bind(other_path)
        other.settimeout(RECEIVE_TIMEOUT_S)
        monkeypatch.setenv("NOTIFY_SOCKET", other_path)
        assert systemd.status("second") is True
        assert other.recv(DATAGRAM_MAX_BYTES) == b"STATUS=second\n"
    listener.assert_nothing_sent()


# --- failures are reported, not raised ------------------------------------------------------------


def test_a_missing_socket_returns_false_and_logs(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="survey6.common.systemd"):
        assert systemd.ready() is False
    assert "cannot notify the service manager" in caplog.text


def test_an_unsupported_address_kind_returns_false(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="survey6.common.systemd"):
        assert systemd.watchdog_ping() is False
    assert "unsupported NOTIFY_SOCKET" in caplog.text


# --- the watchdog interval ------------------------------------------------------------------------


@pytest.mark.usefixtures("no_systemd")
def test_watchdog_interval_is_half_the_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # WatchdogSec=30
    assert systemd.watchdog_interval_s() == pytest.approx(15.0)


@pytest.mark.usefixtures("no_systemd")
def test_watchdog_interval_for_this_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == pytest.approx(0.25)


@pytest.mark.usefixtures("no_systemd")
def test_watchdog_meant_for_another_process_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval_s() is None


@pytest.mark.usefixtures("no_systemd")
@pytest.mark.parametrize(
    ("usec", "pid"),
    [("0", None), ("-5", None), ("soon", None), ("1_000", None), ("", None), ("30000000", "me")],
)
def test_watchdog_interval_rejects_malformed_values(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert systemd.watchdog_interval_s() is None
