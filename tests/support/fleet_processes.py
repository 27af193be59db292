"""A real ``survey6-server`` and real ``survey6-probe run`` agents as processes, for fleet tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.ports import free_tcp_port

BIN = Path(sys.executable).parent
SERVER = str(BIN / "survey6-server")
PROBE = str(BIN / "survey6-probe")
START_TIMEOUT_S = 30.0


def run(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Polls until `predicate` returns something truthy; fails the test with `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class ServerProcess:
    """``survey6-server`` with its own data directory and fixed loopback ports (restartable)."""

    def __init__(
        self,
        root: Path,
        *,
        netns: str | None = None,
        host: str = "127.0.0.1",
        redis_url: str = "",
        **liveness: float,
    ) -> None:
        self.data_dir = root / "server"
        self.log_path = root / "server.log"
        self.netns = netns
        self.host = host
        # In a namespace of its own any port is free; on the host, ask the kernel for free ones.
        self.enrol_port = 32000 if netns else free_tcp_port()
        self.control_port = 32001 if netns else free_tcp_port()
        self.env = {f"SURVEY6_LIVENESS__{k.upper()}": str(v) for k, v in liveness.items()}
        if redis_url:
            self.env["SURVEY6_REDIS_URL"] = redis_url
        self.process: subprocess.Popen[bytes] | None = None
        result = run([SERVER, "init", "--data-dir", str(self.data_dir), "--server-name", "localhost",
                      "--server-name", host])  # fmt: skip
        assert result.returncode == 0, result.stderr
        self.ca_hash = re.search(r"sha256:[0-9a-f]{64}", result.stdout).group(0)  # type: ignore[union-attr]

    @property
    def enrol_address(self) -> str:
        return f"[{self.host}]:{self.enrol_port}" if ":" in self.host else f"{self.host}:{self.enrol_port}"

    @property
    def control_address(self) -> str:
        return (
            f"[{self.host}]:{self.control_port}" if ":" in self.host else f"{self.host}:{self.control_port}"
        )

    def _listening_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count('"msg": "server listening"')

    def start(self) -> None:
        before = self._listening_lines()
        log = open(self.log_path, "ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.process = subprocess.Popen(
            [*prefix, SERVER, "run", "--data-dir", str(self.data_dir), "--enrol-listen", self.enrol_address,
             "--grpc-listen", self.control_address, "--http-listen", "127.0.0.1:0"],
            stdout=log, stderr=log, env={**os.environ, **self.env},
        )  # fmt: skip
        log.close()
        wait_for(lambda: self._listening_lines() > before, START_TIMEOUT_S, "the server to listen")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=30)
        self.process = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([SERVER, *args, "--data-dir", str(self.data_dir)])

    def token(self, *args: str) -> str:
        result = self.cli("token", "create", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def probes(self) -> list[dict[str, Any]]:
        result = self.cli("probes", "list", "--json")
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    def state_of(self, probe_id: str) -> str:
        return next(p["state"] for p in self.probes() if p["probe_id"] == probe_id)


class ProbeAgent:
    """``survey6-probe run`` for one state directory, optionally inside a network namespace."""

    def __init__(
        self, root: Path, name: str, netns: str | None = None, interfaces: tuple[str, ...] = ("lo",)
    ) -> None:
        self.state_dir = root / name / "state"
        self.spool = root / name / "spool"
        self.log_path = root / name / "probe.log"
        self.netns = netns
        self.interfaces = interfaces
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            "SURVEY6_SPOOL__DIR": str(self.spool),
            "SURVEY6_SPOOL__MIN_FREE_BYTES": "0",
            "SURVEY6_CAPTURE__INTERFACES": ",".join(interfaces),
        }

    def join(
        self, server: ServerProcess, token: str, ca_hash: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        pin = ca_hash or server.ca_hash
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return run([*prefix, PROBE, "join", server.enrol_address, "--token", token, "--ca-cert-hash", pin,
                    "--state-dir", str(self.state_dir), "--label", "site=test"])  # fmt: skip

    @property
    def probe_id(self) -> str:
        return str(json.loads((self.state_dir / "identity" / "identity.json").read_text())["probe_id"])

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*prefix, PROBE, "run", "--state-dir", str(self.state_dir)],
            stdout=log, stderr=log, env={**os.environ, **self.env},
        )  # fmt: skip
        log.close()
        wait_for(lambda: '"msg": "capturing"' in self.log_path.read_text(errors="replace")
                 or (self.process is not None and self.process.poll() is not None),
                 START_TIMEOUT_S, "the probe to capture")  # fmt: skip
        assert self.process.poll() is None, self.log_path.read_text()

    def stop(self, kill: bool = False) -> int:
        assert self.process is not None
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([PROBE, *args, "--state-dir", str(self.state_dir)])

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
