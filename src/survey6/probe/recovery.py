"""Repair of capture files left open by a crash, run before capture starts again.

Every packet that reached the disk is kept: a part file is cut back to its last whole record, sealed
with metadata flagged ``repaired`` and shipped like any other. A part file whose header never made it
to disk is rewritten as an empty capture, so that its sequence number is used and numbering stays
gapless. The packet of a partial last record is recorded as a loss (kind ``truncated-record``) before
it is cut. The kernel counters of a crashed window are unknown (the process that held them is gone)
and are reported as zero. A part info that a machine crash emptied or lost (it is fsynced just after
its file begins, off the capture thread: see ``Spool.begin_file``) leaves the interface unknown; the
file is sealed with what its own header says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from survey6.common.files import fsync_file
from survey6.probe import hostinfo
from survey6.probe.capture import Provenance, file_sha256
from survey6.probe.errors import PcapFileError, ProbeError, SpoolError
from survey6.probe.metadata import SCHEMA_VERSION
from survey6.probe.pcap import CaptureHandle
from survey6.probe.pcapfile import GLOBAL_HEADER_BYTES, TimestampPrecision, repair_truncated, scan_records
from survey6.probe.spool import ReadyFile, Spool
from survey6.wire.v1 import capture_pb2

log = logging.getLogger(__name__)

DLT_EN10MB = 1
DEFAULT_SNAPLEN_BYTES = 262_144


def recover_open_files(spool: Spool, provenance: Provenance) -> list[ReadyFile]:
    """Seals every file a previous run left in ``open/``, oldest first, as far as the spool has room.

    On a full spool the full policy first makes room (drop-oldest records and drops ready files;
    pause drops nothing). A repair that still cannot write (ENOSPC) is logged in one line and stops
    here: the files not sealed stay in ``open/``, their packets kept, and the next start repairs
    them. Every step of a repair can run again after a failure (see :func:`_record_truncation`), so
    a repair stopped half way is finished then, and nothing keeps the probe from capturing now.
    """
    recovered = []
    for sequence in spool.open_sequences():
        try:
            spool.make_room()
        except SpoolError as exc:  # the drop's loss record cannot be written: the file is kept
            log.error("cannot make room in the spool before repairing file %d: %s", sequence, exc)
        try:
            recovered.append(_recover(spool, sequence, provenance))
        except (ProbeError, OSError) as exc:
            log.error(
                "cannot repair capture file %d left by a crash, kept in open/ for the next start: %s",
                sequence,
                exc,
            )
            break
    return recovered


def _recover(spool: Spool, sequence: int, provenance: Provenance) -> ReadyFile:
    info = _read_info(spool, sequence)
    part = spool.part_path(sequence)
    rewritten = False
    if not part.exists() or part.stat().st_size < GLOBAL_HEADER_BYTES:
        _write_empty_capture(part, info)
        rewritten = True
    try:
        _record_truncation(spool, sequence, part)
        repair = repair_truncated(part)
        scan = scan_records(part)
    except PcapFileError as exc:
        # Not a pcap at all (overwritten by something else): keep the sequence, ship an empty file.
        log.error("unreadable part file %s, replacing it with an empty capture: %s", part.name, exc)
        _write_empty_capture(part, info)
        repair = repair_truncated(part)
        scan = scan_records(part)
        rewritten = True
    # Spool.seal wants a durable file: after a process crash the part file's tail may still be only in
    # the page cache, and a machine crash after sealing would then ship a file its SHA-256 no longer fits.
    try:
        fsync_file(part)
    except OSError as exc:
        raise SpoolError(f"cannot sync repaired capture file {part}: {exc.strerror}") from exc
    interface = hostinfo.interface_facts(str(info.get("interface", "unknown")), scan.header.linktype)
    host = hostinfo.host_facts([])
    host.interfaces.append(interface)
    window_start = int(info.get("window_start_ns", scan.first_ts_ns or 0))
    window_end = max(scan.last_ts_ns or window_start, window_start)
    size = part.stat().st_size
    metadata = capture_pb2.CaptureMetadata(
        probe_id=provenance.probe_id,
        host=host,
        labels=provenance.labels,
        interface=interface,
        snaplen_bytes=scan.header.snaplen,
        filter=str(info.get("filter", "")),
        sequence=sequence,
        first_packet_time_ns=scan.first_ts_ns or 0,
        last_packet_time_ns=scan.last_ts_ns or 0,
        window_start_ns=window_start,
        window_end_ns=window_end,
        packets=scan.records,
        captured_bytes=scan.captured_bytes,
        file_size_bytes=size,
        sha256_hex=file_sha256(part),
        kernel_delta=capture_pb2.KernelCounters(),
        link_utilisation_mean_ratio=-1.0,
        link_utilisation_peak_ratio=-1.0,
        repaired=True,
        # A repair that a crash stopped after its cut finds nothing more to cut: the loss it recorded
        # still says what was cut, and the audit checks one against the other.
        repaired_truncated_bytes=repair.bytes_cut or spool.truncated_record_bytes(sequence),
        file_format="pcap",
        schema_version=SCHEMA_VERSION,
    )
    ready = spool.seal(sequence, metadata)
    log.warning(
        "repaired capture file left by a crash",
        extra={
            "sequence": sequence,
            "packets": scan.records,
            "bytes_cut": repair.bytes_cut,
            "rewritten_empty": rewritten,
        },
    )
    return ready


def _record_truncation(spool: Spool, sequence: int, part: Path) -> None:
    """Records the packet a partial last record loses, before the repair cuts it (docs/audit.md).

    Recorded first, so that a crash during the repair cannot leave a cut without its loss; the
    record is idempotent, so a repair that runs again does not count it twice.

    Raises:
        PcapFileError: the file is not a readable classic pcap.
    """
    scan = scan_records(part)
    cut = scan.file_bytes - scan.valid_end_offset
    if cut:
        spool.record_truncated_record(sequence, cut, corrupt=scan.corrupt)


def _read_info(spool: Spool, sequence: int) -> dict[str, Any]:
    try:
        return spool.part_info(sequence)
    except (OSError, ValueError):
        log.error("part info of sequence %d missing or unreadable; sealing with what the file says", sequence)
        return {}


def _write_empty_capture(path: Path, info: dict[str, Any]) -> None:
    """A valid pcap with no packet, with the link type and snaplen the capture was opened with."""
    precision = TimestampPrecision(int(info.get("precision", TimestampPrecision.NANO)))
    linktype = int(info.get("link_type", DLT_EN10MB))
    snaplen = int(info.get("snaplen_bytes", DEFAULT_SNAPLEN_BYTES))
    with CaptureHandle.dead(linktype, snaplen, precision) as handle, handle.open_dumper(path) as dumper:
        dumper.flush()
