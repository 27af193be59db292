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

Loss records (``docs/audit.md``): each line of ``losses.jsonl`` has an id, one more than the highest
id recorded before, kept in ``state.json`` too (``losses_recorded_through``) so that an id is never
used twice even if the log is lost. The heartbeat carries the records above
``losses_acknowledged_through`` (in ``state.json``), and the server's acknowledgement raises that
mark, so each record reaches the server once. A record is appended and fsynced before anything it
describes happens (a dropped file is deleted after its record), and a failed append is cut back, so
the log holds whole lines only; the state's loss counters follow the log (see :meth:`Spool.open`).

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
    # Highest loss id recorded, and counted in the totals above; -1 in a state written before it was
    # kept (then the log's highest id is taken as counted).
    losses_recorded_through: int = -1


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
    # Lowest sequence still on the probe, in open/ (being written) or ready/; 0 when none is.
    oldest_sequence: int = 0


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
        # Serialises writes of state.json; taken after _lock, never before it.
        self._save_lock = threading.Lock()
        self._state_version = 0  # raised under _lock at each save; the version on disk:
        self._saved_version = 0
        self._lock_fd: int | None = None
        # Reservations (part info and part file in open/) written by begin_file but not yet fsynced.
        self._unsynced: set[int] = set()
        # The file the uploader is sending: the drop-oldest policy passes it over (see begin_delivery).
        self._delivering: int | None = None
        self.state = SpoolState()
        # Loss records not yet acknowledged, oldest first, and the highest loss id in the log.
        self._unacknowledged: list[dict[str, Any]] = []
        self.losses_recorded_total = 0
        # Length of the loss log after its last whole record: a failed append is cut back to it.
        self._losses_size = 0

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
        self._finish_drops()

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
        """Writes the state as it is now (the caller holds the lock)."""
        self._state_version += 1
        self._write_state(self._state_version, asdict(self.state))

    def _write_state(self, version: int, snapshot: dict[str, Any]) -> None:
        """Writes a snapshot of the state, unless a later one is on disk already.

        Callers that must not hold the lock while this fsyncs (the heartbeat's acknowledgement, see
        :meth:`acknowledge_losses`) take the snapshot under the lock and write it after.
        """
        with self._save_lock:
            if version <= self._saved_version:
                return
            write_atomically(self._state_path, json.dumps(snapshot, indent=2).encode())
            self._saved_version = version

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
        path = self.ready_dir / f"{sequence:0{SEQUENCE_DIGITS}d}{PCAP_SUFFIX}"
        with self._lock:  # a stat, not a listing: the capture thread waits for this lock
            if not path.exists():
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
        open_sequences = self.open_sequences()
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
            oldest_sequence=min([*open_sequences[:1], *(f.sequence for f in ready[:1])], default=0),
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
        # The record first: a crash before the deletion leaves a recorded file in ready/, which
        # open() deletes; the other order could leave a gap that nothing explains.
        self._record_loss(DROPPED_FILE, "spool full: dropped oldest file", victim.sequence, packets, extra)
        self._delete_ready(victim.path)
        log.warning(
            "spool full: dropped oldest file", extra={"sequence": victim.sequence, "packets": packets}
        )

    def _delete_ready(self, path: Path) -> None:
        sidecar.sidecar_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        fsync_directory(self.ready_dir)

    def _finish_drops(self) -> None:
        """Deletes the files in ``ready/`` whose drop was recorded before a crash stopped it."""
        ready = {f.sequence: f for f in self.ready_files()}
        if not ready:
            return
        for loss in self.losses():
            victim = ready.get(loss.get("sequence"))  # type: ignore[arg-type]
            if loss["kind"] == DROPPED_FILE and victim is not None:
                log.warning("finishing the drop of file %d, recorded before a crash", victim.sequence)
                self._delete_ready(victim.path)

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

        Raises:
            SpoolError: the record cannot be written (nothing is counted).
        """
        if packets <= 0:
            return
        with self._lock:
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
            why = "a corrupt record header" if corrupt else "a partial last record"
            reason = f"crash repair: cut {bytes_cut} bytes of {why}"
            self._record_loss(TRUNCATED_RECORD, reason, sequence, 1, {"bytes_cut": bytes_cut})

    def truncated_record_bytes(self, sequence: int) -> int:
        """The bytes a recorded crash repair cut from file `sequence`; 0 if none was recorded."""
        with self._lock:
            for loss in self.losses():
                if loss.get("kind") == TRUNCATED_RECORD and loss.get("sequence") == sequence:
                    return int(loss.get("bytes_cut") or 0)
            return 0

    def _record_loss(
        self, kind: str, reason: str, sequence: int | None, packets: int, extra: dict[str, Any]
    ) -> None:
        """Appends a record durably, then counts it (the caller holds the lock).

        Raises:
            SpoolError: the record cannot be made durable; the log is left as it was.
        """
        entry = {
            "id": self.losses_recorded_total + 1,
            "kind": kind,
            "time_ns": time.time_ns(),
            "reason": reason,
            "sequence": sequence,
            "packets": packets,
            **extra,
        }
        self._append_loss((json.dumps(entry) + "\n").encode())
        self.losses_recorded_total = entry["id"]
        self._unacknowledged.append(entry)
        _count(self.state, entry)
        self.state.losses_recorded_through = self.losses_recorded_total
        try:
            self._save_state()
        except OSError as exc:
            # The record is durable: open() counts it again from the log if this state is lost.
            log.warning("spool state not saved after a loss record (kept in the log): %s", exc.strerror)

    def _append_loss(self, line: bytes) -> None:
        """Appends one line to the loss log and fsyncs it; on any error cuts the log back."""
        try:
            fd = os.open(self._losses_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot open spool loss log {self._losses_path}: {exc.strerror}") from exc
        try:
            if os.fstat(fd).st_size != self._losses_size:  # an earlier cut back failed
                os.ftruncate(fd, self._losses_size)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            self._losses_size += len(line)
        except OSError as exc:
            try:
                os.ftruncate(fd, self._losses_size)
                os.fsync(fd)
            except OSError as cut_exc:  # tried again before the next append, and at the next open
                log.error("cannot cut back the loss log %s: %s", self._losses_path, cut_exc.strerror)
            raise SpoolError(f"cannot write spool loss log {self._losses_path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def losses(self) -> Iterator[dict[str, Any]]:
        """The loss log, oldest first, each record with its ``id`` and ``kind`` (older logs lack them).

        Raises:
            SpoolError: a line is not a JSON object (:meth:`open` sets such a log aside).
        """
        if not self._losses_path.exists():
            return
        with open(self._losses_path, "rb") as stream:
            number = 0
            for line in stream:
                if line.strip():
                    number += 1
                    record = _parse_record(line)
                    if record is None:
                        raise SpoolError(f"spool loss log {self._losses_path}: line {number} is not a record")
                    yield _completed(record, number)

    def _load_losses(self) -> None:
        """Reads the log, keeps the records the server has not acknowledged, and brings the state's
        loss counters up to date with records a crash wrote before the state.

        A last line without its newline was cut by a crash before its fsync returned: nobody can
        have acknowledged it, and appending after it would corrupt the next record, so it goes. A
        log with any other unreadable line (a disk error, an older version's bug) is set aside whole,
        with a warning, and its readable records are kept: the probe must start all the same.
        """
        try:
            data = self._losses_path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise SpoolError(f"spool loss log {self._losses_path} is unreadable: {exc.strerror}") from exc
        records, whole, bad = _parse_log(data)
        try:
            if bad:
                self._set_log_aside(data, records, bad)
            elif len(whole) != len(data):
                log.warning("loss log %s ends in a partial record; cutting it", self._losses_path)
                with open(self._losses_path, "r+b") as stream:
                    stream.truncate(len(whole))
                    os.fsync(stream.fileno())
        except OSError as exc:
            raise SpoolError(f"cannot repair spool loss log {self._losses_path}: {exc.strerror}") from exc
        self._losses_size = self._losses_path.stat().st_size if self._losses_path.exists() else 0
        highest = max((r["id"] for r in records), default=0)
        counted = self.state.losses_recorded_through
        if counted >= 0:
            for record in records:
                if record["id"] > counted:  # written, then a crash before the state was saved
                    _count(self.state, record)
        self.losses_recorded_total = max(highest, counted)
        self.state.losses_recorded_through = self.losses_recorded_total
        if self.losses_recorded_total != max(counted, 0):
            try:
                self._save_state()
            except OSError as exc:  # counted again from the log at the next open
                log.warning("spool state not saved after reading the loss log: %s", exc.strerror)
        mark = self.state.losses_acknowledged_through
        self._unacknowledged = [r for r in records if r["id"] > mark]

    def _set_log_aside(self, data: bytes, records: list[dict[str, Any]], bad: list[int]) -> None:
        aside = self._losses_path.with_name(f"{self._losses_path.name}.corrupt-{time.time_ns()}")
        log.warning(
            "loss log %s has %d unreadable line(s) (the first is line %d): set aside as %s; "
            "its %d readable records are kept",
            self._losses_path,
            len(bad),
            bad[0],
            aside.name,
            len(records),
        )
        write_atomically(aside, data)
        write_atomically(self._losses_path, b"".join((json.dumps(r) + "\n").encode() for r in records))

    def unacknowledged_losses(self, limit: int) -> list[dict[str, Any]]:
        """The oldest `limit` loss records the server has not acknowledged."""
        with self._lock:
            return list(self._unacknowledged[:limit])

    def acknowledge_losses(self, through: int) -> None:
        """The server stored the loss records up to id `through`: they are not sent again.

        The state is written outside the lock: its fsyncs must not hold up the capture thread,
        which needs the lock at every rotation.

        Raises:
            OSError: the state cannot be saved; the records will be sent again.
        """
        with self._lock:
            through = min(through, self.losses_recorded_total)
            if through <= self.state.losses_acknowledged_through:
                return
            previous, self.state.losses_acknowledged_through = self.state.losses_acknowledged_through, through
            self._state_version += 1
            version, snapshot = self._state_version, asdict(self.state)
        try:
            self._write_state(version, snapshot)
        except OSError:
            with self._lock:
                if self.state.losses_acknowledged_through == through:
                    self.state.losses_acknowledged_through = previous  # not durable: send them again
            raise
        with self._lock:
            self._unacknowledged = [r for r in self._unacknowledged if r["id"] > through]


def _count(state: SpoolState, record: dict[str, Any]) -> None:
    """Adds a loss record to the state's totals."""
    state.lost_packets_total += int(record.get("packets") or 0)
    if record["kind"] == DROPPED_FILE:
        state.lost_files_total += 1


def _parse_record(line: bytes) -> dict[str, Any] | None:
    """One line of the loss log as a record, or None if it is not a JSON object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    # The fields the counts and the acknowledgement rest on must be numbers.
    if not all(type(record.get(key, 0)) is int for key in ("id", "packets")):
        return None
    return record


def _parse_log(data: bytes) -> tuple[list[dict[str, Any]], bytes, list[int]]:
    """The log's readable records (completed), its whole lines, and the numbers of unreadable ones."""
    whole = data[: data.rfind(b"\n") + 1]
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    number = 0
    for line in whole.splitlines():
        if not line.strip():
            continue
        number += 1
        record = _parse_record(line)
        if record is None:
            bad.append(number)
        else:
            records.append(_completed(record, number))
    return records, whole, bad


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
