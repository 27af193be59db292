"""Property tests of the sidecar readers on nearly valid metadata JSON: read by the aggregator and
the probe alike, accepted with values the registry and ledger can store, or refused with a one-line
``MetadataError`` — never another exception (``fuzz.targets.metadata_one`` checks all of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import metadata_one
from survey6.aggregator.enrich import read_sidecar
from survey6.common.capture_metadata import MAX_STORED_INT, from_json, to_json
from survey6.common.errors import MetadataError

CORPUS = Path(__file__).resolve().parents[2] / "data" / "fuzz" / "metadata"
VALID = json.loads((CORPUS / "seed-valid-pcap.json").read_text())
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([MAX_STORED_INT, MAX_STORED_INT + 1, (1 << 64) - 1, 1 << 64, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["NaN", "Infinity", "-0", "1e400", "0x10", "\ud7ff\u202e", "\x00"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@st.composite
def sidecars(draw: st.DrawFn) -> bytes:
    """The valid sidecar with some fields replaced, removed or added, some nested values too."""
    document: dict[str, Any] = json.loads(json.dumps(VALID))
    for name in draw(st.lists(st.sampled_from(sorted(VALID) + ["unknown_field", "probeId"]), max_size=4)):
        action = draw(st.sampled_from(["replace", "remove", "nested"]))
        if action == "remove":
            document.pop(name, None)
        elif action == "nested" and isinstance(document.get(name), dict):
            inner = document[name]
            inner[draw(st.sampled_from(sorted(inner) or ["x"]))] = draw(hostile_values)
        else:
            document[name] = draw(hostile_values)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()), allow_nan=True)
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    return text.encode(encoding, "surrogatepass" if encoding != "latin-1" else "replace")


@FAST
@given(sidecars())
def test_nearly_valid_sidecars_are_read_or_refused_cleanly(data: bytes) -> None:
    metadata_one(data)


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused_cleanly(data: bytes) -> None:
    metadata_one(data)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 200_000), st.sampled_from(["[", '{"labels":', '{"a":[']))
def test_deep_nesting_is_refused_cleanly(depth: int, opener: str) -> None:
    assert metadata_one((opener * depth).encode()) is None


# -- findings, each fixed in the product (reproducers are in tests/data/fuzz/metadata) -------------


def test_a_sidecar_that_is_not_utf8_is_a_metadata_error_for_the_aggregator(tmp_path: Path) -> None:
    # Found by fuzzing: read_text raised UnicodeDecodeError, which the pipeline does not quarantine.
    (tmp_path / "000000000001.json").write_bytes(b"\xff\xfe{}")

    with pytest.raises(MetadataError, match="not valid capture metadata") as caught:
        read_sidecar(tmp_path / "000000000001.pcap")

    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_an_unknown_field_is_refused_in_one_line() -> None:
    # Found by fuzzing: protobuf appends the list of every field on a second line.
    text = json.dumps({**VALID, "win$ow_end_ns": 1})

    with pytest.raises(MetadataError) as caught:
        from_json(text, "x.json")

    assert "\n" not in str(caught.value)
    assert 'no field named "win$ow_end_ns"' in str(caught.value)


def test_a_refusal_quoting_a_huge_value_stays_short() -> None:
    with pytest.raises(MetadataError) as caught:
        from_json(json.dumps({**VALID, "x" * 100_000: 1}), "x.json")

    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("name", ["sequence", "packets", "captured_bytes", "file_size_bytes"])
def test_counts_past_signed_64_bits_are_refused(name: str) -> None:
    # Found by fuzzing: accepted, then the registry or the ledger failed to store them (OverflowError).
    document = {**VALID, name: str(MAX_STORED_INT + 1)}

    with pytest.raises(MetadataError, match=f"{name} {MAX_STORED_INT + 1} is larger than"):
        from_json(json.dumps(document), "x.json")


def test_the_largest_storable_sequence_is_accepted() -> None:
    metadata = from_json(json.dumps({**VALID, "sequence": str(MAX_STORED_INT)}), "x.json")

    assert metadata.sequence == MAX_STORED_INT
    assert from_json(to_json(metadata)) == metadata
