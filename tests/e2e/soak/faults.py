"""The fault injector: carries out a plan's faults at their times and writes down each one's window.

Every event in the log (JSON lines) names the fault, the probe, the loss it may cause (see
``plan.LOSS_BY_KIND``) and its window in wall-clock seconds: ``begin`` when the fault started and
``end`` when it was over (for a killed probe: when the new process captured again).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.soak.lab import Lab, LabError
from e2e.soak.plan import Fault, SoakPlan

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
RECOVERY_TIMEOUT_S = 180.0  # the probe's heartbeat back-off alone may take a minute
LAST_FAULT_MARGIN_S = 5.0  # a fault is over at least this long before the traffic ends
BACKLOG_SETTLED = 2  # files: the one being written out and the one being sealed


class UnexpectedExit(LabError):
    """A process the soak did not stop has exited."""


class Injector:
    def __init__(self, lab: Lab, plan: SoakPlan, events_path: Path) -> None:
        self.lab = lab
        self.plan = plan
        self.events_path = events_path
        self.events: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.expected_down: set[str] = set()

    def run(self, traffic_start: float, traffic_end: float, traffic_alive: Callable[[], bool]) -> None:
        """Injects every fault at its time, or later when the one before took longer; returns when
        the last is over. A fault that would not be over before the traffic ends is left out."""
        for index, fault in enumerate(self.plan.faults):
            self._sleep_until(traffic_start + fault.at_s)
            if not traffic_alive() or time.time() + fault.duration_s > traffic_end - LAST_FAULT_MARGIN_S:
                # Faults wait for the effect of the one before to be over, so a long run can fall behind.
                self.notes.append(f"{len(self.plan.faults) - index} planned faults not injected: "
                                  "the traffic was ending")  # fmt: skip
                return
            log.info("fault %s on %s for %.1f s", fault.kind, _target(fault), fault.duration_s)
            begin = time.time()
            end, detail = self._inject(fault)
            self._record(fault, begin, end, detail)

    def check(self) -> None:
        """Raises UnexpectedExit when a process has died that no fault stopped.

        The aggregator worker is the exception: it is restarted, as a service manager would, and the
        exit is written down in the report's notes (a worker that exits loses no data: the jobs wait).
        """
        for name in ("server", "redis", "worker", *(f"probe{i}" for i in range(self.plan.probes))):
            if name in self.expected_down:
                continue
            if name == "worker" and not self.lab.alive(name):
                process = self.lab.processes.get(name)
                code = process.returncode if process is not None else None
                at = datetime.now(UTC).isoformat(timespec="seconds")
                self.notes.append(
                    f"the aggregator worker exited with status {code} at {at} and was restarted"
                )
                log.warning("the aggregator worker exited (status %s); restarting it", code)
                self.lab.start_worker()
                continue
            if not self.lab.alive(name):
                process = self.lab.processes.get(name)
                code = process.returncode if process is not None else None
                raise UnexpectedExit(f"{name} exited (status {code}); see {self.lab.log_path(name)}")

    def _sleep_until(self, at: float) -> None:
        while (left := at - time.time()) > 0:
            self.check()
            time.sleep(min(left, CHECK_INTERVAL_S))

    def hold(self, seconds: float) -> None:
        self._sleep_until(time.time() + seconds)

    def _wait_for_backlog(self, i: int) -> None:
        deadline = time.time() + RECOVERY_TIMEOUT_S
        while time.time() < deadline:
            self.check()
            try:
                status = json.loads(self.lab.probe_cli(i, "status", "--json"))
            except (LabError, ValueError):
                status = {}
            if (
                status.get("server_reachable")
                and int(status.get("backlog_files", BACKLOG_SETTLED + 1)) <= BACKLOG_SETTLED
            ):
                return
            time.sleep(CHECK_INTERVAL_S)
        self.notes.append(
            f"probe {i} still had a backlog {RECOVERY_TIMEOUT_S:.0f} s after the server was back"
        )

    def _record(self, fault: Fault, begin: float, end: float, detail: dict[str, Any]) -> None:
        event = {"kind": fault.kind, "probe": fault.probe, "loss": fault.loss, "planned_at_s": fault.at_s,
                 "begin": round(begin, 3), "end": round(end, 3), **detail}  # fmt: skip
        self.events.append(event)
        with open(self.events_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event) + "\n")

    def _inject(self, fault: Fault) -> tuple[float, dict[str, Any]]:
        lab, i = self.lab, fault.probe
        if fault.kind == "probe-kill":
            assert i is not None
            self.expected_down.add(f"probe{i}")
            lab.stop(f"probe{i}", signal.SIGKILL)
            time.sleep(fault.duration_s)
            capturing = lab.start_probe(i, small_spool=i == self.plan.small_spool_probe)
            self.expected_down.discard(f"probe{i}")
            return capturing, {}
        if fault.kind == "server-kill":
            self.expected_down.add("server")
            lab.stop("server", signal.SIGKILL)
            self.hold(fault.duration_s)
            lab.start_server()
            self.expected_down.discard("server")
            return time.time(), {}
        if fault.kind == "redis-outage":
            self.expected_down.add("redis")
            lab.stop("redis")
            self.hold(fault.duration_s)
            lab.start_redis()
            self.expected_down.difference_update(("redis", "worker"))
            self.check()  # restarts a worker that gave up while Redis was away
            return time.time(), {}
        if fault.kind in ("spool-full", "server-unreachable"):
            assert i is not None
            lab.server_reachable(i, False)
            try:
                self.hold(fault.duration_s)
            finally:
                lab.server_reachable(i, True)
            restored = time.time()
            # The fault lasts until its effect is over: the probe is back and its backlog gone (a full
            # spool drops files until then), so that the next fault's losses have a cause of their own.
            self._wait_for_backlog(i)
            return time.time(), {"restored": round(restored, 3)}
        if fault.kind == "link-flap":
            assert i is not None
            lab.link(i, False)
            try:
                self.hold(fault.duration_s)
            finally:
                lab.link(i, True)
            return time.time(), {}
        if fault.kind == "clock-step":
            assert i is not None
            lab.faketime_file(i).write_text(f"+{fault.step_s:g}\n")
            try:
                self.hold(fault.duration_s)
            finally:
                lab.faketime_file(i).write_text("+0\n")
            return time.time(), {"step_s": fault.step_s}
        raise LabError(f"unknown fault kind {fault.kind}")


def _target(fault: Fault) -> str:
    return "the server side" if fault.probe is None else f"probe {fault.probe}"
