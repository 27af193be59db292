"""Standalone capture (no server): live interfaces or an existing file into a spool.

The command line calls :func:`open_live_captures` / :func:`ingest_file`; the probe service (with a
server) drives the same :class:`~survey6.probe.capture.Capture` objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from survey6.probe.capture import Capture, CaptureOptions, Provenance
from survey6.probe.errors import ProbeError
from survey6.probe.pcap import CaptureHandle
from survey6.probe.recovery import recover_open_files
from survey6.probe.settings import ProbeSettings
from survey6.probe.spool import ReadyFile, Spool

log = logging.getLogger(__name__)

# Records handed to libpcap per call when reading a file: small enough to rotate by size promptly.
OFFLINE_BATCH_PACKETS = 4096


def open_spool(settings: ProbeSettings) -> Spool:
    """Opens (creating) the spool and seals whatever a crash left open.

    Raises:
        SpoolError: the spool directory is not writable or is in use.
    """
    spool = Spool(
        settings.spool.dir,
        quota_bytes=settings.spool.quota_bytes,
        min_free_bytes=settings.spool.min_free_bytes,
        policy=settings.spool.full_policy,
    )
    spool.open()
    return spool


def recover(spool: Spool, provenance: Provenance) -> list[ReadyFile]:
    recovered = recover_open_files(spool, provenance)
    if recovered:
        log.warning("sealed %d capture file(s) left open by a previous run", len(recovered))
    return recovered


def capture_options(settings: ProbeSettings, interface: str) -> CaptureOptions:
    c = settings.capture
    return CaptureOptions(
        interface=interface,
        filter=c.filter,
        snaplen_bytes=c.snaplen_bytes,
        buffer_bytes=c.buffer_bytes,
        promiscuous=c.promiscuous,
        rotate_interval_s=c.rotate_interval_s,
        rotate_max_bytes=c.rotate_max_bytes,
    )


def open_live_handles(settings: ProbeSettings) -> list[tuple[CaptureOptions, CaptureHandle]]:
    """Opens a libpcap handle per interface; all or none (a failure closes those already open).

    Opened before the spool is touched, so that a wrong interface or a missing capability leaves
    nothing behind.

    Raises:
        CaptureError: a missing interface, no permission, a bad filter.
    """
    opened: list[tuple[CaptureOptions, CaptureHandle]] = []
    try:
        for interface in settings.capture.interfaces:
            options = capture_options(settings, interface)
            handle = CaptureHandle.live(
                interface,
                snaplen=options.snaplen_bytes,
                promisc=options.promiscuous,
                buffer_bytes=options.buffer_bytes,
                bpf_filter=options.filter,
            )
            opened.append((options, handle))
    except BaseException:
        for _, handle in opened:
            handle.close()
        raise
    return opened


@dataclass
class CaptureThread:
    capture: Capture
    thread: threading.Thread
    error: BaseException | None = None


def start_threads(captures: list[Capture]) -> list[CaptureThread]:
    running: list[CaptureThread] = []
    for capture in captures:
        entry = CaptureThread(capture, threading.Thread())

        def body(entry: CaptureThread = entry) -> None:
            try:
                entry.capture.run()
            except BaseException as exc:  # handed to the main thread, which reports it
                entry.error = exc
            finally:
                entry.capture.handle.close()

        entry.thread = threading.Thread(target=body, name=f"capture-{capture.options.interface}", daemon=True)
        entry.thread.start()
        running.append(entry)
    return running


def ingest_file(
    handle: CaptureHandle,
    settings: ProbeSettings,
    spool: Spool,
    provenance: Provenance,
    progress: Callable[[Capture], None] | None = None,
) -> list[ReadyFile]:
    """Reads a pcap or pcapng file (an offline handle) through the spool, rotating by size. All or
    nothing: if the file turns out corrupt half way, the files already sealed from it are retracted.

    Raises:
        PcapFileError: the file cannot be read or is corrupt.
    """
    path = Path(handle.source)
    options = capture_options(settings, interface=f"file:{path.name}")
    capture = Capture(handle, options, spool, provenance, offline_batch_packets=OFFLINE_BATCH_PACKETS)
    worker = CaptureThread(capture, threading.Thread())

    def body() -> None:
        try:
            capture.run()
        except BaseException as exc:
            worker.error = exc

    worker.thread = threading.Thread(target=body, name="ingest", daemon=True)
    try:
        worker.thread.start()
        while worker.thread.is_alive():
            worker.thread.join(timeout=0.5)
            if progress is not None:
                progress(capture)
    finally:
        handle.close()
    if worker.error is not None:
        for sequence in capture.unsealed_sequences():
            spool.discard_open(sequence)
        spool.retract([ready.sequence for ready in capture.sealed])
        if isinstance(worker.error, ProbeError):
            raise worker.error
        raise ProbeError(f"reading {path} failed: {worker.error}") from worker.error
    return capture.sealed
