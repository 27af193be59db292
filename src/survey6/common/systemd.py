"""A dependency-free client of systemd's service notification protocol (``sd_notify``).

A service of ``Type=notify`` tells systemd that it is ready, what it is doing and that it is
still alive by sending newline-separated ``KEY=value`` assignments, as one datagram, to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``; a name starting with ``@`` lives in the abstract
namespace. Outside systemd the variable is unset and every call here is a no-op returning False,
so callers need no "am I under systemd?" branch::

    ready("capturing on eth0")
    interval_s = watchdog_interval_s()   # None when no watchdog is configured
    ...
    watchdog_ping()                      # every interval_s from the main loop
    stopping()

The environment is read on every call, never at import, so tests and re-executions see the
current values.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

# systemd recommends pinging at half the watchdog period, so one late ping is not fatal.
_WATCHDOG_PING_FRACTION = 0.5
_MICROSECONDS_PER_SECOND = 1_000_000


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` assignments to the service manager as one datagram.

    Args:
        lines: assignments such as ``"READY=1"``; each must hold an ``=`` and no newline.

    Returns:
        True when the message was sent; False when ``$NOTIFY_SOCKET`` is unset (not running
        under systemd) or the socket could not be reached. A failed send is logged, not raised:
        a notification is advisory, and systemd's own start and watchdog timeouts act on a
        service whose notifications are lost, whereas an exception would take the service down.

    Raises:
        ValueError: a line has no ``=`` or contains a newline (a programming error).
    """
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a single KEY=value assignment: {line!r}")
    address = _notify_address()
    if address is None or not lines:
        return False
    message = ("\n".join(lines) + "\n").encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("cannot notify the service manager: %s", exc, extra={"notify_socket": address})
        return False
    return True


def ready(status: str = "") -> bool:
    """Tell systemd that start-up is complete (``READY=1``), with an optional status text."""
    if status:
        return notify("READY=1", _status_line(status))
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd that the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (``STATUS=...``)."""
    return notify(_status_line(text))


def watchdog_ping() -> bool:
    """Feed the watchdog (``WATCHDOG=1``); call it every `watchdog_interval_s` seconds."""
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """The recommended watchdog ping interval in seconds: half of ``$WATCHDOG_USEC``.

    Returns:
        None when no watchdog is configured for this process: ``$WATCHDOG_USEC`` unset, not a
        positive integer, or ``$WATCHDOG_PID`` set to another process (the variables were
        inherited by a child, which must not ping on its parent's behalf).
    """
    usec_text = os.environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = os.environ.get("WATCHDOG_PID")
    if pid_text and _parse_int(pid_text) != os.getpid():
        return None
    usec = _parse_int(usec_text)
    if usec is None or usec <= 0:
        return None
    return usec * _WATCHDOG_PING_FRACTION / _MICROSECONDS_PER_SECOND


def _notify_address() -> str | None:
    """The socket address from ``$NOTIFY_SOCKET``, or None when unset or of an unknown kind."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return None
    if name.startswith("@"):
        # The abstract namespace: the address starts with a NUL byte instead of the '@'.
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    # Newer systemd versions also offer vsock addresses; this client speaks AF_UNIX only.
    log.warning("unsupported NOTIFY_SOCKET address, not notifying", extra={"notify_socket": name})
    return None


def _status_line(text: str) -> str:
    # STATUS is one line; a multi-line text (an exception message, say) is folded, not rejected.
    return "STATUS=" + " ".join(text.splitlines())


def _parse_int(text: str) -> int | None:
    # Plain decimal digits only, as systemd writes them; int() would also take "+5" or "1_000".
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None
