"""``survey6-probe run``: capture, heartbeat and command handling in one foreground process.

Capture never waits for the server: it runs in its own threads, and heartbeats that fail are
retried with exponential backoff and jitter while files keep accumulating in the spool. Commands
arrive on heartbeat responses, are carried out once (they are re-sent until acknowledged, so the
agent remembers what it already did) and acknowledged with their outcome.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from survey6 import __version__
from survey6.common import systemd
from survey6.common.files import write_atomically
from survey6.probe import identity as identity_store
from survey6.probe import standalone
from survey6.probe.capture import Capture, Provenance
from survey6.probe.errors import AgentError, ProbeError, SpoolError
from survey6.probe.identity import Credentials, Identity
from survey6.probe.linkmonitor import LinkMonitor
from survey6.probe.settings import ProbeSettings
from survey6.probe.spool import LEFT_IN_RING, Spool
from survey6.probe.uploader import Uploader
from survey6.wire.v1 import control_pb2, control_pb2_grpc, upload_pb2_grpc

log = logging.getLogger(__name__)

HEARTBEAT_DEADLINE_S = 10.0
MAX_BACKOFF_S = 60.0
REMEMBERED_COMMANDS = 1000
MAX_MESSAGE_BYTES = 2 << 20  # an upload chunk (at most 1 MiB) and its header
# Loss records per heartbeat at most (each ~100 bytes): a long outage's backlog drains over a few
# beats instead of making one heartbeat large.
MAX_LOSSES_PER_HEARTBEAT = 100


def own_traffic_filter(identity: Identity) -> str:
    """BPF for the probe's connections to the server (only IPv6 matters: the filter is IPv6-only)."""
    try:
        infos = socket.getaddrinfo(identity.server_host, None, socket.AF_INET6, socket.SOCK_STREAM)
    except socket.gaierror:
        return ""  # IPv4-only server name: its traffic is outside the IPv6 filter anyway
    ports = sorted({identity.control_port, identity.enrol_port})
    hosts = sorted({str(info[4][0]).split("%")[0] for info in infos})
    port_part = " or ".join(f"tcp port {p}" for p in ports)
    return " or ".join(f"(ip6 host {h} and ({port_part}))" for h in hosts)


def loss_message(record: dict[str, Any]) -> control_pb2.SpoolLoss:
    """One record of the spool's loss log as it travels on the heartbeat."""
    message = control_pb2.SpoolLoss(
        id=int(record["id"]),
        time_ns=int(record.get("time_ns") or 0),
        kind=str(record["kind"]),
        reason=str(record.get("reason") or ""),
        sequence=int(record.get("sequence") or 0),
        packets=int(record.get("packets") or 0),
        interface=str(record.get("interface") or ""),
        after_sequence=int(record.get("after_sequence") or 0),
        repaired=bool(record.get("repaired")),
    )
    kernel = record.get("kernel")
    if isinstance(kernel, dict):
        message.kernel_delta.SetInParent()  # present even when every count is 0: the counts are known
        message.kernel_delta.received_packets = int(kernel.get("received", 0))
        message.kernel_delta.dropped_packets = int(kernel.get("dropped", 0))
        message.kernel_delta.interface_dropped_packets = int(kernel.get("interface_dropped", 0))
    return message


@dataclass
class CommandResult:
    outcome: control_pb2.CommandOutcome.ValueType
    detail: str


@dataclass
class AgentState:
    """What survives a restart: whether the operator suspended capture, and commands already done."""

    suspended: bool = False
    done_commands: dict[str, list[Any]] = field(default_factory=dict)


class Agent:
    def __init__(self, settings: ProbeSettings, identity: Identity, credentials: Credentials) -> None:
        self.settings = settings
        self.identity = identity
        self.credentials = credentials
        self.provenance = Provenance(probe_id=identity.probe_id, labels=dict(identity.labels))
        self.started = time.monotonic()
        self.interval_s = (identity.heartbeat_interval_ms / 1000) or settings.heartbeat.interval_s
        self.stop_event = threading.Event()
        self.left = False
        self._lock = threading.RLock()
        self._state_path = settings.state_dir / "agent.json"
        self.state = self._load_state()
        self.spool: Spool | None = None
        self.captures: list[Capture] = []
        self._threads: list[standalone.CaptureThread] = []
        self.capture_error = ""
        # Totals carried over capture restarts (suspend/resume, config changes).
        self._carried: dict[str, list[int]] = {}
        self._last_rate_sample: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.heartbeat_failures = 0
        self.last_heartbeat_ok: float | None = None
        self._stub: control_pb2_grpc.ProbeControlStub | None = None
        self.monitor: LinkMonitor | None = None
        self.uploader: Uploader | None = None
        self._uploader_thread: threading.Thread | None = None
        # One command at a time, whether it came from the server or the local control socket.
        self._command_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until stopped or until the probe leaves.

        Raises:
            ProbeError: the spool cannot be opened.
        """
        self.spool = standalone.open_spool(self.settings)
        try:
            standalone.recover(self.spool, self.provenance)
            if not self.state.suspended:
                self._start_capture()
            systemd.ready(f"probe {self.identity.probe_id} running")
            options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
            with grpc.secure_channel(
                self.identity.control_target, self.credentials.channel_credentials(), options=options
            ) as channel:
                self._stub = control_pb2_grpc.ProbeControlStub(channel)
                self._start_uploader(upload_pb2_grpc.UploadStub(channel))
                self._heartbeat_loop(self._stub)
        finally:
            systemd.stopping()
            self._stop_uploader()
            self._stop_capture()
            self.spool.close()

    # -- delivery -------------------------------------------------------------------------------

    def _start_uploader(self, stub: upload_pb2_grpc.UploadStub) -> None:
        assert self.spool is not None
        delivery = self.settings.delivery
        interface = delivery.interface or (self.settings.capture.interfaces or [""])[0]
        self.monitor = LinkMonitor(
            interface,
            capacity_bps=delivery.link_capacity_bps,
            idle_threshold_ratio=delivery.idle_threshold_ratio,
            idle_hold_s=delivery.idle_hold_s,
            smoothing_s=delivery.smoothing_s,
            profile_path=self.settings.state_dir / "link-profile.json",
        )
        self.uploader = Uploader(self.spool, stub, self.monitor, delivery, self.identity.probe_id)
        self._uploader_thread = threading.Thread(target=self._run_uploader, name="uploader", daemon=True)
        self._uploader_thread.start()

    def _run_uploader(self) -> None:
        assert self.uploader is not None
        try:
            self.uploader.run()
        except Exception:  # delivery must never take capture down with it
            log.exception("the uploader stopped; files stay in the spool")

    def _stop_uploader(self) -> None:
        if self.uploader is not None:
            self.uploader.request_stop()
        if self._uploader_thread is not None:
            self._uploader_thread.join(timeout=30)
        if self.monitor is not None:
            self.monitor.save_profile()

    def request_stop(self) -> None:
        self.stop_event.set()

    # -- capture --------------------------------------------------------------------------------

    def _start_capture(self) -> None:
        assert self.spool is not None
        with self._lock:
            try:
                handles = standalone.open_live_handles(self._capture_settings())
            except ProbeError as exc:
                self.capture_error = str(exc)
                log.error("capture cannot start: %s", exc)
                return
            self.capture_error = ""
            self.captures = [Capture(h, options, self.spool, self.provenance) for options, h in handles]
            self._threads = standalone.start_threads(self.captures)
            log.info("capturing", extra={"interfaces": [c.options.interface for c in self.captures]})

    def _capture_settings(self) -> ProbeSettings:
        """The settings with a filter that leaves out the probe's own traffic to the server, so that
        uploads never feed the capture (shown as such in every file's metadata)."""
        exclusion = own_traffic_filter(self.identity)
        if not exclusion:
            return self.settings
        settings = self.settings.model_copy(deep=True)
        # The exclusion comes first: after a "vlan" test, libpcap shifts the offsets of all later tests.
        settings.capture.filter = f"not ({exclusion}) and ({settings.capture.filter})"
        return settings

    def _stop_capture(self) -> None:
        with self._lock:
            for capture in self.captures:
                capture.request_stop()
            for thread in self._threads:
                thread.thread.join()
            for capture in self.captures:
                self._record_ring_leftover(capture)  # logs what it cannot record: the stop goes on
            for capture in self.captures:
                carried = self._carried.setdefault(capture.options.interface, [0, 0, 0, 0])
                kernel = capture.status.kernel
                carried[0] += capture.status.packets_written
                carried[1] += kernel.received
                carried[2] += kernel.dropped
                carried[3] += kernel.interface_dropped
            self.captures, self._threads = [], []

    def _record_ring_leftover(self, capture: Capture) -> None:
        if self.spool is not None:
            record_ring_leftover(self.spool, capture)

    def capture_state(self) -> control_pb2.CaptureState.ValueType:
        with self._lock:
            if self.state.suspended:
                return control_pb2.CAPTURE_STATE_SUSPENDED
            failed = [t for t in self._threads if t.error is not None]
            if self.capture_error or failed:
                if failed and not self.capture_error:
                    self.capture_error = str(failed[0].error)
                return control_pb2.CAPTURE_STATE_FAILED
            if any(c.status.state == "spool-full" for c in self.captures):
                return control_pb2.CAPTURE_STATE_SPOOL_FULL
            if self.captures:
                return control_pb2.CAPTURE_STATE_CAPTURING
            return control_pb2.CAPTURE_STATE_STOPPED

    # -- heartbeat ------------------------------------------------------------------------------

    def _heartbeat_loop(self, stub: control_pb2_grpc.ProbeControlStub) -> None:
        next_at = time.monotonic()
        watchdog_s = systemd.watchdog_interval_s()
        while not self.stop_event.is_set():
            wait_s = next_at - time.monotonic()
            if wait_s > 0:
                # Short waits keep the watchdog fed while the server is away.
                self.stop_event.wait(min(wait_s, watchdog_s or wait_s))
                systemd.watchdog_ping()
                continue
            next_at = time.monotonic() + self._beat(stub)

    def _beat(self, stub: control_pb2_grpc.ProbeControlStub) -> float:
        """One heartbeat; returns the delay until the next one."""
        try:
            response = stub.Heartbeat(self.heartbeat_request(), timeout=HEARTBEAT_DEADLINE_S)
        except grpc.RpcError as exc:
            self.heartbeat_failures += 1
            code = exc.code() if isinstance(exc, grpc.Call) else None
            level = logging.WARNING if self.heartbeat_failures == 1 else logging.DEBUG
            log.log(
                level,
                "heartbeat failed (%s); capture continues",
                code,
                extra={"failures": self.heartbeat_failures},
            )
            if code == grpc.StatusCode.PERMISSION_DENIED:
                log.error("the server refuses this probe's certificate: %s", exc.details())
            return self._backoff_s()
        if self.heartbeat_failures:
            log.info("server reachable again after %d failed heartbeats", self.heartbeat_failures)
        self.heartbeat_failures = 0
        self.last_heartbeat_ok = time.monotonic()
        if response.heartbeat_interval_ms:
            self.interval_s = response.heartbeat_interval_ms / 1000
        if response.losses_acknowledged_through:
            self.acknowledge_losses(response.losses_acknowledged_through)
        for command in response.commands:
            self._handle(stub, command)
        return self.interval_s

    def acknowledge_losses(self, through: int) -> None:
        """Passes the server's acknowledgement to the spool. A spool that cannot save it (full disk,
        I/O error) only means the records are sent again: the heartbeat and the probe carry on."""
        if self.spool is None:
            return
        try:
            self.spool.acknowledge_losses(through)
        except (SpoolError, OSError) as exc:
            log.error("cannot save the server's acknowledgement of loss records through %d: %s", through, exc)

    def _backoff_s(self) -> float:
        ceiling = min(MAX_BACKOFF_S, self.interval_s * 2 ** min(self.heartbeat_failures, 16))
        return random.uniform(
            self.interval_s, max(ceiling, self.interval_s)
        )  # full jitter above the interval

    def heartbeat_request(self) -> control_pb2.HeartbeatRequest:
        assert self.spool is not None
        usage = self.spool.usage()
        state = self.spool.state
        now = time.time()
        request = control_pb2.HeartbeatRequest(
            sent_ns=time.time_ns(),
            uptime_s=int(time.monotonic() - self.started),
            software_version=__version__,
            capture_state=self.capture_state(),
            capture_error=self.capture_error,
            spool=control_pb2.SpoolHealth(
                backlog_files=usage.ready_files,
                backlog_bytes=usage.ready_bytes,
                oldest_backlog_age_s=int(now - usage.oldest_ready_mtime) if usage.oldest_ready_mtime else 0,
                free_bytes=usage.free_bytes,
                quota_bytes=self.spool.quota_bytes,
                full=self.spool.is_full(usage),
                lost_files_total=state.lost_files_total,
                lost_packets_total=state.lost_packets_total,
                last_sealed_sequence=state.last_sequence,
                backlog_first_sequence=usage.oldest_sequence,
                losses_recorded_total=self.spool.losses_recorded_total,
                losses_acknowledged_through=state.losses_acknowledged_through,
            ),
            upload=self._upload_health(),
        )
        request.interfaces.extend(self._interface_health())
        request.losses.extend(
            loss_message(r) for r in self.spool.unacknowledged_losses(MAX_LOSSES_PER_HEARTBEAT)
        )
        return request

    def _upload_health(self) -> control_pb2.UploadHealth:
        if self.uploader is None:
            return control_pb2.UploadHealth()
        status = self.uploader.status
        return control_pb2.UploadHealth(
            uploading=status.uploading,
            last_upload_ns=status.last_upload_ns,
            uploaded_files_total=status.uploaded_files_total,
            uploaded_bytes_total=status.uploaded_bytes_total,
        )

    def _interface_health(self) -> list[control_pb2.InterfaceHealth]:
        with self._lock:
            totals = {name: list(values) for name, values in self._carried.items()}
            for capture in self.captures:
                values = totals.setdefault(capture.options.interface, [0, 0, 0, 0])
                values[0] += capture.status.packets_written
                try:  # live kernel counters since the handle opened
                    kernel = capture.handle.stats()
                except ProbeError:
                    kernel = capture.status.kernel
                values[1] += kernel.received
                values[2] += kernel.dropped
                values[3] += kernel.interface_dropped
        now = time.monotonic()
        before_at, before = self._last_rate_sample
        elapsed = max(now - before_at, 1e-3)
        self._last_rate_sample = (now, {name: v[0] for name, v in totals.items()})
        monitor = self.monitor
        health = []
        for name, values in sorted(totals.items()):
            utilisation = monitor.utilisation if monitor is not None and monitor.interface == name else None
            health.append(
                control_pb2.InterfaceHealth(
                    name=name,
                    captured_packets_total=values[0],
                    received_packets_total=values[1],
                    dropped_packets_total=values[2],
                    interface_dropped_packets_total=values[3],
                    captured_packets_per_s=max(values[0] - before.get(name, values[0]), 0) / elapsed,
                    link_utilisation_ratio=-1.0 if utilisation is None else utilisation,
                    link_idle=utilisation is not None and monitor is not None and monitor.idle,
                )
            )
        return health

    # -- commands -------------------------------------------------------------------------------

    def _handle(self, stub: control_pb2_grpc.ProbeControlStub, command: control_pb2.Command) -> None:
        done = self.state.done_commands.get(command.command_id)
        if done is not None:
            # Re-sent because our acknowledgement was lost: acknowledge again, do not do it twice.
            result = CommandResult(control_pb2.CommandOutcome.ValueType(int(done[0])), str(done[1]))
        else:
            action = command.WhichOneof("action") or "unknown"
            log.info("command received", extra={"command_id": command.command_id, "action": action})
            result = self.execute(action, command)
            self._remember(command.command_id, result)
        ack = control_pb2.CommandAck(
            command_id=command.command_id,
            outcome=result.outcome,
            detail=result.detail,
            completed_ns=time.time_ns(),
        )
        try:
            stub.AcknowledgeCommand(ack, timeout=HEARTBEAT_DEADLINE_S)
        except grpc.RpcError:
            log.warning(
                "acknowledgement of %s failed; it is sent again with the next delivery", command.command_id
            )
            return
        if (
            command.WhichOneof("action") == "leave"
            and result.outcome == control_pb2.COMMAND_OUTCOME_SUCCEEDED
        ):
            self.leave(stub, "leave command from the server")

    def execute(self, action: str, command: control_pb2.Command | None = None) -> CommandResult:
        """Carries out an action (from the server, or the local control socket)."""
        with self._command_lock:
            return self._execute(action, command)

    def _execute(self, action: str, command: control_pb2.Command | None) -> CommandResult:
        ok, rejected = control_pb2.COMMAND_OUTCOME_SUCCEEDED, control_pb2.COMMAND_OUTCOME_REJECTED
        if action == "suspend":
            if self.state.suspended:
                return CommandResult(rejected, "already suspended")
            self._stop_capture()
            self._set_suspended(True)
            return CommandResult(ok, "capture suspended")
        if action == "resume":
            if not self.state.suspended:
                return CommandResult(rejected, "not suspended")
            self._set_suspended(False)
            self._start_capture()
            if self.capture_error:
                return CommandResult(control_pb2.COMMAND_OUTCOME_FAILED, self.capture_error)
            return CommandResult(ok, "capture resumed")
        if action == "config_change" and command is not None:
            return self._change_config(command.config_change)
        if action == "leave":
            return CommandResult(ok, "leaving")
        if action == "upload_now":
            if self.uploader is None:
                return CommandResult(rejected, "not connected to the server yet")
            self.uploader.request_upload_now()
            return CommandResult(ok, "uploading the whole backlog now")
        return CommandResult(rejected, f"unknown command {action!r}")

    def _change_config(self, change: control_pb2.ConfigChange) -> CommandResult:
        unsupported = [f for f in ("idle_threshold_ratio", "idle_hold_s") if change.HasField(f)]
        if unsupported:
            return CommandResult(
                control_pb2.COMMAND_OUTCOME_REJECTED, f"not supported yet: {', '.join(unsupported)}"
            )
        capture = self.settings.capture.model_copy()
        try:
            if change.HasField("filter"):
                capture.filter = change.filter
            if change.HasField("snaplen_bytes"):
                capture.snaplen_bytes = change.snaplen_bytes
            if change.HasField("rotate_interval_s"):
                capture.rotate_interval_s = change.rotate_interval_s
            if change.HasField("rotate_max_bytes"):
                capture.rotate_max_bytes = change.rotate_max_bytes
        except ValueError as exc:  # pydantic validates on assignment
            return CommandResult(control_pb2.COMMAND_OUTCOME_FAILED, f"invalid value: {exc}".splitlines()[0])
        if change.HasField("heartbeat_interval_ms"):
            self.interval_s = max(change.heartbeat_interval_ms, 100) / 1000
        previous = self.settings.capture
        self.settings.capture = capture
        if not self.state.suspended:
            self._stop_capture()
            self._start_capture()
            if self.capture_error:
                error = self.capture_error
                self.settings.capture = previous
                self._start_capture()
                return CommandResult(control_pb2.COMMAND_OUTCOME_FAILED, f"kept the old settings: {error}")
        return CommandResult(control_pb2.COMMAND_OUTCOME_SUCCEEDED, "configuration applied")

    def leave_locally(self) -> None:
        """``survey6-probe leave``.

        Raises:
            AgentError: not connected to the server yet, or it refused.
        """
        if self._stub is None:
            raise AgentError("not connected to the server yet; try again in a moment")
        try:
            self.leave(self._stub, "left by the local operator")
        except grpc.RpcError as exc:
            raise AgentError(f"the server did not accept the leave: {exc}") from exc

    def leave(self, stub: control_pb2_grpc.ProbeControlStub, reason: str) -> None:
        """Tells the server, forgets the identity and stops. Sealed files stay in the spool."""
        stub.Leave(control_pb2.LeaveRequest(reason=reason), timeout=HEARTBEAT_DEADLINE_S)
        identity_store.forget(self.settings.state_dir)
        self.left = True
        log.info("left the server", extra={"probe_id": self.identity.probe_id})
        self.request_stop()

    # -- persistence ----------------------------------------------------------------------------

    def _set_suspended(self, suspended: bool) -> None:
        self.state.suspended = suspended
        self._save_state()

    def _remember(self, command_id: str, result: CommandResult) -> None:
        self.state.done_commands[command_id] = [result.outcome, result.detail]
        while len(self.state.done_commands) > REMEMBERED_COMMANDS:
            self.state.done_commands.pop(next(iter(self.state.done_commands)))
        self._save_state()

    def _load_state(self) -> AgentState:
        try:
            raw = json.loads(self._state_path.read_text())
            return AgentState(
                suspended=bool(raw.get("suspended")), done_commands=dict(raw.get("done_commands", {}))
            )
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError) as exc:
            log.error("agent state %s unreadable (%s); starting afresh", self._state_path, exc)
            return AgentState()

    def _save_state(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        data = {"suspended": self.state.suspended, "done_commands": self.state.done_commands}
        write_atomically(self._state_path, json.dumps(data).encode())

    def status(self) -> dict[str, Any]:
        """What `survey6-probe status` shows."""
        request = self.heartbeat_request()
        state_name = (
            control_pb2.CaptureState.Name(request.capture_state).removeprefix("CAPTURE_STATE_").lower()
        )
        return {
            "probe_id": self.identity.probe_id,
            "server": self.identity.control_target,
            "capture_state": state_name,
            "capture_error": self.capture_error,
            "server_reachable": self.heartbeat_failures == 0 and self.last_heartbeat_ok is not None,
            "heartbeat_failures": self.heartbeat_failures,
            "interfaces": [
                {
                    "name": i.name,
                    "captured_packets_total": i.captured_packets_total,
                    "dropped": i.dropped_packets_total,
                }
                for i in request.interfaces
            ],
            "backlog_files": request.spool.backlog_files,
            "backlog_bytes": request.spool.backlog_bytes,
            "lost_packets_total": request.spool.lost_packets_total,
        }


def record_ring_leftover(spool: Spool, capture: Capture) -> None:
    """Records what a stopped capture's last kernel window counted but nobody wrote (docs/audit.md).

    The kernel counts a packet when it enters the ring; at a rotation the ring's packets go into
    the next file, but at a stop they go nowhere. The capture's first window starts at the handle's
    activation, so over its life the kernel's count less its drops, what was written and what was
    read while the spool was full leaves exactly them. They are recorded as lost (kind
    ``left-in-ring``) in the run of the capture's last file. Used by the agent and by the
    standalone ``capture`` command. A spool that cannot take the record (full disk) is logged: the
    stop goes on, and the capture must not be stopped, and recorded, twice.
    """
    status = capture.status
    kernel = status.kernel
    leftover = kernel.received - kernel.dropped - status.packets_written - status.packets_lost_spool_full
    if leftover <= 0 or not status.last_sealed_sequence:
        return
    try:
        spool.record_lost_packets(
            leftover,
            "capture stopped: packets left in the kernel ring",
            interface=capture.options.interface,
            after_sequence=status.last_sealed_sequence - 1,
            kind=LEFT_IN_RING,
        )
    except (SpoolError, OSError) as exc:
        log.error(
            "cannot record the %d packets capture %s left in the kernel ring: %s",
            leftover,
            capture.options.interface,
            exc,
        )
        return
    log.warning(
        "capture stopped with %d packets in the kernel ring; recorded as lost",
        leftover,
        extra={"interface": capture.options.interface},
    )
