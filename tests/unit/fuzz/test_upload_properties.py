"""Property tests of the upload stream handler: arbitrary sequences of Put streams (hostile headers,
chunks with gaps, overlaps, bad CRCs, huge offsets), GetOffsets and sweeps against the real
``UploadStore`` in a temporary data directory. ``fuzz.upload_harness`` checks after every step that
the outcome is a receipt or a refusal with a gRPC status, that nothing exists outside the places the
server makes, and after the case that the abandoned-part sweep empties ``receiving/``."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.upload_harness import (
    MAX_CHUNK_TAKE,
    MAX_FILE_BYTES,
    PCAP,
    PROBES,
    RAW,
    SEQUENCES,
    SETTINGS,
    Case,
    Chunk,
    Offset,
    Put,
    Sweep,
    UploadHarness,
    build_metadata,
    decode_case,
    encode_case,
    file_bytes,
)
from survey6.server.errors import UploadRejected
from survey6.wire.v1 import upload_pb2

u64 = st.integers(0, (1 << 64) - 1)
values = st.tuples(u64, u64, u64, u64) | st.just((0, 0, 0, 0))
chunks = st.builds(
    Chunk,
    source=st.integers(0, 5),
    length=st.integers(0, MAX_CHUNK_TAKE),
    delta=st.integers(0, 255),
    raw=st.binary(max_size=64),
    bad_crc=st.booleans(),
    with_header=st.booleans(),
).map(lambda c: c if c.source == RAW else dataclasses.replace(c, raw=b""))  # bytes only where they are read
common = {
    "caller": st.integers(0, len(PROBES) - 1),
    "file": st.integers(0, 2),
    "sequence": st.integers(0, len(SEQUENCES) - 1),
    "mutations": st.just(0) | st.integers(0, (1 << 14) - 1),
    "values": values,
}
steps = st.one_of(
    st.builds(
        Put,
        **common,
        start=st.integers(0, 5),
        start_value=u64,
        chunks=st.lists(chunks, max_size=8).map(tuple),
    ),
    st.builds(Offset, **common),
    st.builds(Sweep, aged=st.booleans()),
)
cases = st.builds(
    Case,
    files=st.lists(
        st.tuples(st.integers(0, MAX_FILE_BYTES), st.integers(0, 255)), min_size=1, max_size=3
    ).map(tuple),
    steps=st.lists(steps, min_size=1, max_size=8).map(tuple),
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UploadHarness]:
    made = UploadHarness(tmp_path_factory.mktemp("upload-fuzz"))
    yield made
    made.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_any_sequence_of_streams_ends_in_receipts_or_clean_refusals(
    harness: UploadHarness, case: Case
) -> None:
    harness.run(case)


@settings(max_examples=40, deadline=None)
@given(cases)
def test_the_byte_form_of_a_case_reads_back_the_same(case: Case) -> None:
    assert decode_case(encode_case(case)) == case


def test_a_whole_file_in_hostile_chunking_still_lands_intact(harness: UploadHarness) -> None:
    # Control: the checks can see success, so a run of refusals only is not mistaken for a pass.
    whole = tuple(Chunk(length=n) for n in (1, 0, 999, 1024, 1024))
    outcomes = harness.run(
        Case(((2900, 7),), (Put(chunks=whole[:2]), Put(chunks=whole[2:]), Put(chunks=whole)))
    )

    assert outcomes == ["DURABILITY_UNSPECIFIED", "DURABILITY_DURABLE", "DURABILITY_ALREADY_DURABLE"]


# -- findings, each fixed in the product (reproducers are in tests/data/fuzz/upload) ----------------


def test_a_partial_upload_with_a_long_sequence_is_swept(harness: UploadHarness) -> None:
    # Found by fuzzing: parts are named {sequence:012d}, so a sequence past 12 digits made a name the
    # sweep's pattern did not match, and the part stayed in receiving/ for ever.
    long_sequence = SEQUENCES.index(1_000_000_000_000)
    put = Put(sequence=long_sequence, chunks=(Chunk(length=10),))
    content = file_bytes(1000, 1)
    part = harness.layout.part(PROBES[0], SEQUENCES[long_sequence])

    receipt = harness.store.put(PROBES[0], iter(harness_stream(harness, put, content)))
    assert receipt.size_bytes == 10 and part.exists()
    removed = harness.store.remove_abandoned_parts(now=time.time() + 2 * SETTINGS.part_retention_s)

    assert removed == 1
    assert not part.exists() and not harness.layout.expect(PROBES[0], SEQUENCES[long_sequence]).exists()
    harness.reset()


@pytest.mark.parametrize("name", ["packets", "captured_bytes"])
def test_counts_the_registry_cannot_store_are_refused_before_anything_is_written(
    harness: UploadHarness, name: str
) -> None:
    # Found by fuzzing: accepted, then the catalog's insert overflowed and the stream failed INTERNAL.
    content = file_bytes(100, 3)
    metadata = build_metadata(Put(), content)
    setattr(metadata, name, 1 << 63)
    header = upload_pb2.UploadChunk(header=upload_pb2.UploadHeader(metadata=metadata))

    with pytest.raises(UploadRejected, match=f"{name} {1 << 63} is larger than"):
        harness.store.put(PROBES[0], iter([header]))

    assert not any(p.is_file() for p in harness.layout.receiving.rglob("*"))


def test_the_pcap_size_rule_still_holds_for_a_harness_metadata() -> None:
    content = file_bytes(64, 0)
    metadata = build_metadata(Put(mutations=PCAP), content)

    assert metadata.file_size_bytes == 24 + metadata.captured_bytes
    assert metadata.sha256_hex == hashlib.sha256(content).hexdigest()


def harness_stream(harness: UploadHarness, put: Put, content: bytes) -> list[upload_pb2.UploadChunk]:
    metadata = build_metadata(put, content)
    return list(harness._stream(put, PROBES[put.caller], content, metadata))


def test_corpus_directory_exists() -> None:
    assert (Path(__file__).resolve().parents[2] / "data" / "fuzz" / "upload").is_dir()
