"""The local control socket of a running probe: ``survey6-probe status|suspend|resume|stop|leave``
talk to ``survey6-probe run`` through ``<state-dir>/control.sock`` (one JSON request, one reply)."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from survey6.probe.errors import AgentError, ProbeError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
SOCKET_MODE = 0o660  # the probe's user and its group (operators) may control it
CLIENT_TIMEOUT_S = 60.0
MAX_REQUEST_BYTES = 4096
OPERATIONS = ("status", "suspend", "resume", "stop", "leave")


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            request = json.loads(line)
            reply = self.server.dispatch(str(request.get("op", "")))
        except (ValueError, AttributeError):
            reply = {"ok": False, "error": "malformed request"}
        except ProbeError as exc:
            reply = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, agent: Any) -> None:
        path.unlink(missing_ok=True)  # left by a process that was killed
        super().__init__(str(path), _Handler)
        os.chmod(path, SOCKET_MODE)
        self.path = path
        self.agent = agent
        self._thread = threading.Thread(target=self.serve_forever, name="control-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)

    def dispatch(self, op: str) -> dict[str, Any]:
        if op == "status":
            return {"ok": True, "status": self.agent.status()}
        if op in ("suspend", "resume"):
            result = self.agent.execute(op)
            return {
                "ok": result.outcome == 1,
                "detail": result.detail,
                "error": "" if result.outcome == 1 else result.detail,
            }
        if op == "stop":
            self.agent.request_stop()
            return {"ok": True, "detail": "stopping"}
        if op == "leave":
            self.agent.leave_locally()
            return {"ok": True, "detail": "left"}
        return {"ok": False, "error": f"unknown operation {op!r}; one of {', '.join(OPERATIONS)}"}


def request(state_dir: Path, op: str) -> dict[str, Any]:
    """Sends one operation to the running probe.

    Raises:
        AgentError: no probe is running for this state directory, or it reported an error.
    """
    path = socket_path(state_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            data = sock.makefile("rb").readline()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentError(f"no probe is running for {state_dir} (nothing listens on {path})") from exc
    except OSError as exc:
        raise AgentError(f"cannot talk to the probe at {path}: {exc}") from exc
    reply: dict[str, Any] = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise AgentError(reply.get("error") or "the probe did not answer")
    return reply
