"""Fuzz entry points: one function per target, taking the fuzzer's bytes.

Each function returns normally for every input the product handles as designed (a parsed file, or
the product's own refusal) and raises ``AssertionError`` — or lets an unexpected exception escape —
for a finding. The atheris harnesses (``fuzz_*.py``), the corpus replay and the property tests all
call these, so a reproducer found by one is a regression test for all.

- ``pcap_one``: the aggregator's parse → enrich path over bytes in memory, as ``pipeline.ingest_file``
  drives it. ``ParseError`` means "quarantine this file"; anything else escaping is a finding.
- ``metadata_one``: the bytes as a sidecar file, read by the aggregator's and the probe's readers.
  ``MetadataError`` is the only refusal; accepted metadata must survive a round trip and fit the
  registry's and ledger's signed 64-bit integers.
- ``upload_one``: see ``upload_harness``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from survey6.aggregator.enrich import enrich
from survey6.aggregator.enrich import read_sidecar as aggregator_read_sidecar
from survey6.aggregator.errors import ParseError
from survey6.aggregator.parse import ParseResult, parse_bytes
from survey6.common.capture_metadata import from_json, to_json
from survey6.common.errors import MetadataError
from survey6.probe.metadata import read_sidecar as probe_read_sidecar
from survey6.wire.v1 import capture_pb2

SMALL_CHUNK_PACKETS = 3  # a second parse in tiny chunks must give the same rows
MAX_SIGNED_64 = (1 << 63) - 1  # SQLite INTEGER and the registry's BigInteger columns


def pcap_one(data: bytes) -> ParseResult | None:
    """Parses and enriches a capture; None when it is refused as unreadable (``ParseError``)."""
    try:
        result = parse_bytes(data, source="fuzz")
    except ParseError as exc:
        assert str(exc).startswith("fuzz: "), exc  # the one-line reason names the file
        return None
    stats = result.stats
    assert stats.file_format in ("pcap", "pcapng")
    assert result.table.num_rows == stats.ipv6_packets
    assert stats.packets == stats.ipv6_packets + stats.skipped_packets, stats
    assert 0 <= stats.unparsed_bytes <= len(data)
    for name in ("incomplete_chain_rows", "truncated_l4_rows"):
        assert 0 <= getattr(stats, name) <= stats.ipv6_packets, (name, stats)
    assert stats.dns_messages + stats.malformed_dns_messages <= stats.ipv6_packets, stats
    chunked = parse_bytes(data, source="fuzz", chunk_packets=SMALL_CHUNK_PACKETS)
    assert chunked.table.equals(result.table), "rows depend on the chunk size"
    assert chunked.stats == stats, (chunked.stats, stats)
    enriched = enrich(result, None, address_text=True)
    assert enriched.num_rows == stats.ipv6_packets
    return result


class _SidecarDir:
    """One temporary directory per process where each input is written as ``capture.json``."""

    directory: Path | None = None

    @classmethod
    def capture(cls) -> Path:
        if cls.directory is None:
            cls.directory = Path(tempfile.mkdtemp(prefix="survey6-fuzz-metadata-"))
            atexit.register(shutil.rmtree, cls.directory, ignore_errors=True)
        return cls.directory / "capture.pcap"


def metadata_one(data: bytes) -> capture_pb2.CaptureMetadata | None:
    """Reads ``data`` as a sidecar with both readers; the metadata, or None when refused."""
    capture = _SidecarDir.capture()
    sidecar = capture.with_suffix(".json")
    sidecar.write_bytes(data)
    results: list[capture_pb2.CaptureMetadata | None] = []
    for read in (aggregator_read_sidecar, probe_read_sidecar):
        try:
            metadata = read(capture if read is aggregator_read_sidecar else sidecar)
        except MetadataError as exc:
            assert "\n" not in str(exc), f"a refusal must be one line: {exc!r}"
            results.append(None)
            continue
        assert metadata is not None
        results.append(metadata)
    aggregator, probe = results
    assert (aggregator is None) == (probe is None), "the aggregator and the probe disagree"
    if aggregator is None:
        return None
    assert aggregator == probe
    _check_accepted(aggregator)
    return aggregator


def _check_accepted(metadata: capture_pb2.CaptureMetadata) -> None:
    # The registry (catalog) and the aggregator's ledger store these as signed 64-bit integers.
    for name in ("sequence", "packets", "captured_bytes", "file_size_bytes"):
        assert 0 <= getattr(metadata, name) <= MAX_SIGNED_64, (name, getattr(metadata, name))
    again = from_json(to_json(metadata))
    assert again == metadata, "the JSON round trip changed the metadata"
    json.loads(to_json(metadata))  # what the server stores next to a landed file is plain JSON
    assert len(metadata.sha256_hex) == len(hashlib.sha256().hexdigest())
