"""Property tests of the capture parser on nearly valid files: every one is parsed with its damage
counted, or refused with ``ParseError`` — never another exception (``fuzz.targets.pcap_one`` checks
the rows and counters add up, and that the chunk size changes nothing)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import pcap_one
from survey6.aggregator.discovery import Capture
from survey6.aggregator.errors import ParseError
from survey6.aggregator.ledger import Ledger
from survey6.aggregator.parse import parse_bytes
from survey6.aggregator.pcapng import MAX_TS_OFFSET_S
from survey6.aggregator.pipeline import ingest_file
from survey6.aggregator.quarantine import Quarantine
from unit.aggregator import pcapbuild as b

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXT_HEADERS = (0, 43, 44, 50, 51, 60, 135)
CHAIN_HEADERS = 17  # one more than the parser walks
u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
byte = st.integers(0, 255)
# Strategies built once: building them inside each draw is most of a test's time.
chain_kinds = st.lists(st.sampled_from(EXT_HEADERS), max_size=CHAIN_HEADERS)
upper_protocols = st.sampled_from((6, 17, 58, 132, 59, 0))
fragment_units, ah_words, payload_lengths = st.integers(0, 8191), st.integers(0, 60), st.none() | u16
name_parts = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=70).map(lambda p: bytes([len(p) & 0xFF]) + p),
        st.integers(0, 0x3FFF).map(lambda t: struct.pack("!H", 0xC000 | t)),
        st.sampled_from((b"\x00", b"\xc0\x0c", b"\x40", b"\x80\x01", b"\xff")),
    ),
    max_size=12,
)
vlan_stacks = st.lists(st.tuples(st.sampled_from((0x8100, 0x88A8, 0x9100)), st.integers(0, 4095)), max_size=6)
ethertypes = st.sampled_from((0x86DD, 0x0800, 0x8100))


@st.composite
def chains(draw: st.DrawFn) -> bytes:
    """An IPv6 packet whose extension-header chain is real, then cut, lengthened or looped."""
    kinds = draw(chain_kinds)
    last = draw(upper_protocols)
    body = b.tcp(1, 53) if last == 6 else b.udp(1, 53, b.dns_message("x.example", 1))
    for i in reversed(range(len(kinds))):  # innermost first: each header names the one after it
        kind, following = kinds[i], kinds[i + 1] if i + 1 < len(kinds) else last
        if kind == 44:
            body = b.fragment_header(following, draw(fragment_units) * 8, True, 1) + body
        elif kind == 51:
            body = b.ah_header(following, draw(ah_words)) + body
        else:
            body = bytes([following, draw(byte)]) + bytes(6) + body
    first = kinds[0] if kinds else last
    packet = b.ipv6("2001:db8::1", "2001:db8::2", first, body, payload_length=draw(payload_lengths))
    return packet[: draw(st.integers(0, len(packet)))]


@st.composite
def dns_payloads(draw: st.DrawFn) -> bytes:
    """A DNS message whose first name uses labels, pointers (forward, backward, to itself) and junk."""
    parts = draw(name_parts)
    header = struct.pack("!HHHHHH", 1, draw(u16), draw(u16), 0, 0, 0)
    return header + b"".join(parts) + draw(st.binary(max_size=6))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    payload = draw(chains() | dns_payloads().map(lambda m: b.ipv6("::1", "::2", 17, b.udp(53, 5353, m))))
    if draw(st.booleans()):
        payload = b.ipv6(
            "::1", "::2", 6, b.tcp(53, 1, 0x18, struct.pack("!H", draw(u16)) + draw(dns_payloads()))
        )
    return b.ethernet(payload, draw(ethertypes), vlans=draw(vlan_stacks))


@st.composite
def pcaps(draw: st.DrawFn) -> bytes:
    """A valid global header, records with hostile captured and wire lengths, and a cut tail."""
    link_type = draw(st.sampled_from((1, 101, 113, 229, 276, 0xFFFF0001)))
    order = draw(st.sampled_from("<>"))
    data = b.pcap([], link_type=link_type, order=order, snaplen=draw(u32))
    for frame in draw(st.lists(frames(), max_size=6)):
        captured = draw(
            st.sampled_from((len(frame), 0, 0xFFFFFFFF, 262_145)) | st.integers(0, len(frame) + 40)
        )
        data += struct.pack(order + "IIII", draw(u32), draw(u32), captured, draw(u32)) + frame
    return data[: draw(st.integers(24, len(data)))] if draw(st.booleans()) else data


def _block(order: str, kind: int, body: bytes, length: int | None = None) -> bytes:
    size = 12 + len(body) if length is None else length
    return struct.pack(order + "II", kind, size) + body + struct.pack(order + "I", size)


@st.composite
def options(draw: st.DrawFn, order: str) -> bytes:
    out = b""
    for code, value in draw(
        st.lists(st.tuples(st.sampled_from((0, 2, 9, 14, 99)), st.binary(max_size=12)), max_size=4)
    ):
        length = draw(st.sampled_from((len(value), 0xFFFF)) | st.integers(0, 40))
        out += struct.pack(order + "HH", code, length) + value + bytes(-len(value) % 4)
    return out


@st.composite
def pcapngs(draw: st.DrawFn) -> bytes:
    """Sections of blocks with lying lengths, interfaces with odd options, packets naming no interface."""
    data = b""
    for _ in range(draw(st.integers(1, 2))):
        order = draw(st.sampled_from("<>"))
        data += _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from((1, 2, 3, 6, 5, 0x0A0D0D0A)))
            frame = draw(frames())
            if kind == 1:
                body = struct.pack(order + "HHI", draw(u16), 0, draw(u32)) + draw(options(order))
            elif kind == 3:
                body = struct.pack(order + "I", draw(u32)) + frame + bytes(-len(frame) % 4)
            else:
                head = struct.pack(
                    order + "IIIII", draw(st.integers(0, 3)), draw(u32), draw(u32), len(frame), draw(u32)
                )
                body = head + frame + bytes(-len(frame) % 4)
            length = draw(st.none() | st.sampled_from((0, 12, 13, 28, 0xFFFFFFFC)) | st.integers(0, 600))
            data += _block(order, kind, body, length)
    return data[: draw(st.integers(28, len(data)))] if draw(st.booleans()) else data


@FAST
@given(pcaps())
def test_nearly_valid_pcap_files_never_crash_the_parser(data: bytes) -> None:
    pcap_one(data)


@FAST
@given(pcapngs())
def test_nearly_valid_pcapng_files_never_crash_the_parser(data: bytes) -> None:
    pcap_one(data)


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_after_a_valid_header_never_crash_the_parser(tail: bytes) -> None:
    pcap_one(b.pcap([]) + tail)
    pcap_one(b.pcapng([b.NgSection([b.NgInterface(1)])]) + tail)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcaps() | pcapngs())
def test_the_pipeline_ingests_or_quarantines_nearly_valid_files(data: bytes) -> None:
    # The whole ingest of one file, Parquet written: ParseError is not the only way out of parse.
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        path = root / "capture.pcap"
        path.write_bytes(data)
        with Ledger.in_state_dir(root) as ledger:
            outcome = ingest_file(
                Capture(path, "user", probe_id="p-fuzz"),
                ledger=ledger,
                quarantine=Quarantine.in_state_dir(root),
                output_root=root / "out",
            )

    assert outcome.state in ("ingested", "quarantined"), outcome


@st.composite
def valid_sections(draw: st.DrawFn) -> b.NgSection:
    interfaces = [
        b.NgInterface(draw(st.sampled_from((1, 101, 113, 229, 276)))) for _ in range(draw(st.integers(0, 2)))
    ]
    frame = b.ethernet(b.ipv6("::1", "::2", 59, b""))
    count = draw(st.integers(0, 4)) if interfaces else 0
    kinds = draw(st.lists(st.sampled_from(("epb", "pb", "spb")), min_size=count, max_size=count))
    return b.NgSection(
        interfaces,
        [b.Record(frame, interface=draw(st.integers(0, len(interfaces) - 1))) for _ in range(count)],
        order=draw(st.sampled_from("<>")),
        simple=[i for i, k in enumerate(kinds) if k == "spb"],
        obsolete=[i for i, k in enumerate(kinds) if k == "pb"],
    )


@FAST
@given(st.lists(valid_sections(), min_size=1, max_size=4))
def test_valid_pcapng_files_of_mixed_byte_orders_parse_whole(sections: list[b.NgSection]) -> None:
    result = parse_bytes(b.pcapng(sections))

    assert result.stats.packets == sum(len(s.records) for s in sections)
    assert (result.stats.unparsed_bytes, result.stats.truncated_packets, result.stats.malformed_packets) == (
        0,
        0,
        0,
    )


# -- findings, each fixed in the product (reproducers are in tests/data/fuzz/pcap) ------------------


@pytest.mark.parametrize("offset_s", [MAX_TS_OFFSET_S + 1, -(1 << 63), (1 << 63) - 1])
def test_an_interface_time_offset_past_int64_ns_is_a_parse_error(offset_s: int) -> None:
    # Found by fuzzing: the offset was multiplied into int64 ns and raised OverflowError.
    section = b.NgSection([b.NgInterface(1, tsoffset_s=offset_s)], [b.Record(b.ethernet(b""))])

    with pytest.raises(ParseError, match="timestamp offset") as caught:
        parse_bytes(b.pcapng([section]), source="x.pcapng")

    assert str(caught.value).startswith("x.pcapng: ")


def test_a_last_section_in_another_byte_order_does_not_cut_the_packets_before_it() -> None:
    # Found with the seeds: the end-of-file check read the last packet block's length in the byte
    # order of the last section, so a valid file looked cut short (and was quarantined as damaged).
    frame = b.ethernet(b.ipv6("::1", "::2", 59, b""))
    first = b.NgSection([b.NgInterface(1)], [b.Record(frame), b.Record(frame)], order=">")
    data = b.pcapng([first, b.NgSection([b.NgInterface(1)], order="<")])

    stats = parse_bytes(data).stats

    assert (stats.packets, stats.ipv6_packets, stats.truncated_packets, stats.unparsed_bytes) == (2, 2, 0, 0)


def test_a_last_packet_cut_by_the_end_of_the_file_is_still_truncated() -> None:
    frame = b.ethernet(b.ipv6("::1", "::2", 59, b""))
    data = b.pcapng([b.NgSection([b.NgInterface(1)], [b.Record(frame), b.Record(frame)], order=">")])

    stats = parse_bytes(data[:-8]).stats

    assert (stats.packets, stats.ipv6_packets, stats.truncated_packets) == (2, 1, 1)


def test_an_interface_time_offset_within_range_still_shifts_the_timestamps() -> None:
    frame = b.ethernet(b.ipv6("::1", "::2", 59, b""))
    at_ns = MAX_TS_OFFSET_S * 1_000_000_000 + 5_000  # 5 µs after the offset
    section = b.NgSection([b.NgInterface(1, tsoffset_s=MAX_TS_OFFSET_S)], [b.Record(frame, ts_ns=at_ns)])

    result = parse_bytes(b.pcapng([section]))

    assert result.table.column("timestamp_ns").to_pylist() == [at_ns]
