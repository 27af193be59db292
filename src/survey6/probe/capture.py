"""Capture of one interface (or one existing file) into the spool, rotating files by time and size.

libpcap writes every packet itself: ``pcap_dispatch`` runs with ``pcap_dump`` as its C callback, so
no Python runs per packet. Python runs once per kernel block to count what the call wrote (its
return value), to flush and to check the spool. On Linux, libpcap's read blocks until a block of
packets is retired, and on an idle link that can be forever; so an alarm thread calls
``pcap_breakloop`` when the rotation window ends, and ``request_stop`` does the same. libpcap does
not say how many packets an interrupted call wrote, so those few are counted from the file itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from survey6.probe import hostinfo
from survey6.probe.errors import CaptureError, ProbeError
from survey6.probe.metadata import SCHEMA_VERSION
from survey6.probe.pcap import CaptureHandle, Dumper, KernelStats, LoopBroken
from survey6.probe.pcapfile import (
    GLOBAL_HEADER_BYTES,
    RECORD_HEADER_BYTES,
    PcapHeader,
    parse_header,
    scan_records,
)
from survey6.probe.spool import ReadyFile, Spool
from survey6.wire.v1 import capture_pb2

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
SPACE_CHECK_INTERVAL_NS = 500_000_000  # how often a growing file is checked against the spool limits
FULL_RETRY_INTERVAL_NS = 1_000_000_000  # how often a paused capture looks for room again
SEALER_WAIT_S = 1.0  # longest single wait for the sealer to finish a file (checked again after)
HASH_BLOCK_BYTES = 1 << 20  # 1 MiB
# At most this many packets per libpcap call, so that Python sees the file grow and rotates by size.
MAX_BATCH_PACKETS = 4096
TYPICAL_RECORD_BYTES = 1516  # an Ethernet MTU packet and its record header, before a file has packets
DISCARD_RESET_BYTES = 8 << 20  # the in-memory sink for a full spool is emptied past 8 MiB
SEAL_QUEUE_FILES = 4  # files handed off and waiting for the sealer; one more makes the capture thread wait
PART_FILE_MODE = 0o640


@dataclass(frozen=True)
class CaptureOptions:
    """What is captured and how files rotate."""

    interface: str
    filter: str
    snaplen_bytes: int
    buffer_bytes: int
    promiscuous: bool
    rotate_interval_s: float
    rotate_max_bytes: int


@dataclass(frozen=True)
class Provenance:
    """Who captured: the probe's identity as it goes into every file's metadata."""

    probe_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class CaptureStatus:
    """Live counters of one capture, read by the status display and the heartbeat."""

    interface: str
    state: str = "starting"  # capturing | spool-full | stopped | failed | finished
    files_sealed: int = 0
    packets_written: int = 0
    packets_lost_spool_full: int = 0
    last_sealed_sequence: int = 0
    kernel: KernelStats = field(default_factory=lambda: KernelStats(0, 0, 0))
    error: str = ""


def next_window_end_ns(now_ns: int, interval_s: float) -> int:
    """The next wall-clock multiple of the interval strictly after `now_ns`."""
    interval_ns = max(int(interval_s * NS_PER_S), 1)
    return (now_ns // interval_ns + 1) * interval_ns


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _LinkMark:
    """The interface's rx + tx byte counters and the clock, read together on the capture thread."""

    link_bytes: int
    at_ns: int


@dataclass
class _OpenFile:
    sequence: int
    path: Path
    fd: int
    dumper: Dumper
    window_start_ns: int
    window_end_ns: int
    # The window's end on the monotonic clock, computed once when the file starts: the file rotates
    # then even when the wall clock has stepped back since (it would otherwise grow for as long).
    rotate_at_mono_ns: int
    link_start: _LinkMark  # where its link count starts: the previous hand-off, or its own start
    packets: int = 0
    last_batch_offset: int = GLOBAL_HEADER_BYTES
    # Filled when the capture thread hands the file over for sealing, so that they end where the
    # file ends: the sealer may run seconds later, and what the link carries by then is the next
    # file's.
    kernel_delta: KernelStats = field(default_factory=lambda: KernelStats(0, 0, 0))
    link_bytes: int = 0  # interface rx + tx bytes from link_start to end_ns
    end_ns: int = 0


class _SyncReservations:
    """Asks the sealer to make the spool's new reservations durable (see ``Spool.sync_open``)."""


_SYNC_RESERVATIONS = _SyncReservations()


class Capture:
    """Captures one live interface, or reads one file, into the spool until stopped or finished."""

    def __init__(
        self,
        handle: CaptureHandle,
        options: CaptureOptions,
        spool: Spool,
        provenance: Provenance,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        offline_batch_packets: int = -1,
    ) -> None:
        self.handle = handle
        self.options = options
        self.spool = spool
        self.provenance = provenance
        self.clock_ns = clock_ns
        self.monotonic_ns = monotonic_ns
        self.status = CaptureStatus(interface=options.interface)
        self._stop = threading.Event()
        # The alarm thread breaks libpcap's blocking read at this monotonic time (the end of the window).
        self._alarm_at_ns: int | None = None
        self._alarm_changed = threading.Condition()
        self._interface = hostinfo.interface_facts(options.interface, handle.datalink)
        self._host = hostinfo.host_facts([])
        self._host.interfaces.append(self._interface)
        self.sealed: list[ReadyFile] = []
        self._open_sequence: int | None = None
        # Sealing (fsync, SHA-256, sidecar) runs in its own thread so that the capture thread goes
        # straight back to draining the kernel ring; so does the fsync of each new file's reservation.
        # The queue itself is unbounded (a reservation request must never block the capture thread);
        # the slots bound the files waiting in it.
        self._to_seal: queue.Queue[_OpenFile | _SyncReservations | None] = queue.Queue()
        self._seal_slots = threading.BoundedSemaphore(SEAL_QUEUE_FILES)
        self._waiting_seal: list[int] = []
        self._seal_progress = threading.Condition()  # notified each time a file leaves _waiting_seal
        self._seal_error: BaseException | None = None
        # Kernel counters where the last file ended: the next file's window starts exactly there. The
        # handle's counters start at 0 when it is activated, and so does the first window: a mark read
        # later would leave out packets the ring already held, which the first file then writes
        # (docs/audit.md).
        self._kernel_mark: KernelStats | None = None if handle.is_offline else KernelStats(0, 0, 0)
        # The same for the link's byte counters: packets that arrive between a hand-off and the next
        # file's start wait in the ring and land in that next file, so its link count starts there
        # too. Files then tile time: no traffic is counted twice or left out. None at the start and
        # after a pause (no file holds what arrived during one).
        self._link_mark: _LinkMark | None = None
        self._paused_lost = 0
        # Reading a file, one libpcap call would otherwise consume it whole, leaving no chance to rotate.
        self._batch = offline_batch_packets if handle.is_offline else MAX_BATCH_PACKETS

    # -- control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Seal the open file and end, at once."""
        self._stop.set()
        self.handle.breakloop()
        with self._alarm_changed:
            self._alarm_changed.notify_all()
        with self._seal_progress:
            self._seal_progress.notify_all()

    def unsealed_sequences(self) -> list[int]:
        """Files begun but not sealed (for an ingest that must be undone)."""
        open_now = [] if self._open_sequence is None else [self._open_sequence]
        return [*self._waiting_seal, *open_now]

    def _set_alarm(self, at_ns: int | None) -> None:
        with self._alarm_changed:
            self._alarm_at_ns = at_ns
            self._alarm_changed.notify_all()

    def _alarm_loop(self) -> None:
        with self._alarm_changed:
            while not self._stop.is_set():
                at = self._alarm_at_ns
                if at is None:
                    self._alarm_changed.wait()
                    continue
                delay_s = (at - self.monotonic_ns()) / NS_PER_S
                if delay_s > 0:
                    self._alarm_changed.wait(timeout=delay_s)
                    continue
                self._alarm_at_ns = None
                self.handle.breakloop()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Captures until stopped (live) or until the end of the file (offline).

        Raises:
            ProbeError: capture or spool failure; the open file is sealed first when possible.
        """
        self.status.state = "capturing"
        if not self.handle.is_offline:
            threading.Thread(
                target=self._alarm_loop, name=f"alarm-{self.options.interface}", daemon=True
            ).start()
        sealer = threading.Thread(
            target=self._seal_loop, name=f"sealer-{self.options.interface}", daemon=True
        )
        sealer.start()
        try:
            while not self._stop.is_set():
                if not self._make_room():
                    if not self._stop.is_set():  # a stop while waiting for the sealer is no full spool
                        self._discard_while_full()
                    continue
                if self._capture_one_file():
                    break  # end of an offline file
            self.status.state = "finished" if self.handle.is_offline else "stopped"
        except ProbeError as exc:
            self.status.state = "failed"
            self.status.error = str(exc)
            raise
        finally:
            self._stop.set()
            self._set_alarm(None)  # wakes the alarm thread, which sees the stop and ends
            self._to_seal.put(None)
            sealer.join()
            self._flush_paused_losses()
        if self._seal_error is not None:
            self.status.state = "failed"
            self.status.error = str(self._seal_error)
            raise self._seal_error

    def _capture_one_file(self) -> bool:
        """Writes one file until rotation, stop or end of input; returns True at end of input."""
        current = self._begin_file()
        self._to_seal.put(_SYNC_RESERVATIONS)  # the reservation's fsync, off this thread
        end_of_input = False
        # On the monotonic clock: a step back of the wall clock must not hold the spool checks off
        # (the soak saw a small spool fill to ENOSPC that way, which failed the capture).
        next_space_check = self.monotonic_ns() + SPACE_CHECK_INTERVAL_NS
        try:
            while True:
                offset = current.dumper.tell()
                try:
                    written = self.handle.dispatch_into(current.dumper, self._batch_for(current, offset))
                except LoopBroken:
                    written = _count_written_since(current.dumper, current.fd, offset)
                if written:
                    # Into the page cache after every call: a crash of this process then loses
                    # nothing that libpcap handed over (a crash of the machine loses what was not
                    # yet fsynced, which happens at sealing).
                    current.dumper.flush()
                    current.packets += written
                    current.last_batch_offset = offset
                    self.status.packets_written += written
                elif self.handle.is_offline:
                    end_of_input = True
                    break
                if self._stop.is_set() or current.dumper.tell() >= self.options.rotate_max_bytes:
                    break
                mono_now = self.monotonic_ns()
                if not self.handle.is_offline and self._window_over(current, mono_now):
                    break
                if mono_now >= next_space_check:
                    next_space_check = mono_now + SPACE_CHECK_INTERVAL_NS
                    if self.spool.is_full() and not self.spool.make_room():
                        break  # seal what we have; the next round pauses
        except BaseException:
            self._close_file(current)
            raise
        self._hand_off(current)
        return end_of_input

    def _window_over(self, current: _OpenFile, mono_now: int) -> bool:
        """The file's window has ended: on the monotonic clock, or on the wall clock after a step.

        A step forward past the window's end ends it too, so that the sidecar's window still holds
        every packet's (wall-clock) time; the file is short, nothing is lost, and the next one is
        aligned again. A step back before the window's start ends it at once for the same reason
        (its packets would be older than its first one). A step back within the window changes
        nothing: the file ends on the monotonic deadline, and its recorded end is the wall time then.
        """
        if mono_now >= current.rotate_at_mono_ns:
            return True
        return not current.window_start_ns <= self.clock_ns() < current.window_end_ns

    def _make_room(self) -> bool:
        """Applies the spool's full policy before a new file. Files waiting for the sealer count
        against the quota but cannot be dropped yet; under drop-oldest they can be once sealed, so
        the capture waits for the sealer (the kernel ring holds the packets meanwhile) rather than
        pausing and losing packets while the spool is full only of them."""
        while True:
            with self._seal_progress:
                waiting = list(self._waiting_seal)
            if self.spool.make_room():
                return True
            if self.spool.policy != "drop-oldest" or not waiting or self._stop.is_set():
                return False
            self._wait_for_sealer(waiting)

    def _wait_for_sealer(self, waiting: list[int]) -> None:
        """Returns once a file of `waiting` is sealed (or failed), on stop, or after SEALER_WAIT_S."""
        with self._seal_progress:
            self._seal_progress.wait_for(
                lambda: self._waiting_seal != waiting or self._stop.is_set(), timeout=SEALER_WAIT_S
            )

    def _batch_for(self, current: _OpenFile, offset: int) -> int:
        """Packets for the next libpcap call: as many as fit under the size limit, at the average
        record size so far, so that files end close to the limit instead of a whole block past it."""
        if self._batch < 0:
            return self._batch
        written = offset - GLOBAL_HEADER_BYTES
        average = written // current.packets if current.packets else TYPICAL_RECORD_BYTES
        room = self.options.rotate_max_bytes - offset
        return max(1, min(self._batch, room // max(average, 1)))

    def _begin_file(self) -> _OpenFile:
        now = self.clock_ns()
        mono_now = self.monotonic_ns()
        if self._link_mark is None:
            self._link_mark = _LinkMark(self._link_bytes(), now)
        link_start = self._link_mark
        window_end = (
            now if self.handle.is_offline else next_window_end_ns(now, self.options.rotate_interval_s)
        )
        sequence, path = self.spool.begin_file(
            {
                "interface": self.options.interface,
                "link_type": self.handle.datalink,
                "snaplen_bytes": self.handle.snaplen,
                "filter": self.options.filter,
                "precision": int(self.handle.precision),
                "window_start_ns": now,
                "window_end_ns": window_end,
            }
        )
        try:
            # Read-write: an interrupted libpcap call is counted by reading back what it wrote.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PART_FILE_MODE)
        except OSError as exc:
            self.spool.discard_open(sequence)
            raise CaptureError(f"cannot create capture file {path}: {exc.strerror}") from exc
        try:
            dumper = self.handle.open_dumper_fd(fd, name=str(path))
        except BaseException:
            os.close(fd)
            self.spool.discard_open(sequence)
            raise
        self._open_sequence = sequence
        rotate_at = mono_now + window_end - now
        if not self.handle.is_offline:
            self._set_alarm(rotate_at)
        return _OpenFile(
            sequence=sequence,
            path=path,
            fd=fd,
            dumper=dumper,
            window_start_ns=now,
            window_end_ns=window_end,
            rotate_at_mono_ns=rotate_at,
            link_start=link_start,
        )

    def _link_bytes(self) -> int:
        """The interface's rx + tx byte counters (two small sysfs reads); 0 when reading a file."""
        return 0 if self.handle.is_offline else sum(hostinfo.interface_counters(self.options.interface))

    def _close_file(self, current: _OpenFile) -> None:
        """Flushes and fsyncs the file, then closes it; a write error is raised after closing."""
        try:
            current.dumper.flush()
            os.fsync(current.fd)
        finally:
            current.dumper.close()
            os.close(current.fd)

    def _hand_off(self, current: _OpenFile) -> None:
        """Ends the file on the capture thread (flush, counters) and queues it for sealing."""
        try:
            current.dumper.flush()
        finally:
            current.dumper.close()  # the sealer keeps current.fd, for fsync
        # Every counter of the file's window is read here, together, before it waits for the sealer.
        current.end_ns = self.clock_ns()
        self._link_mark = _LinkMark(self._link_bytes(), current.end_ns)
        current.link_bytes = self._link_mark.link_bytes - current.link_start.link_bytes
        if self._kernel_mark is not None:
            now_stats = self.handle.stats()
            current.kernel_delta = now_stats.since(self._kernel_mark)
            self._kernel_mark = now_stats
            kernel = self.status.kernel
            self.status.kernel = KernelStats(
                kernel.received + current.kernel_delta.received,
                kernel.dropped + current.kernel_delta.dropped,
                kernel.interface_dropped + current.kernel_delta.interface_dropped,
            )
        self._seal_slots.acquire()  # waits while SEAL_QUEUE_FILES files wait for the sealer
        self._waiting_seal.append(current.sequence)
        self._open_sequence = None
        self._to_seal.put(current)

    def _seal_loop(self) -> None:
        while (item := self._to_seal.get()) is not None:
            if isinstance(item, _OpenFile):
                self._seal_slots.release()  # no longer waiting: being sealed
            try:
                if isinstance(item, _SyncReservations):
                    if self._seal_error is None:
                        self.spool.sync_open()
                elif self._seal_error is None:
                    self._seal(item)
                else:
                    os.close(item.fd)  # left in open/ for the next start's repair
            except BaseException as exc:  # reported by run(); the file stays in open/ for repair
                what = item.path.name if isinstance(item, _OpenFile) else "new reservations"
                log.exception("sealing %s failed", what)
                self._seal_error = exc
                self.request_stop()
            finally:
                if isinstance(item, _OpenFile):
                    with self._seal_progress:
                        self._waiting_seal.remove(item.sequence)
                        self._seal_progress.notify_all()

    def _seal(self, current: _OpenFile) -> None:
        try:
            os.fsync(current.fd)
        finally:
            os.close(current.fd)
        metadata = self._metadata(current)
        ready = self.spool.seal(current.sequence, metadata)
        self.sealed.append(ready)
        self.status.files_sealed += 1
        self.status.last_sealed_sequence = current.sequence
        log.info(
            "sealed capture file",
            extra={
                "sequence": current.sequence,
                "interface": self.options.interface,
                "packets": metadata.packets,
                "kernel_dropped": current.kernel_delta.dropped,
                "file_size_bytes": metadata.file_size_bytes,
            },
        )

    def _metadata(self, current: _OpenFile) -> capture_pb2.CaptureMetadata:
        """The sidecar of a handed-off file; every counter in it was read at hand-off."""
        size = current.path.stat().st_size
        packets, first_ns, last_ns = _count_and_times(current)
        if packets != current.packets:
            self.status.packets_written += packets - current.packets
        window_start, window_end = current.window_start_ns, min(current.end_ns, current.window_end_ns)
        if self.handle.is_offline:  # a file read from disk covers the time of its packets
            window_start, window_end = first_ns, last_ns
        kernel_delta = current.kernel_delta
        return capture_pb2.CaptureMetadata(
            probe_id=self.provenance.probe_id,
            host=self._host,
            labels=self.provenance.labels,
            interface=self._interface,
            snaplen_bytes=self.handle.snaplen,
            filter=self.options.filter,
            sequence=current.sequence,
            first_packet_time_ns=first_ns,
            last_packet_time_ns=last_ns,
            window_start_ns=window_start,
            window_end_ns=max(window_end, window_start),
            packets=packets,
            captured_bytes=size - GLOBAL_HEADER_BYTES - RECORD_HEADER_BYTES * packets,
            file_size_bytes=size,
            sha256_hex=file_sha256(current.path),
            kernel_delta=capture_pb2.KernelCounters(
                received_packets=kernel_delta.received,
                dropped_packets=kernel_delta.dropped,
                interface_dropped_packets=kernel_delta.interface_dropped,
            ),
            link_utilisation_mean_ratio=self._utilisation(current),
            link_utilisation_peak_ratio=-1.0,  # measured by the link monitor, not per file yet
            file_format="pcap",
            schema_version=SCHEMA_VERSION,
        )

    def _utilisation(self, current: _OpenFile) -> float:
        """Mean link utilisation from the previous file's hand-off (or this file's start) to this
        file's hand-off: the time between the two counter reads, not the aligned window."""
        speed_mbps = self._interface.link_speed_mbps
        if self.handle.is_offline or not speed_mbps:
            return -1.0
        elapsed_s = max(current.end_ns - current.link_start.at_ns, 1) / NS_PER_S
        return min(current.link_bytes * 8 / (speed_mbps * 1e6 * elapsed_s), 1.0)

    # -- spool full ----------------------------------------------------------------------------

    def _discard_while_full(self) -> None:
        """Keeps reading (so the kernel buffer does not overflow unseen) and counts every packet lost."""
        self.status.state = "spool-full"
        self._link_mark = None  # what crosses the link during the pause is in no file
        log.warning("spool full: not writing, counting lost packets", extra={"policy": self.spool.policy})
        # On the monotonic clock, like rotation: a step back of the wall clock must not hold off the retry.
        retry_at = self.monotonic_ns() + FULL_RETRY_INTERVAL_NS
        if not self.handle.is_offline:
            self._set_alarm(retry_at)
        # Packets go to an in-memory file, emptied as we go, so that even an interrupted call is counted.
        sink_fd = os.memfd_create("survey6-discard")
        sink = self.handle.open_dumper_fd(sink_fd, name="discard")
        try:
            while not self._stop.is_set():
                offset = sink.tell()
                try:
                    lost = self.handle.dispatch_into(sink, self._batch)
                except LoopBroken:
                    lost = _count_written_since(sink, sink_fd, offset)
                self._paused_lost += lost
                self.status.packets_lost_spool_full += lost
                if self.handle.is_offline and lost == 0:
                    self._stop.set()  # end of the input file: nothing more to lose
                if sink.tell() > DISCARD_RESET_BYTES:
                    sink.close()
                    os.ftruncate(sink_fd, 0)
                    os.lseek(sink_fd, 0, os.SEEK_SET)
                    sink = self.handle.open_dumper_fd(sink_fd, name="discard")
                if self.monotonic_ns() >= retry_at:
                    self._flush_paused_losses()
                    retry_at = self.monotonic_ns() + FULL_RETRY_INTERVAL_NS
                    if not self.handle.is_offline:
                        self._set_alarm(retry_at)
                    if self.spool.make_room():
                        break
        finally:
            sink.close()
            os.close(sink_fd)
        self._flush_paused_losses()
        if not self._stop.is_set():
            self.status.state = "capturing"
            log.info("spool has room again: capturing")

    def _flush_paused_losses(self) -> None:
        if self._paused_lost:
            self.spool.record_lost_packets(
                self._paused_lost, f"spool full ({self.spool.policy})", interface=self.options.interface
            )
            self._paused_lost = 0


def _count_written_since(dumper: Dumper, fd: int, offset: int) -> int:
    """Records written after `offset` by a libpcap call that was interrupted and so reported none."""
    dumper.flush()
    header = read_header_fd(fd)
    return _walk(os.pread(fd, dumper.tell() - offset, offset), header.byte_order).count


def read_header_fd(fd: int) -> PcapHeader:
    return parse_header(os.pread(fd, GLOBAL_HEADER_BYTES, 0))


def _count_and_times(current: _OpenFile) -> tuple[int, int, int]:
    """Packets in the closed file and its first and last packet times, reading only the last batch.

    The count was kept while writing; only the records after ``last_batch_offset`` are walked, to
    find the last timestamp. A walk that does not end exactly at the end of the file means the
    bookkeeping is wrong, so the whole file is counted instead (and the error logged).
    """
    path = current.path
    with open(path, "rb") as stream:
        head = stream.read(GLOBAL_HEADER_BYTES + RECORD_HEADER_BYTES)
        stream.seek(current.last_batch_offset)
        tail = _walk(stream.read(), parse_header(head).byte_order)
    header = parse_header(head)
    if not tail.ends_at_eof:
        scan = scan_records(path)
        log.error("capture file %s: record walk disagreed; counted the whole file", path.name)
        return scan.records, scan.first_ts_ns or 0, scan.last_ts_ns or 0
    if current.packets == 0:
        return 0, 0, 0
    tick_ns = header.precision.ns_per_tick
    sec, frac, _, _ = struct.unpack_from(header.byte_order + "IIII", head, GLOBAL_HEADER_BYTES)
    first_ns = sec * NS_PER_S + frac * tick_ns
    last_ns = tail.last_sec * NS_PER_S + tail.last_frac * tick_ns if tail.count else first_ns
    if last_ns < first_ns:
        # The wall clock stepped back while the file was written (the kernel stamps packets with
        # it), so its records are out of time order: report the earliest and the latest instead.
        first_ns, last_ns = _time_range(path, header)
    return current.packets, first_ns, last_ns


def _time_range(path: Path, header: PcapHeader) -> tuple[int, int]:
    """The earliest and latest record times of a whole file (read in full: only after a clock step)."""
    record = struct.Struct(header.byte_order + "IIII")
    tick_ns = header.precision.ns_per_tick
    data = path.read_bytes()
    pos = GLOBAL_HEADER_BYTES
    times: list[int] = []
    while pos + RECORD_HEADER_BYTES <= len(data):
        sec, frac, incl, _ = record.unpack_from(data, pos)
        times.append(sec * NS_PER_S + frac * tick_ns)
        pos += RECORD_HEADER_BYTES + incl
    return min(times), max(times)


@dataclass
class _Walk:
    count: int
    last_sec: int
    last_frac: int
    ends_at_eof: bool


def _walk(data: bytes, byte_order: str) -> _Walk:
    """Walks the record headers of a run of whole records (libpcap flushed them; none is partial)."""
    record = struct.Struct(byte_order + "IIII")
    pos = count = last_sec = last_frac = 0
    while pos + RECORD_HEADER_BYTES <= len(data):
        last_sec, last_frac, incl, _ = record.unpack_from(data, pos)
        pos += RECORD_HEADER_BYTES + incl
        count += 1
    return _Walk(count, last_sec, last_frac, ends_at_eof=pos == len(data))
