"""``survey6-probe start|stop``: through systemd where the unit is installed, otherwise as a
background process of our own (containers, machines without systemd) found by its control socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from survey6.probe import control
from survey6.probe.errors import AgentError

UNIT = "survey6-probe.service"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
LOG_NAME = "probe.log"


def systemd_manages_probe() -> bool:
    """True on a systemd host with the probe's unit installed."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    found = subprocess.run(["systemctl", "cat", UNIT], capture_output=True, timeout=30)
    return found.returncode == 0


def start(state_dir: Path, config_file: Path | None) -> str:
    """Starts the service and waits until it answers.

    Raises:
        AgentError: already running, or it did not come up (the log says why).
    """
    if systemd_manages_probe():
        _systemctl("start")
        return f"started {UNIT}"
    try:
        control.request(state_dir, "status")
    except AgentError:
        pass
    else:
        raise AgentError(f"a probe is already running for {state_dir}")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_NAME
    argv = [str(Path(sys.executable).with_name("survey6-probe"))]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    argv += ["run", "--state-dir", str(state_dir)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=os.environ.copy(),
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AgentError(f"the probe exited at start (status {process.returncode}); see {log_path}")
        try:
            control.request(state_dir, "status")
            return f"started (pid {process.pid}); log in {log_path}"
        except AgentError:
            time.sleep(0.2)
    raise AgentError(f"the probe did not answer within {START_TIMEOUT_S:.0f}s; see {log_path}")


def stop(state_dir: Path) -> str:
    """Stops the service and waits until it has sealed its files and exited.

    Raises:
        AgentError: not running, or it did not stop in time.
    """
    if systemd_manages_probe():
        _systemctl("stop")
        return f"stopped {UNIT}"
    control.request(state_dir, "stop")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not control.socket_path(state_dir).exists():
            return "stopped"
        time.sleep(0.2)
    raise AgentError(f"the probe did not stop within {STOP_TIMEOUT_S:.0f}s")


def _systemctl(verb: str) -> None:
    result = subprocess.run(["systemctl", verb, UNIT], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AgentError(f"systemctl {verb} {UNIT} failed: {result.stderr.strip()}")
