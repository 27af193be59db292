"""The Arrow schema of parsed packets: one row per IPv6 packet of a capture file.

``PACKET_SCHEMA`` is what ``parse.parse_file`` returns; ``ENRICHED_SCHEMA`` adds what ``enrich.enrich``
derives (file metadata as constant columns, address classes, prefix keys). Every "nullable" field is
null where the packet does not carry it or it was not captured (a truncated capture), never zero.

Parsed columns (``PACKET_SCHEMA``):

======================  =====================  =================================================
column                  type                   meaning, unit
======================  =====================  =================================================
timestamp_ns            int64, nullable        capture time, ns since the Unix epoch (UTC); null
                                               only for pcapng simple packet blocks
interface_index         int32                  pcapng interface id (global across sections); 0 for pcap
link_type               uint16                 LINKTYPE_* of the record (1 Ethernet, 113 SLL, ...)
captured_length         uint32                 bytes captured of the frame (the record's length)
wire_length             uint32                 bytes of the frame on the wire
src, dst                fixed_size_binary(16)  IPv6 source and destination, network byte order
traffic_class           uint8                  IPv6 traffic class (DSCP << 2 | ECN)
flow_label              uint32                 IPv6 flow label (20 bits)
payload_length          uint16                 IPv6 payload length field, bytes (0 for jumbograms)
next_header             uint8                  next header field of the fixed IPv6 header
hop_limit               uint8                  IPv6 hop limit
ext_headers             list<uint8>            extension headers in order: 0 hop-by-hop, 43 routing,
                                               44 fragment, 60 destination options, 51 AH, 50 ESP,
                                               135 mobility; empty when there are none. A header
                                               announced but cut off by the snaplen is listed
protocol                uint8, nullable        upper-layer protocol after the chain (6 TCP, 17 UDP,
                                               58 ICMPv6, 59 no next header, ...); 50 when the chain
                                               ends in ESP (the rest is encrypted); null when the
                                               chain runs past the captured bytes
src_port, dst_port      uint16, nullable       TCP, UDP and SCTP ports
tcp_flags               uint16, nullable       TCP flags, 9 bits: NS(0x100) CWR ECE URG ACK PSH RST SYN FIN
icmp_type, icmp_code    uint8, nullable        ICMPv6 type and code
fragment_id             uint32, nullable       fragment header identification
fragment_offset         uint16, nullable       fragment offset in bytes (the field × 8)
fragment_more           bool, nullable         fragment header M flag
dns_qname               string, nullable       first question's name, no trailing dot ("" = root);
                                               bytes that are not UTF-8 escaped as \\xNN
dns_qtype               uint16, nullable       first question's type (1 A, 28 AAAA, ...)
dns_rcode               uint8, nullable        response code (header, 4 bits)
dns_is_response         bool, nullable         QR bit
======================  =====================  =================================================

Upper-layer fields are filled only for the first fragment (offset 0) and only when the whole minimum
header was captured (TCP 20, UDP 8, SCTP 12, ICMPv6 4 bytes). DNS is decoded for UDP port 53 or 5353
and TCP port 53 (after the 2-byte length prefix), either direction.

Enriched columns (``ENRICHED_SCHEMA`` adds):

======================  =====================  =================================================
probe_id                string                 probe that captured the file ("" when standalone)
labels                  map<string, string>    the probe's labels (site, region, asn, ...)
interface_name          string                 pcapng if_name, else the metadata's interface name
sequence                uint64                 the file's per-probe sequence number (0 = unknown)
src_scope, dst_scope    dictionary<string>     address type: see ``addresses.SCOPES``
src_iid_class,          dictionary<string>,    interface-ID class as ipv6toolkit's addr6 draws it:
dst_iid_class           nullable               see ``addresses.IID_CLASSES``; null for multicast,
                                               unspecified and loopback
src_prefix48, ...64,    uint64                 the top 48 / 64 bits of the address as an integer,
dst_prefix48, ...64                            a join and group-by key (/48 is right-aligned)
======================  =====================  =================================================

``ADDRESS_TEXT_FIELDS`` (``src_text``, ``dst_text``: the RFC 5952 string) are added only on request.
"""

from __future__ import annotations

import pyarrow as pa

ADDRESS = pa.binary(16)
CLASS_TYPE = pa.dictionary(pa.int8(), pa.string())
LABELS_TYPE = pa.map_(pa.string(), pa.string())

PACKET_SCHEMA = pa.schema(
    [
        pa.field("timestamp_ns", pa.int64()),
        pa.field("interface_index", pa.int32(), nullable=False),
        pa.field("link_type", pa.uint16(), nullable=False),
        pa.field("captured_length", pa.uint32(), nullable=False),
        pa.field("wire_length", pa.uint32(), nullable=False),
        pa.field("src", ADDRESS, nullable=False),
        pa.field("dst", ADDRESS, nullable=False),
        pa.field("traffic_class", pa.uint8(), nullable=False),
        pa.field("flow_label", pa.uint32(), nullable=False),
        pa.field("payload_length", pa.uint16(), nullable=False),
        pa.field("next_header", pa.uint8(), nullable=False),
        pa.field("hop_limit", pa.uint8(), nullable=False),
        pa.field("ext_headers", pa.list_(pa.uint8()), nullable=False),
        pa.field("protocol", pa.uint8()),
        pa.field("src_port", pa.uint16()),
        pa.field("dst_port", pa.uint16()),
        pa.field("tcp_flags", pa.uint16()),
        pa.field("icmp_type", pa.uint8()),
        pa.field("icmp_code", pa.uint8()),
        pa.field("fragment_id", pa.uint32()),
        pa.field("fragment_offset", pa.uint16()),
        pa.field("fragment_more", pa.bool_()),
        pa.field("dns_qname", pa.string()),
        pa.field("dns_qtype", pa.uint16()),
        pa.field("dns_rcode", pa.uint8()),
        pa.field("dns_is_response", pa.bool_()),
    ]
)

METADATA_FIELDS = [
    pa.field("probe_id", pa.string(), nullable=False),
    pa.field("labels", LABELS_TYPE, nullable=False),
    pa.field("interface_name", pa.string(), nullable=False),
    pa.field("sequence", pa.uint64(), nullable=False),
]

ADDRESS_CLASS_FIELDS = [
    pa.field(f"{side}_{name}", kind, nullable=nullable)
    for side in ("src", "dst")
    for name, kind, nullable in (
        ("scope", CLASS_TYPE, False),
        ("iid_class", CLASS_TYPE, True),
        ("prefix48", pa.uint64(), False),
        ("prefix64", pa.uint64(), False),
    )
]

ADDRESS_TEXT_FIELDS = [
    pa.field("src_text", pa.string(), nullable=False),
    pa.field("dst_text", pa.string(), nullable=False),
]

ENRICHED_SCHEMA = pa.schema(list(PACKET_SCHEMA) + METADATA_FIELDS + ADDRESS_CLASS_FIELDS)
