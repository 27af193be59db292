"""``survey6-probe``: the probe's command line."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from survey6 import __version__
from survey6.common.cli import config_option, load_side_settings, print_settings, run_group
from survey6.common.errors import Survey6Error
from survey6.common.log import configure_logging
from survey6.common.units import parse_duration, parse_size
from survey6.probe import identity as identity_store
from survey6.probe import service, standalone
from survey6.probe.agent import Agent, record_ring_leftover
from survey6.probe.capture import Capture, Provenance
from survey6.probe.control import ControlServer
from survey6.probe.control import request as control_request
from survey6.probe.control import socket_path as control_socket_path
from survey6.probe.errors import AgentError, ProbeError
from survey6.probe.metadata import read_sidecar
from survey6.probe.pcap import CaptureHandle
from survey6.probe.settings import ProbeSettings
from survey6.probe.spool import ReadyFile, Spool
from survey6.probe.status import status_line, summary

EXIT_NOT_RUNNING = 3  # as LSB init scripts' status
STATUS_INTERVAL_S = 1.0
STATUS_LOG_INTERVAL_S = 30.0  # when stderr is not a terminal, a status record this often instead


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        labels[key] = value
    return labels


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 success, 1 error (one line on stderr), 2 usage error.",
)
@config_option()
@click.version_option(__version__, prog_name="survey6-probe")
def cli(config_file: object) -> None:
    """survey6 probe: records every IPv6 packet on this host's interfaces and ships the captures
    to the survey6 server when the link is idle."""


@cli.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective settings (defaults < config file < SURVEY6_* environment) as JSON."""
    print_settings(load_side_settings(ctx, ProbeSettings, "probe"))


@cli.command("capture")
@click.option("-i", "--interface", "interfaces", multiple=True, help="Interface to capture on (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), help="Spool directory.")
@click.option(
    "--read",
    "read_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ingest an existing pcap or pcapng file instead of capturing.",
)
@click.option(
    "--rotate", metavar="DURATION", callback=_duration, help="Rotation interval, aligned to the clock [60s]."
)
@click.option(
    "--max-size", metavar="SIZE", callback=_size, help="Rotate earlier when a file reaches this size [64MiB]."
)
@click.option("--snaplen", type=int, help="Bytes kept of each packet [262144].")
@click.option(
    "--buffer-size", metavar="SIZE", callback=_size, help="Kernel capture buffer per interface [64MiB]."
)
@click.option("--filter", "bpf_filter", help="BPF filter [ip6 or (vlan and ip6)].")
@click.option("--promisc/--no-promisc", default=None, help="Promiscuous mode [on].")
@click.option("--quota", metavar="SIZE", callback=_size, help="Most bytes the spool may hold [10GiB].")
@click.option(
    "--min-free", metavar="SIZE", callback=_size, help="Free space to leave on the spool's filesystem [1GiB]."
)
@click.option("--full-policy", type=click.Choice(["pause", "drop-oldest"]), help="When the spool is full.")
@click.option("--label", "labels", multiple=True, help="key=value written into every file's metadata.")
@click.option("--duration", metavar="DURATION", callback=_duration, help="Stop by itself after this long.")
@click.pass_context
def capture_command(
    ctx: click.Context,
    interfaces: tuple[str, ...],
    output: Path | None,
    read_file: Path | None,
    rotate: float | None,
    max_size: int | None,
    snaplen: int | None,
    buffer_size: int | None,
    bpf_filter: str | None,
    promisc: bool | None,
    quota: int | None,
    min_free: int | None,
    full_policy: str | None,
    labels: tuple[str, ...],
    duration: float | None,
) -> None:  # fmt: skip
    """Capture IPv6 into a local spool, standalone (no server needed).

    Files rotate on wall-clock multiples of --rotate and at --max-size; each is sealed with a
    sha256 and a metadata sidecar in OUTPUT/ready/. Ctrl-C (or SIGTERM) seals the open file and
    stops. With --read, an existing pcap or pcapng file
    goes through the same spool (rotated by size).
    """
    if read_file is not None and interfaces:
        raise click.UsageError("give either --interface or --read, not both")
    settings = load_side_settings(
        ctx,
        ProbeSettings,
        "probe",
        overrides={
            "capture.interfaces": list(interfaces) or None,
            "capture.rotate_interval_s": rotate,
            "capture.rotate_max_bytes": max_size,
            "capture.snaplen_bytes": snaplen,
            "capture.buffer_bytes": buffer_size,
            "capture.filter": bpf_filter,
            "capture.promiscuous": promisc,
            "spool.dir": output,
            "spool.quota_bytes": quota,
            "spool.min_free_bytes": min_free,
            "spool.full_policy": full_policy,
        },
    )
    if read_file is None and not settings.capture.interfaces:
        raise click.UsageError("give --interface (or capture.interfaces in the config), or --read FILE")
    configure_logging(settings.logging)
    provenance = Provenance(labels=_labels(labels))
    # Inputs first: a wrong interface, a missing capability or an unreadable file leaves no spool behind.
    if read_file is not None:
        handles = [(standalone.capture_options(settings, read_file.name), CaptureHandle.offline(read_file))]
    else:
        handles = standalone.open_live_handles(settings)
    try:
        spool = standalone.open_spool(settings)
        try:
            standalone.recover(spool, provenance)
            if read_file is not None:
                _ingest(handles[0][1], settings, spool, provenance)
            else:
                captures = [Capture(handle, options, spool, provenance) for options, handle in handles]
                _capture_live(captures, spool, duration)
        finally:
            spool.close()
    finally:
        for _, handle in handles:
            handle.close()


def _ingest(handle: CaptureHandle, settings: ProbeSettings, spool: Spool, provenance: Provenance) -> None:
    total = max(Path(handle.source).stat().st_size, 1)
    interactive = sys.stderr.isatty()

    def progress(capture: Capture) -> None:
        if interactive:
            done = sum(r.size_bytes for r in capture.sealed)
            line = f"\r{min(done / total, 1.0):6.1%}  {capture.status.packets_written:,} packets"
            click.echo(line, nl=False, err=True)

    sealed = standalone.ingest_file(handle, settings, spool, provenance, progress)
    if interactive:
        click.echo("", err=True)
    packets = sum(_packets_of(ready) for ready in sealed)
    click.echo(
        f"read {packets:,} packets from {handle.source} into {len(sealed)} file(s) in {spool.ready_dir}"
    )


def _packets_of(ready: ReadyFile) -> int:
    return read_sidecar(ready.sidecar).packets


def _capture_live(captures: list[Capture], spool: Spool, duration: float | None) -> None:

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for capture in captures:
            capture.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = standalone.start_threads(captures)
    standalone.log.info("capturing", extra={"interfaces": [c.options.interface for c in captures]})
    deadline = time.monotonic() + duration if duration else None
    interactive = sys.stderr.isatty()
    last_packets, last_time, last_log = 0, time.monotonic(), time.monotonic()
    try:
        while any(t.thread.is_alive() for t in threads):
            for t in threads:
                t.thread.join(timeout=STATUS_INTERVAL_S / len(threads))
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                for capture in captures:
                    capture.request_stop()
            statuses = [c.status for c in captures]
            packets = sum(s.packets_written for s in statuses)
            rate = (packets - last_packets) / max(now - last_time, 1e-6)
            last_packets, last_time = packets, now
            line = status_line(statuses, spool.usage(), spool.quota_bytes, rate)
            if interactive:
                click.echo(f"\r{line}\033[K", nl=False, err=True)
            elif now - last_log >= STATUS_LOG_INTERVAL_S:
                last_log = now
                standalone.log.info("capture status: %s", line)
    finally:
        for capture in captures:
            capture.request_stop()
        for t in threads:
            t.thread.join()
        for capture in captures:
            record_ring_leftover(spool, capture)  # as the agent does (docs/audit.md)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if interactive:
            click.echo("", err=True)
    errors = [t.error for t in threads if t.error is not None]
    click.echo(summary([c.status for c in captures], str(spool.ready_dir)))
    for error in errors:
        if isinstance(error, Survey6Error):
            raise error
        raise ProbeError(f"capture failed: {error!r}") from error


def _state_dir_option(function: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Identity, agent state and control socket [/var/lib/survey6/probe].",
    )(function)


@cli.command("join")
@click.argument("server")
@click.option("--token", required=True, help="Bootstrap token from `survey6-server token create`.")
@click.option("--ca-cert-hash", required=True, help="sha256:<hex> pin of the server's CA.")
@_state_dir_option
@click.option("--label", "labels", multiple=True, help="key=value describing this probe (repeatable).")
@click.option("-i", "--interface", "interfaces", multiple=True, help="Interfaces to report (and capture).")
@click.pass_context
def join_command(ctx: click.Context, server: str, token: str, ca_cert_hash: str, state_dir: Path | None,
                 labels: tuple[str, ...], interfaces: tuple[str, ...]) -> None:  # fmt: skip
    """Enrol with a survey6 server at HOST:PORT (its enrolment port).

    The server's CA must match --ca-cert-hash before the token is sent.
    """
    settings = load_side_settings(
        ctx,
        ProbeSettings,
        "probe",
        overrides={"state_dir": state_dir, "capture.interfaces": list(interfaces) or None},
    )
    joined = identity_store.join(
        server,
        token=token,
        ca_cert_hash=ca_cert_hash,
        state_dir=settings.state_dir,
        labels=_labels(labels),
        interfaces=settings.capture.interfaces,
    )
    click.echo(f"joined as {joined.probe_id}; control endpoint {joined.control_target}")
    click.echo("start the probe with `survey6-probe start` (or `survey6-probe run` in the foreground)")


@cli.command("run")
@_state_dir_option
@click.option("-i", "--interface", "interfaces", multiple=True, help="Interface to capture on (repeatable).")
@click.option(
    "-o", "--spool", "spool_dir", type=click.Path(path_type=Path, file_okay=False), help="Spool directory."
)
@click.pass_context
def run_command(ctx: click.Context, state_dir: Path | None, interfaces: tuple[str, ...],
                spool_dir: Path | None) -> None:  # fmt: skip
    """Run the probe in the foreground: capture, heartbeat, commands (what the service runs)."""
    settings = load_side_settings(
        ctx,
        ProbeSettings,
        "probe",
        overrides={
            "state_dir": state_dir,
            "capture.interfaces": list(interfaces) or None,
            "spool.dir": spool_dir,
        },
    )
    configure_logging(settings.logging)
    joined, credentials = identity_store.load(settings.state_dir)
    agent = Agent(settings, joined, credentials)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = ControlServer(control_socket_path(settings.state_dir), agent)
    server.start()
    try:
        agent.run()
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _control(ctx: click.Context, state_dir: Path | None, op: str) -> dict[str, Any]:
    settings = load_side_settings(ctx, ProbeSettings, "probe", overrides={"state_dir": state_dir})
    return control_request(settings.state_dir, op)


@cli.command("status")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_command(ctx: click.Context, state_dir: Path | None, as_json: bool) -> None:
    """Show the running probe's state (exit status 3 when it is not running)."""
    try:
        status = _control(ctx, state_dir, "status")["status"]
    except AgentError as exc:
        if as_json:
            click.echo(json.dumps({"running": False, "reason": str(exc)}))
        else:
            click.echo(f"not running: {exc}")
        raise SystemExit(EXIT_NOT_RUNNING) from exc
    if as_json:
        click.echo(json.dumps({"running": True, **status}, indent=2))
        return
    reach = (
        "reachable"
        if status["server_reachable"]
        else f"unreachable ({status['heartbeat_failures']} failures)"
    )
    click.echo(f"probe {status['probe_id']}: {status['capture_state']}; server {status['server']} {reach}")
    for interface in status["interfaces"]:
        packets, dropped = interface["captured_packets_total"], interface["dropped"]
        click.echo(f"  {interface['name']}: {packets:,} packets, {dropped:,} dropped")
    click.echo(f"  backlog: {status['backlog_files']} files, {status['backlog_bytes']:,} bytes")


def _simple_control(name: str, op: str, help_text: str) -> None:
    @cli.command(name, help=help_text)
    @_state_dir_option
    @click.pass_context
    def command(ctx: click.Context, state_dir: Path | None) -> None:
        click.echo(_control(ctx, state_dir, op).get("detail", "done"))


_simple_control("suspend", "suspend", "Stop capturing (sealed files are kept and still delivered).")
_simple_control("resume", "resume", "Start capturing again after a suspend.")
_simple_control("leave", "leave", "Leave the server: its certificate is revoked and the identity forgotten.")


@cli.command("start")
@_state_dir_option
@click.pass_context
def start_command(ctx: click.Context, state_dir: Path | None) -> None:
    """Start the probe service (systemd where there is one, else a background process)."""
    settings = load_side_settings(ctx, ProbeSettings, "probe", overrides={"state_dir": state_dir})
    click.echo(service.start(settings.state_dir, ctx.find_root().params.get("config_file")))


@cli.command("stop")
@_state_dir_option
@click.pass_context
def stop_command(ctx: click.Context, state_dir: Path | None) -> None:
    """Stop the probe service; the open capture file is sealed."""
    settings = load_side_settings(ctx, ProbeSettings, "probe", overrides={"state_dir": state_dir})
    click.echo(service.stop(settings.state_dir))


def main() -> None:
    raise SystemExit(run_group(cli, "survey6-probe"))
