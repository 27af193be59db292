"""pcapfile: header parsing, record scans and crash repair on real files, with dpkt as an oracle."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest

from survey6.probe import pcapfile
from survey6.probe.errors import PcapFileError
from survey6.probe.pcapfile import (
    GLOBAL_HEADER_BYTES,
    MAGIC_MICRO,
    MAGIC_NANO,
    RECORD_HEADER_BYTES,
    TimestampPrecision,
    read_header,
    repair_truncated,
    scan_records,
)

T0_S = 1_700_000_000  # 2023-11-14, a plausible capture time


def pcap_bytes(
    packets: list[tuple[int, int, bytes, int]],
    *,
    order: str = "<",
    nano: bool = True,
    snaplen: int = 262_144,
    linktype: int = 1,
) -> bytes:
    """A classic pcap file built by hand: (ts_sec, ts_frac, data, orig_len) per record."""
    magic = MAGIC_NANO if nano else MAGIC_MICRO
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, orig in packets:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def packets(n: int, size: int = 60) -> list[tuple[int, int, bytes, int]]:
    return [(T0_S + i, 1000 * i + 7, bytes([i % 256]) * (size + i % 5), size + i % 5 + 100) for i in range(n)]


def write(tmp_path: Path, data: bytes, name: str = "f.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [True, False])
def test_header_and_scan_in_every_byte_order_and_precision(tmp_path: Path, order: str, nano: bool) -> None:
    pkts = packets(10)
    path = write(tmp_path, pcap_bytes(pkts, order=order, nano=nano, snaplen=1500, linktype=228))

    header = read_header(path)
    assert header.byte_order == order
    assert header.precision is (TimestampPrecision.NANO if nano else TimestampPrecision.MICRO)
    assert (header.version_major, header.version_minor, header.snaplen, header.linktype) == (2, 4, 1500, 228)

    scan = scan_records(path)
    tick = 1 if nano else 1000
    assert scan.records == 10
    assert scan.wire_bytes == sum(p[3] for p in pkts)
    assert scan.captured_bytes == sum(len(p[2]) for p in pkts)
    assert scan.first_ts_ns == T0_S * 10**9 + 7 * tick
    assert scan.last_ts_ns == (T0_S + 9) * 10**9 + (9007) * tick
    assert scan.valid_end_offset == scan.file_bytes == path.stat().st_size
    assert scan.intact and not scan.truncated_tail and not scan.corrupt

    # dpkt reads the same file and sees the same packets.
    with path.open("rb") as f:
        assert [bytes(buf) for _, buf in dpkt.pcap.Reader(f)] == [p[2] for p in pkts]


def test_scan_agrees_with_a_file_written_by_dpkt(tmp_path: Path) -> None:
    path = tmp_path / "dpkt.pcap"
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, nano=True)
        for i in range(100):
            writer.writepkt(bytes(40 + i), ts=T0_S + i)
    scan = scan_records(path)
    assert scan.records == 100
    assert scan.captured_bytes == scan.wire_bytes == sum(40 + i for i in range(100))
    assert scan.first_ts_ns == T0_S * 10**9
    assert scan.last_ts_ns == (T0_S + 99) * 10**9


def test_header_only_file_has_no_records(tmp_path: Path) -> None:
    scan = scan_records(write(tmp_path, pcap_bytes([])))
    assert (scan.records, scan.first_ts_ns, scan.last_ts_ns) == (0, None, None)
    assert scan.valid_end_offset == GLOBAL_HEADER_BYTES and scan.intact


def test_records_spanning_scan_blocks(tmp_path: Path) -> None:
    # > 2 blocks of records whose sizes do not divide the block size, so records straddle refills.
    n = (2 * pcapfile.SCAN_BLOCK_BYTES) // (RECORD_HEADER_BYTES + 1499) + 50
    pkts = [(T0_S, i, b"\xab" * (1499 - i % 3), 1499) for i in range(n)]
    path = write(tmp_path, pcap_bytes(pkts))
    scan = scan_records(path)
    assert scan.records == n
    assert scan.captured_bytes == sum(len(p[2]) for p in pkts)
    assert scan.intact


@pytest.mark.parametrize("cut", [1, 10, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 5, 70])
def test_truncated_tail_is_detected_and_repaired_idempotently(tmp_path: Path, cut: int) -> None:
    pkts = packets(5, size=60)
    whole = pcap_bytes(pkts)
    last_record = RECORD_HEADER_BYTES + len(pkts[-1][2])
    keep = len(whole) - last_record + min(cut, last_record - 1)
    path = write(tmp_path, whole[:keep])

    scan = scan_records(path)
    assert scan.records == 4 and scan.truncated_tail and not scan.corrupt
    assert scan.valid_end_offset == len(whole) - last_record

    first = repair_truncated(path)
    assert (first.header_missing, first.records_kept, first.bytes_cut) == (
        False,
        4,
        keep - scan.valid_end_offset,
    )
    assert path.read_bytes() == whole[: len(whole) - last_record]
    second = repair_truncated(path)
    assert (second.records_kept, second.bytes_cut) == (4, 0)
    with path.open("rb") as f:
        assert len(list(dpkt.pcap.Reader(f))) == 4


def test_absurd_length_in_the_middle_is_corruption(tmp_path: Path) -> None:
    good = pcap_bytes(packets(3))
    garbage = struct.pack("<IIII", T0_S, 0, 0x7FFF_FFFF, 0x7FFF_FFFF) + bytes(200)
    tail = pcap_bytes(packets(2))[GLOBAL_HEADER_BYTES:]
    path = write(tmp_path, good + garbage + tail)

    scan = scan_records(path)
    assert scan.corrupt and not scan.truncated_tail
    assert scan.records == 3 and scan.valid_end_offset == len(good)

    result = repair_truncated(path)
    assert result.corrupt and result.records_kept == 3
    assert result.bytes_cut == len(garbage) + len(tail)
    assert path.read_bytes() == good


def test_incl_len_above_snaplen_is_corruption(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes([(T0_S, 0, bytes(100), 100), (T0_S, 1, bytes(200), 200)], snaplen=128))
    scan = scan_records(path)
    assert scan.corrupt and scan.records == 1


def test_zero_snaplen_falls_back_to_libpcap_maximum(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes([(T0_S, 0, bytes(9000), 9000)], snaplen=0))
    assert pcapfile.max_record_bytes(read_header(path)) == pcapfile.MAX_SNAPLEN_BYTES
    assert scan_records(path).records == 1


@pytest.mark.parametrize("size", [0, 1, GLOBAL_HEADER_BYTES - 1])
def test_incomplete_global_header_is_reported_not_touched(tmp_path: Path, size: int) -> None:
    data = pcap_bytes([])[:size]
    path = write(tmp_path, data)
    result = repair_truncated(path)
    assert result.header_missing and result.records_kept == 0 and result.bytes_cut == 0
    assert path.read_bytes() == data
    with pytest.raises(PcapFileError, match="incomplete"):
        read_header(path)


def test_pcapng_is_detected_and_refused(tmp_path: Path) -> None:
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    path = write(tmp_path, shb, "f.pcapng")
    with pytest.raises(PcapFileError, match="pcapng"):
        read_header(path)
    with pytest.raises(PcapFileError, match="pcapng"):
        repair_truncated(path)
    assert path.read_bytes() == shb  # never "repaired" into something else


def test_not_pcap_is_refused_with_cause(tmp_path: Path) -> None:
    path = write(tmp_path, b"GIF89a" + bytes(40))
    with pytest.raises(PcapFileError, match="magic") as info:
        scan_records(path)
    assert isinstance(info.value.__cause__, PcapFileError)
    assert isinstance(info.value.__cause__.__cause__, KeyError)


def test_missing_file_raises_with_oserror_cause(tmp_path: Path) -> None:
    with pytest.raises(PcapFileError) as info:
        read_header(tmp_path / "absent.pcap")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(PcapFileError) as info:
        repair_truncated(tmp_path / "absent.pcap")
    assert isinstance(info.value.__cause__, FileNotFoundError)
