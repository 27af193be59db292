"""The probe's spool: where capture files wait, durable, until the server has them.

Layout of the spool directory::

    .lock                   held (flock) by the one process writing this spool
    state.json              highest sequence sealed, loss and delivery counters
    losses.jsonl            one line per loss: id, kind, when, why, which sequence, how many packets
    open/<seq>.part         a capture file being written
    open/<seq>.part.json    what sealing it needs if the writer dies (interface, window, ...)
    ready/<seq>.pcap        sealed files, oldest sequence first, each with
    ready/<seq>.json        its metadata sidecar

Sequence numbers are per probe and gapless: the next one is one more than the highest seen in
``state.json``, ``open/`` and ``ready/``. A file leaves ``ready/`` only through :meth:`Spool.delivered`
(the server confirmed it durable) or through the drop-oldest policy, which records the loss.

Loss records (``docs/audit.md``): each line of ``losses.jsonl`` has an id, its line number from 1.
The heartbeat carries the records above ``losses_acknowledged_through`` (in ``state.json``), and the
server's acknowledgement raises that mark, so each record reaches the server once.

Durability order: a sequence's reservation in ``open/`` is made durable by :meth:`Spool.sync_open`,
off the capture thread, and at the latest before any sequence is sealed into ``ready/``; so a crash
can lose only reservations above every sealed sequence, and numbering stays gapless.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from survey6.common.files import fsync_directory, fsync_file, write_atomically
from survey6.probe import metadata as sidecar
from survey6.probe.errors import SpoolError, SpoolLockedError
from survey6.wire.v1 import capture_pb2

log = logging.getLogger(__name__)

FullPolicy = Literal["pause", "drop-oldest"]
# Loss kinds (docs/audit.md).
DROPPED_FILE = "dropped-file"
NOT_WRITTEN = "not-written"
LEFT_IN_RING = "left-in-ring"
TRUNCATED_RECORD = "truncated-record"
PART_SUFFIX = ".part"
PCAP_SUFFIX = ".pcap"
SEQUENCE_DIGITS = 12  # zero-padded so that names sort in sequence order


@dataclass
class SpoolState:
    last_sequence: int = 0
    lost_files_total: int = 0
    lost_packets_total: int = 0
    delivered_files_total: int = 0
    delivered_bytes_total: int = 0
    # Highest loss id the server acknowledged as stored.
    losses_acknowledged_through: int = 0


@dataclass(frozen=True)
class ReadyFile:
    sequence: int
    path: Path
    size_bytes: int

    @property
    def sidecar(self) -> Path:
        return sidecar.sidecar_path(self.path)


@dataclass(frozen=True)
class SpoolUsage:
    used_bytes: int
    free_bytes: int
    ready_files: int
    ready_bytes: int
    oldest_ready_mtime: float | None
    # Lowest sequence in ready/; 0 when none waits.
    oldest_ready_sequence: int = 0


class Spool:
    """The spool directory, opened by one writer at a time. Thread-safe."""

    def __init__(self, root: Path, *, quota_bytes: int, min_free_bytes: int, policy: FullPolicy) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self.policy = policy
        self.open_dir = root / "open"
        self.ready_dir = root / "ready"
        self._state_path = root / "state.json"
        self._losses_path = root / "losses.jsonl"
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        # Reservations (part info and part file in open/) written by begin_file but not yet fsynced.
        self._unsynced: set[int] = set()
        # The file the uploader is sending: the drop-oldest policy passes it over (see begin_delivery).
        self._delivering: int | None = None
        self.state = SpoolState()
        # Loss records not yet acknowledged, oldest first, and the highest loss id in the log.
        self._unacknowledged: list[dict[str, Any]] = []
        self.losses_recorded_total = 0

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> None:
        """Creates the layout, checks it is writable and takes the writer lock.

        Raises:
            SpoolError: the directory cannot be created or written.
            SpoolLockedError: another process is writing this spool.
        """
        try:
            for directory in (self.root, self.open_dir, self.ready_dir):
                directory.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.root} is not writable: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolLockedError(f"spool {self.root} is in use by another survey6 process") from exc
        self.state = self._load_state()
        self._load_losses()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_state(self) -> SpoolState:
        try:
            raw = json.loads(self._state_path.read_text())
            return SpoolState(**{k: int(v) for k, v in raw.items() if k in SpoolState.__dataclass_fields__})
        except FileNotFoundError:
            return SpoolState()
        except (OSError, ValueError, TypeError) as exc:
            raise SpoolError(f"spool state {self._state_path} is unreadable: {exc}") from exc

    def _save_state(self) -> None:
        write_atomically(self._state_path, json.dumps(asdict(self.state), indent=2).encode())

    # -- writing -------------------------------------------------------------------------------

    def begin_file(self, open_info: dict[str, Any]) -> tuple[int, Path]:
        """Reserves the next sequence and returns it with the path of its ``.part`` file.

        `open_info` is stored beside the part file so that a crash can be repaired without the
        process that started it. The part file itself is created by the caller. Neither is made
        durable here: call :meth:`sync_open` (from a thread that may wait) once the part file exists.
        """
        # Why no fsync here. begin_file runs on the capture thread at every rotation, and an fsync
        # waits for a journal commit, which (ext4, data=ordered) first writes out the earlier files'
        # dirty data: tens of milliseconds under a flood, while nobody drains the kernel ring.
        # What a machine crash right after begin_file loses (a process crash loses nothing either
        # way: the page cache outlives the process):
        # - fsync here, as before: the reservation survives; recovery seals the part file as
        #   "repaired", empty or with whatever packets writeback had put on disk. A crash during the
        #   fsync itself, while the packets waited in the ring, keeps nothing of the file.
        # - fsync in sync_open, as now: the sealer runs it right after begin_file, or, if it is busy,
        #   at the start of its next seal. Until then the reservation may be lost, and the sequence
        #   is used again after the restart. That leaves no gap: seal() syncs every reservation before
        #   a later sequence becomes durable (two interfaces share one spool, so N can still be open
        #   when N+1 is sealed), and no sealed file, state.json or server has seen the lost sequence.
        #   If the entries survive but the info's contents do not, recovery seals the part file with
        #   what the file itself says (interface "unknown") and keeps its packets. Those packets are
        #   no less safe than before: they sat in the ring then and sit in the page cache now.
        # Numbering stays gapless and every packet that reached the disk is kept. Only the metadata
        # of a file cut by a crash in its first moments can be poorer.
        with self._lock:
            sequence = self._highest_sequence() + 1
            data = json.dumps({**open_info, "sequence": sequence}).encode()
            _write_replacing(self._part_info_path(sequence), data)
            self._unsynced.add(sequence)
            return sequence, self.part_path(sequence)

    def sync_open(self) -> None:
        """Makes the reservations of begun files durable: their part info and their ``open/`` entries.

        Runs off the capture thread (the capture's sealer calls it after each begin); :meth:`seal`
        calls it too, first, so that no later sequence is durable before an earlier reservation.

        Raises:
            SpoolError: the files or the directory cannot be synced.
        """
        with self._lock:
            pending = sorted(self._unsynced)
        if not pending:
            return
        try:
            for sequence in pending:
                try:
                    fsync_file(self._part_info_path(sequence))
                except FileNotFoundError:
                    continue  # sealed or discarded meanwhile: nothing left to keep
            fsync_directory(self.open_dir)
        except OSError as exc:
            raise SpoolError(f"cannot sync spool directory {self.open_dir}: {exc.strerror}") from exc
        with self._lock:
            self._unsynced.difference_update(pending)

    def part_path(self, sequence: int) -> Path:
        return self.open_dir / f"{sequence:0{SEQUENCE_DIGITS}d}{PART_SUFFIX}"

    def _part_info_path(self, sequence: int) -> Path:
        return self.open_dir / f"{sequence:0{SEQUENCE_DIGITS}d}{PART_SUFFIX}.json"

    def part_info(self, sequence: int) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self._part_info_path(sequence).read_text())
        return info

    def open_sequences(self) -> list[int]:
        """Sequences with a part file or part info left in ``open/``, oldest first."""
        found = set()
        for path in self.open_dir.glob(f"*{PART_SUFFIX}*"):
            digits = path.name.split(".", 1)[0]
            if digits.isdigit():
                found.add(int(digits))
        return sorted(found)

    def seal(self, sequence: int, metadata: capture_pb2.CaptureMetadata) -> ReadyFile:
        """Moves a finished, fsynced part file into ``ready/`` with its sidecar.

        The sidecar is written first: a file in ``ready/`` without a sidecar never exists. Earlier
        reservations are made durable before this sequence is (see :meth:`sync_open`).
        """
        self.sync_open()
        target = self.ready_dir / f"{sequence:0{SEQUENCE_DIGITS}d}{PCAP_SUFFIX}"
        # Outside the lock, which the capture thread needs at every rotation: nothing lists a sidecar
        # before its pcap is in ready/, and this name belongs to this sequence alone.
        sidecar.write_sidecar(sidecar.sidecar_path(target), metadata)
        with self._lock:
            os.replace(self.part_path(sequence), target)
            fsync_directory(self.ready_dir)
            self._part_info_path(sequence).unlink(missing_ok=True)
            self.state.last_sequence = max(self.state.last_sequence, sequence)
            self._save_state()
            return ReadyFile(sequence, target, target.stat().st_size)

    def discard_open(self, sequence: int) -> None:
        """Removes a part file that was never sealed and frees its sequence (nothing was shipped)."""
        with self._lock:
            self.part_path(sequence).unlink(missing_ok=True)
            self._part_info_path(sequence).unlink(missing_ok=True)
            self._unsynced.discard(sequence)
            fsync_directory(self.open_dir)

    def retract(self, sequences: list[int]) -> None:
        """Removes just-sealed files that must not be shipped (an ingest that failed half way).

        Only the newest sequences can be retracted, so numbering stays gapless.
        """
        with self._lock:
            for sequence in sorted(sequences, reverse=True):
                if sequence != self.state.last_sequence:
                    raise SpoolError(f"cannot retract sequence {sequence}: it is not the newest")
                path = self.ready_dir / f"{sequence:0{SEQUENCE_DIGITS}d}{PCAP_SUFFIX}"
                sidecar.sidecar_path(path).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                self.state.last_sequence = sequence - 1
            fsync_directory(self.ready_dir)
            self._save_state()

    def _highest_sequence(self) -> int:
        ready = [f.sequence for f in self.ready_files()]
        return max([self.state.last_sequence, *ready, *self.open_sequences()])

    # -- reading and delivery ------------------------------------------------------------------

    def ready_files(self) -> list[ReadyFile]:
        """Sealed files waiting for delivery, oldest sequence first."""
        files = []
        for path in self.ready_dir.glob(f"*{PCAP_SUFFIX}"):
            stem = path.name[: -len(PCAP_SUFFIX)]
            if stem.isdigit():
                try:
                    files.append(ReadyFile(int(stem), path, path.stat().st_size))
                except FileNotFoundError:
                    continue  # delivered or dropped meanwhile
        return sorted(files, key=lambda f: f.sequence)

    def begin_delivery(self, sequence: int) -> bool:
        """Keeps the drop-oldest policy off `sequence` while the uploader sends it.

        Without this, a file dropped mid-upload would be both delivered and recorded lost.

        Returns:
            False when the file has left the spool since it was listed (dropped): do not send it.
        """
        with self._lock:
            if not any(f.sequence == sequence for f in self.ready_files()):
                return False
            self._delivering = sequence
            return True

    def end_delivery(self) -> None:
        with self._lock:
            self._delivering = None

    def delivered(self, sequence: int) -> None:
        """Deletes a file the server has confirmed durable."""
        with self._lock:
            for ready in self.ready_files():
                if ready.sequence == sequence:
                    ready.sidecar.unlink(missing_ok=True)
                    ready.path.unlink()
                    fsync_directory(self.ready_dir)
                    self.state.delivered_files_total += 1
                    self.state.delivered_bytes_total += ready.size_bytes
                    self._save_state()
                    return
            raise SpoolError(f"sequence {sequence} is not in the spool")

    # -- space and losses ----------------------------------------------------------------------

    def usage(self) -> SpoolUsage:
        ready = self.ready_files()
        open_bytes = sum(p.stat().st_size for p in self.open_dir.glob(f"*{PART_SUFFIX}") if p.exists())
        ready_bytes = sum(f.size_bytes for f in ready)
        stat = os.statvfs(self.root)
        oldest = None
        if ready:
            try:
                oldest = ready[0].path.stat().st_mtime
            except FileNotFoundError:
                oldest = None
        return SpoolUsage(
            used_bytes=ready_bytes + open_bytes,
            free_bytes=stat.f_bavail * stat.f_frsize,
            ready_files=len(ready),
            ready_bytes=ready_bytes,
            oldest_ready_mtime=oldest,
            oldest_ready_sequence=ready[0].sequence if ready else 0,
        )

    def is_full(self, usage: SpoolUsage | None = None) -> bool:
        usage = usage or self.usage()
        return usage.used_bytes >= self.quota_bytes or usage.free_bytes < self.min_free_bytes

    def make_room(self) -> bool:
        """Applies the drop-oldest policy until the spool is under its limits.

        Returns:
            True when there is room now; False when the policy is "pause" or nothing is left to drop.
        """
        with self._lock:
            while self.is_full():
                if self.policy != "drop-oldest":
                    return False
                ready = [f for f in self.ready_files() if f.sequence != self._delivering]
                if not ready:
                    return False
                self._drop(ready[0])
            return True

    def _drop(self, victim: ReadyFile) -> None:
        extra: dict[str, Any] = {}
        try:
            metadata = sidecar.read_sidecar(victim.sidecar)
            packets = metadata.packets
            # The audit needs the dropped file's kernel window to keep its run of files whole.
            extra = {"interface": metadata.interface.name, "repaired": metadata.repaired}
            if not metadata.repaired:
                kernel = metadata.kernel_delta
                extra["kernel"] = {
                    "received": kernel.received_packets,
                    "dropped": kernel.dropped_packets,
                    "interface_dropped": kernel.interface_dropped_packets,
                }
        except Exception:  # an unreadable sidecar must not stop the drop; the loss is still counted
            log.exception(
                "sidecar of dropped file %s unreadable; counting its packets as unknown", victim.path
            )
            packets = 0
        victim.sidecar.unlink(missing_ok=True)
        victim.path.unlink(missing_ok=True)
        fsync_directory(self.ready_dir)
        self.state.lost_files_total += 1
        self.state.lost_packets_total += packets
        self._save_state()
        self._record_loss(DROPPED_FILE, "spool full: dropped oldest file", victim.sequence, packets, extra)
        log.warning(
            "spool full: dropped oldest file", extra={"sequence": victim.sequence, "packets": packets}
        )

    def record_lost_packets(
        self,
        packets: int,
        reason: str,
        *,
        interface: str = "",
        after_sequence: int | None = None,
        kind: str = NOT_WRITTEN,
    ) -> None:
        """Counts packets that never reached a file: read while the spool was full (``not-written``),
        or left in the kernel ring when a capture stopped (``left-in-ring``).

        The record names `after_sequence`, by default the highest sequence reserved now: the capture
        of `interface` begins its next file only after this, so that file is the first of the
        interface above it, and its kernel window is the one that counted these packets.
        """
        if packets <= 0:
            return
        with self._lock:
            self.state.lost_packets_total += packets
            self._save_state()
            after = self._highest_sequence() if after_sequence is None else after_sequence
            extra = {"interface": interface, "after_sequence": after}
            self._record_loss(kind, reason, None, packets, extra)

    def record_truncated_record(self, sequence: int, bytes_cut: int, *, corrupt: bool = False) -> None:
        """Counts the packet whose partial record a crash repair cuts from file `sequence`.

        Called before the cut, and idempotent per sequence: a crash between the record and the cut
        repeats the repair, not the loss.
        """
        with self._lock:
            if any(
                loss.get("kind") == TRUNCATED_RECORD and loss.get("sequence") == sequence
                for loss in self.losses()
            ):
                return
            self.state.lost_packets_total += 1
            self._save_state()
            why = "a corrupt record header" if corrupt else "a partial last record"
            reason = f"crash repair: cut {bytes_cut} bytes of {why}"
            self._record_loss(TRUNCATED_RECORD, reason, sequence, 1, {"bytes_cut": bytes_cut})

    def _record_loss(
        self, kind: str, reason: str, sequence: int | None, packets: int, extra: dict[str, Any]
    ) -> None:
        entry = {
            "id": self.losses_recorded_total + 1,
            "kind": kind,
            "time_ns": time.time_ns(),
            "reason": reason,
            "sequence": sequence,
            "packets": packets,
            **extra,
        }
        with open(self._losses_path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self.losses_recorded_total += 1
        self._unacknowledged.append(entry)

    def losses(self) -> Iterator[dict[str, Any]]:
        """The loss log, oldest first, each record with its ``id`` and ``kind`` (older logs lack them)."""
        if not self._losses_path.exists():
            return
        with open(self._losses_path, encoding="utf-8") as stream:
            number = 0
            for line in stream:
                if line.strip():
                    number += 1
                    yield _completed(json.loads(line), number)

    def _load_losses(self) -> None:
        """Counts the log's records and keeps those the server has not acknowledged.

        A last line without its newline was cut by a crash before its fsync returned: nobody can
        have acknowledged it, and appending after it would corrupt the next record, so it goes.
        """
        try:
            data = self._losses_path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise SpoolError(f"spool loss log {self._losses_path} is unreadable: {exc.strerror}") from exc
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("loss log %s ends in a partial record; cutting it", self._losses_path)
            with open(self._losses_path, "r+b") as stream:
                stream.truncate(keep)
                os.fsync(stream.fileno())
        try:
            records = list(self.losses())
        except ValueError as exc:
            raise SpoolError(f"spool loss log {self._losses_path} is not JSON lines: {exc}") from exc
        self.losses_recorded_total = len(records)
        mark = self.state.losses_acknowledged_through
        self._unacknowledged = [r for r in records if r["id"] > mark]

    def unacknowledged_losses(self, limit: int) -> list[dict[str, Any]]:
        """The oldest `limit` loss records the server has not acknowledged."""
        with self._lock:
            return list(self._unacknowledged[:limit])

    def acknowledge_losses(self, through: int) -> None:
        """The server stored the loss records up to id `through`: they are not sent again."""
        with self._lock:
            through = min(through, self.losses_recorded_total)
            if through <= self.state.losses_acknowledged_through:
                return
            self.state.losses_acknowledged_through = through
            self._save_state()
            self._unacknowledged = [r for r in self._unacknowledged if r["id"] > through]


def _completed(record: dict[str, Any], number: int) -> dict[str, Any]:
    """A loss record with the id and kind that logs written before they existed lack."""
    record.setdefault("id", number)
    if "kind" not in record:
        record["kind"] = DROPPED_FILE if record.get("sequence") is not None else NOT_WRITTEN
    return record


def _write_replacing(path: Path, data: bytes) -> None:
    """Replaces `path` by `data` through a rename, so a reader sees all of it or none; not durable."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as stream:
        stream.write(data)
    os.replace(temporary, path)
