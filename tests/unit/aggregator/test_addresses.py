"""addresses: scopes, interface-ID classes and prefix keys, on whole columns."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from survey6.aggregator import addresses

CASES = [
    # address, scope, interface-ID class (None: no class)
    ("::", "unspecified", None),
    ("::1", "loopback", None),
    ("::2", "reserved", "low-byte"),
    ("::ffff:192.0.2.1", "ipv4-mapped", "embedded-ipv4"),
    ("64:ff9b::192.0.2.1", "nat64", "embedded-ipv4"),
    ("64:ff9b:1::1", "nat64", "low-byte"),
    ("100::1", "discard", "low-byte"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo", "teredo"),
    ("2001:2::1", "benchmarking", "low-byte"),
    ("2001:10::1", "orchid", "low-byte"),
    ("2001:20::1", "orchid", "low-byte"),
    ("2001:db8::1", "documentation", "low-byte"),
    ("3fff:fff::1", "documentation", "low-byte"),
    ("3fff:1000::1", "global-unicast", "low-byte"),
    ("2002:c000:201::1", "6to4", "low-byte"),
    ("2a00:1450:4001:81b::200e", "global-unicast", "low-byte"),
    ("fd12:3456:789a::1", "ula", "low-byte"),
    ("fe80::211:22ff:fe33:4455", "link-local", "ieee-derived"),
    ("fec0::1", "site-local", "low-byte"),
    ("4000::1", "reserved", "low-byte"),
    ("ff00::1", "multicast-reserved", None),
    ("ff01::1", "multicast-interface-local", None),
    ("ff02::1:ff00:1", "multicast-link-local", None),
    ("ff12::8000:1", "multicast-link-local", None),  # transient flag, same scope
    ("ff03::1", "multicast-realm-local", None),
    ("ff04::1", "multicast-admin-local", None),
    ("ff05::1:3", "multicast-site-local", None),
    ("ff06::1", "multicast-unassigned", None),
    ("ff08::1", "multicast-organization-local", None),
    ("ff0e::101", "multicast-global", None),
    ("ff0f::1", "multicast-reserved", None),
]

IID_CASES = [
    ("2001:db8::0211:22ff:fe33:4455", "ieee-derived"),
    ("2001:db8::0011:22ff:fe33:4455", "randomized"),  # ff:fe but the universal bit clear: not from a MAC
    ("2001:db8::5efe:c000:201", "isatap"),
    ("2001:db8::200:5efe:c000:201", "isatap"),
    ("2001:db8::c000:201", "embedded-ipv4"),
    ("2001:db8::192:0:2:1", "embedded-ipv4"),
    ("2001:db8::1ff:0:0:1", "pattern-bytes"),  # addr6 calls this IPv4; 'f' is no decimal digit
    ("2001:db8::50", "embedded-port"),  # 80
    ("2001:db8::80", "embedded-port"),  # 80 written as hex digits
    ("2001:db8::1bb", "embedded-port"),  # 443
    ("2001:db8::50:1", "embedded-port"),  # the port in the next 16 bits
    ("2001:db8::1:5", "low-byte"),
    ("2001:db8::", "low-byte"),
    ("2001:db8::dead:beef:dead:beef", "pattern-bytes"),
    ("2001:db8::1111:1111:1111:1111", "pattern-bytes"),
    ("2001:db8::a1b2:0:0:789a", "pattern-bytes"),
    ("2001:db8::a1b2:c3d4:e5f6:789a", "randomized"),
]


def column(texts: list[str]) -> pa.Array:
    return pa.array([ipaddress.IPv6Address(t).packed for t in texts], pa.binary(16))


def classify(texts: list[str]) -> tuple[list[str], list[str | None]]:
    hi, lo = addresses.words(addresses.octets(column(texts)))
    scopes = addresses.scope_codes(hi, lo)
    iids = addresses.iid_class_codes(hi, lo, scopes)
    return (
        addresses.class_array(scopes, addresses.SCOPES).to_pylist(),
        addresses.class_array(iids, addresses.IID_CLASSES).to_pylist(),
    )


def test_scopes_and_classes_of_special_addresses() -> None:
    scopes, iids = classify([a for a, _, _ in CASES])
    assert list(zip(scopes, iids, strict=True)) == [(s, i) for _, s, i in CASES]


@pytest.mark.parametrize(("text", "expected"), IID_CASES)
def test_interface_id_classes(text: str, expected: str) -> None:
    assert classify([text])[1] == [expected]


def test_every_name_is_in_the_fixed_dictionary() -> None:
    assert len(set(addresses.SCOPES)) == len(addresses.SCOPES)
    assert {s for _, s, _ in CASES} <= set(addresses.SCOPES)
    scopes = addresses.class_array(np.array([0, 1], np.int8), addresses.SCOPES)
    assert scopes.dictionary.to_pylist() == list(addresses.SCOPES)


def test_octets_of_a_sliced_chunked_column() -> None:
    texts = ["2001:db8::1", "fe80::1", "ff02::2", "::1"]
    chunked = pa.chunked_array([column(texts[:2]), column(texts[2:])])
    assert addresses.octets(chunked).tobytes() == b"".join(ipaddress.IPv6Address(t).packed for t in texts)
    sliced = column(texts).slice(1, 2)
    assert addresses.octets(sliced).tobytes() == b"".join(ipaddress.IPv6Address(t).packed for t in texts[1:3])


def test_text_formats_each_distinct_address() -> None:
    texts = ["2001:db8::1", "2001:db8:0:0:1:0:0:1", "2001:db8::1", "::ffff:192.0.2.1"]
    assert addresses.text(column(texts)).to_pylist() == [str(ipaddress.IPv6Address(t)) for t in texts]


PREFIXES = [
    "::",
    "::ffff:0:0",
    "2001::",
    "2002::",
    "2001:db8::",
    "fc00::",
    "fe80::",
    "fec0::",
    "ff00::",
    "3fff::",
]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(PREFIXES), st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=60
    )
)
def test_agrees_with_the_standard_library(specs: list[tuple[str, int, int]]) -> None:
    values = []
    for prefix, noise, keep in specs:
        base = int(ipaddress.IPv6Address(prefix))
        values.append(ipaddress.IPv6Address(base | (noise >> keep) if keep else noise))
    hi, lo = addresses.words(addresses.octets(column([str(v) for v in values])))
    scopes = [addresses.SCOPES[c] for c in addresses.scope_codes(hi, lo)]
    for value, scope, top in zip(values, scopes, hi.tolist(), strict=True):
        assert (scope == "link-local") == value.is_link_local
        assert (scope == "site-local") == value.is_site_local
        assert scope.startswith("multicast-") == value.is_multicast
        assert (scope == "loopback") == value.is_loopback
        assert (scope == "unspecified") == value.is_unspecified
        assert (scope == "ipv4-mapped") == (value.ipv4_mapped is not None)
        assert (scope == "6to4") == (value.sixtofour is not None)
        assert (scope == "teredo") == (value.teredo is not None)
        assert top == int(value) >> 64
