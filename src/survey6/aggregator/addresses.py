"""Address scope and interface-ID class of IPv6 addresses, computed on whole columns at once.

Each address is split into two native uint64 words (``hi`` = bits 0-63, ``lo`` = the interface ID),
so every test below is a handful of vectorised integer comparisons over the column.

Scopes follow the IANA special-purpose registry; the first matching row of ``_SCOPE_RULES`` wins, so
specific prefixes come before the ranges that contain them. Multicast carries its RFC 7346 scope.

Interface-ID classes follow ipv6toolkit's ``addr6`` (``decode_ipv6_address``), in its order:

=================  ===============================================================================
ieee-derived       modified EUI-64 from a MAC: universal bit set, ``ff:fe`` in the middle
isatap             ``0000:5efe`` or ``0200:5efe`` then an IPv4 address (RFC 5214)
embedded-ipv4      IPv4 in the low 32 bits (``::c000:201``), or written as decimal-looking hextets
                   (``::192:0:2:1``); also every IPv4-mapped and NAT64 /96 address
embedded-port      a service port in the low 16 bits (``::80``, ``::443``), or in the next 16 bits
                   with a low byte after it, as decimal or as hex-looking decimal (``::0x443``)
low-byte           all zero but the last byte or two (``::1``, ``::1:5``); an all-zero ID too
pattern-bytes      more than two zero bytes, or a 2- or 4-byte pattern repeated (``::dead:beef:dead:beef``)
randomized         none of the above: temporary (RFC 8981), stable-opaque (RFC 7217), hashed
teredo             a Teredo address: its ID is the obfuscated client port and IPv4 address
=================  ===============================================================================

Two deliberate departures from addr6: the decimal-looking IPv4 form needs every hex digit to be 0-9
(addr6 only compares each hextet with 0x255, so ``::1ff:0:0:1`` passed), and a repeating pattern
counts as a pattern, not only zero bytes. Unspecified, loopback and multicast have no ID class (null).
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

U64 = NDArray[np.uint64]
Codes = NDArray[np.int8]

_MULTICAST_SCOPES = {  # RFC 7346 scope nibble → name; other values are unassigned
    0x0: "reserved",
    0x1: "interface-local",
    0x2: "link-local",
    0x3: "realm-local",
    0x4: "admin-local",
    0x5: "site-local",
    0x8: "organization-local",
    0xE: "global",
    0xF: "reserved",
}
_SCOPE_RULES = (
    ("unspecified", "::/128"),
    ("loopback", "::1/128"),
    ("ipv4-mapped", "::ffff:0:0/96"),
    ("nat64", "64:ff9b::/96"),
    ("nat64", "64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ("discard", "100::/64"),
    ("teredo", "2001::/32"),
    ("benchmarking", "2001:2::/48"),
    ("orchid", "2001:10::/28"),  # ORCHID (RFC 4843, deprecated) and ORCHIDv2 (RFC 7343)
    ("orchid", "2001:20::/28"),
    ("documentation", "2001:db8::/32"),
    ("documentation", "3fff::/20"),
    ("6to4", "2002::/16"),
    ("global-unicast", "2000::/3"),
    ("ula", "fc00::/7"),
    ("link-local", "fe80::/10"),
    ("site-local", "fec0::/10"),  # deprecated (RFC 3879) but still seen
)
RESERVED = "reserved"  # the rest of the space: IETF-reserved or unassigned
SCOPES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [name for name, _ in _SCOPE_RULES]
        + [RESERVED]
        + [f"multicast-{name}" for name in _MULTICAST_SCOPES.values()]
        + ["multicast-unassigned"]
    )
)
IID_CLASSES: tuple[str, ...] = (
    "ieee-derived",
    "isatap",
    "embedded-ipv4",
    "embedded-port",
    "low-byte",
    "pattern-bytes",
    "randomized",
    "teredo",
)
# addr6's is_service_port(): the port in decimal, or its decimal digits read as hex (0x443 for 443).
_SERVICE_PORTS_DEC: tuple[int, ...] = (21, 22, 23, 25, 49, 53, 80, 110, 123, 179, 220, 389, 443, 547, 993)
_SERVICE_PORTS_DEC += (995, 1194, 3306, 5060, 5061, 5432, 6446, 8080)
SERVICE_PORTS = np.array(sorted(set(_SERVICE_PORTS_DEC) | {int(str(p), 16) for p in _SERVICE_PORTS_DEC}))
_IS_SERVICE_PORT = np.zeros(1 << 16, bool)  # a lookup table: one gather instead of np.isin's sort
_IS_SERVICE_PORT[SERVICE_PORTS] = True

_MULTICAST_CODES = np.array(
    [SCOPES.index(f"multicast-{_MULTICAST_SCOPES.get(nibble, 'unassigned')}") for nibble in range(16)],
    np.int8,
)
_LOW_NIBBLE_BITS = np.uint64(0x1111_1111_1111_1111)
_LOW_BYTE_BITS = np.uint64(0x0101_0101_0101_0101)
_NO_IID_SCOPES = np.isin(np.arange(len(SCOPES)), [SCOPES.index(s) for s in ("unspecified", "loopback")])
_NO_IID_SCOPES |= np.array([s.startswith("multicast-") for s in SCOPES])


def octets(column: pa.Array | pa.ChunkedArray) -> NDArray[np.uint8]:
    """An Arrow fixed_size_binary(16) column as an (n, 16) uint8 array, without copying one chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise ValueError("address columns have no nulls")
    data = column.buffers()[1]
    if data is None:
        return np.zeros((0, 16), np.uint8)
    raw = np.frombuffer(data, np.uint8, count=len(column) * 16, offset=column.offset * 16)
    return raw.reshape(len(column), 16)


def words(addresses: NDArray[np.uint8]) -> tuple[U64, U64]:
    """(hi, lo): the network-order halves of each address as native uint64."""
    halves = np.ascontiguousarray(addresses).view(">u8").astype(np.uint64)
    return halves[:, 0], halves[:, 1]


def scope_codes(hi: U64, lo: U64) -> Codes:
    """Index into ``SCOPES`` of each address."""
    codes = np.full(len(hi), SCOPES.index(RESERVED), np.int8)
    multicast = (hi >> np.uint64(56)) == 0xFF
    codes[multicast] = _MULTICAST_CODES[((hi[multicast] >> np.uint64(48)) & np.uint64(0xF)).astype(np.int64)]
    for name, prefix in reversed(_SCOPE_RULES):  # reversed: the first rule that matches is written last
        codes[_in_network(hi, lo, ipaddress.IPv6Network(prefix))] = SCOPES.index(name)
    return codes


def iid_class_codes(hi: U64, lo: U64, scopes: Codes) -> Codes:
    """Index into ``IID_CLASSES`` of each address's interface ID; -1 where it has no class."""
    w2, w3 = lo >> np.uint64(32), lo & np.uint64(0xFFFFFFFF)
    h6, h7 = (lo >> np.uint64(16)) & np.uint64(0xFFFF), lo & np.uint64(0xFFFF)
    zero_w2, small_h6 = w2 == 0, (h6 & np.uint64(0xFF00)) == 0
    # Bit tricks instead of (n, 16) nibble matrices: a nibble is above 9 when bit 3 and bit 2 or 1 are set.
    above_nine = (lo >> np.uint64(3)) & ((lo >> np.uint64(2)) | (lo >> np.uint64(1))) & _LOW_NIBBLE_BITS
    decimal_hextets = (h6 <= 0x255) & (h7 <= 0x255) & ((w2 >> np.uint64(16)) <= 0x255)
    decimal_hextets &= (w2 & np.uint64(0xFFFF)) <= 0x255
    folded = lo | (lo >> np.uint64(4))
    folded |= folded >> np.uint64(2)
    folded |= folded >> np.uint64(1)
    zero_bytes = 8 - np.bitwise_count(folded & _LOW_BYTE_BITS)
    conditions = [
        ((w2 & np.uint64(0x020000FF)) == 0x020000FF) & ((w3 & np.uint64(0xFF000000)) == 0xFE000000),
        (w2 & np.uint64(0xFDFFFFFF)) == 0x00005EFE,
        zero_w2 & ~small_h6 & (h7 != 0),
        zero_w2 & small_h6 & _IS_SERVICE_PORT[h7.astype(np.int64)],
        zero_w2 & ((h7 & np.uint64(0xFF00)) == 0) & _IS_SERVICE_PORT[h6.astype(np.int64)],
        zero_w2 & small_h6,
        (above_nine == 0) & decimal_hextets,
        (zero_bytes > 2) | (lo == _rotate(lo, 16)) | (lo == _rotate(lo, 32)),
    ]
    names = ["ieee-derived", "isatap", "embedded-ipv4", "embedded-port", "embedded-port", "low-byte"]
    names += ["embedded-ipv4", "pattern-bytes"]
    codes = np.select(conditions, [IID_CLASSES.index(n) for n in names], IID_CLASSES.index("randomized"))
    codes = codes.astype(np.int8)
    embedded = np.isin(scopes, [SCOPES.index("ipv4-mapped"), SCOPES.index("nat64")])
    codes[embedded & ~_in_network(hi, lo, ipaddress.IPv6Network("64:ff9b:1::/48"))] = IID_CLASSES.index(
        "embedded-ipv4"
    )
    codes[scopes == SCOPES.index("teredo")] = IID_CLASSES.index("teredo")
    codes[_NO_IID_SCOPES[scopes]] = -1
    return codes


def class_array(codes: Codes, names: tuple[str, ...]) -> pa.DictionaryArray:
    """Codes as an Arrow dictionary column over the fixed ``names`` (-1 becomes null)."""
    valid = codes >= 0
    indices = pa.array(
        np.where(valid, codes, 0).astype(np.int8), pa.int8(), mask=None if valid.all() else ~valid
    )
    return pa.DictionaryArray.from_arrays(indices, pa.array(names, pa.string()))


def text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """RFC 5952 strings, formatted once per distinct address (traffic repeats addresses a lot)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = column.dictionary_encode()
    distinct = octets(encoded.dictionary)
    formatted = pa.array([str(ipaddress.IPv6Address(bytes(row))) for row in distinct], pa.string())
    return formatted.take(encoded.indices)


def _in_network(hi: U64, lo: U64, network: ipaddress.IPv6Network) -> NDArray[np.bool_]:
    value, length = int(network.network_address), network.prefixlen
    mask = ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)
    mask_hi, mask_lo = np.uint64(mask >> 64), np.uint64(mask & (2**64 - 1))
    net_hi, net_lo = np.uint64(value >> 64), np.uint64(value & (2**64 - 1))
    inside: NDArray[np.bool_] = (hi & mask_hi) == net_hi
    if length > 64:  # most prefixes end in the top half: no need to look at the bottom one
        inside &= (lo & mask_lo) == net_lo
    return inside


def _rotate(value: U64, bits: int) -> U64:
    return (value >> np.uint64(bits)) | (value << np.uint64(64 - bits))
