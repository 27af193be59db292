"""Parsed packets + the file's capture metadata → the enriched packet table (``schema.ENRICHED_SCHEMA``).

The metadata (probe id, labels, interface, sequence) becomes constant columns; each address gets its
scope, interface-ID class and /48 and /64 keys (``addresses``). Everything is whole-column work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from survey6.aggregator import addresses
from survey6.aggregator.parse import ParseResult, ParseStats, parse_file
from survey6.aggregator.schema import ADDRESS_TEXT_FIELDS, ENRICHED_SCHEMA, LABELS_TYPE
from survey6.common import capture_metadata
from survey6.wire.v1 import capture_pb2

PREFIX48_SHIFT_BITS = 16  # the /48 key is the top 48 bits of the /64 key, right-aligned


@dataclass(frozen=True)
class EnrichedCapture:
    table: pa.Table  # ENRICHED_SCHEMA (+ ADDRESS_TEXT_FIELDS when asked for)
    stats: ParseStats
    metadata: capture_pb2.CaptureMetadata | None


def sidecar_path(capture: str | os.PathLike[str]) -> Path:
    """``<sequence>.pcap`` → ``<sequence>.json``, as the probe's spool and the landing zone name them."""
    return Path(capture).with_suffix(capture_metadata.SIDECAR_SUFFIX)


def read_sidecar(capture: str | os.PathLike[str]) -> capture_pb2.CaptureMetadata | None:
    """The capture's validated sidecar, or None when it has none.

    Raises:
        MetadataError: the sidecar exists but is not valid capture metadata.
    """
    path = sidecar_path(capture)
    try:
        data = path.read_bytes()  # decoded by from_json: bytes that are not UTF-8 are a MetadataError
    except FileNotFoundError:
        return None
    return capture_metadata.from_json(data, source=str(path))


def enrich_file(
    path: str | os.PathLike[str],
    metadata: capture_pb2.CaptureMetadata | None = None,
    *,
    address_text: bool = False,
) -> EnrichedCapture:
    """Parses a capture and enriches it with ``metadata``, or with its sidecar when none is given.

    Raises:
        ParseError: the capture cannot be parsed.
        MetadataError: its sidecar is invalid.
    """
    if metadata is None:
        metadata = read_sidecar(path)
    result = parse_file(path)
    return EnrichedCapture(enrich(result, metadata, address_text=address_text), result.stats, metadata)


def enrich(
    result: ParseResult,
    metadata: capture_pb2.CaptureMetadata | None = None,
    *,
    address_text: bool = False,
) -> pa.Table:
    """Adds metadata, address-class and prefix columns to parsed packets.

    Args:
        result: what ``parse_file`` returned.
        metadata: the file's capture metadata; without it probe id and interface name are "", labels
            empty and the sequence 0.
        address_text: also add ``src_text``/``dst_text`` (RFC 5952 strings; costs one string per
            distinct address).
    """
    table = result.table
    n = table.num_rows
    columns = {name: table.column(name) for name in table.column_names}
    columns.update(_metadata_columns(result, metadata, n))
    for side in ("src", "dst"):
        hi, lo = addresses.words(addresses.octets(table.column(side)))
        scopes = addresses.scope_codes(hi, lo)
        columns[f"{side}_scope"] = addresses.class_array(scopes, addresses.SCOPES)
        columns[f"{side}_iid_class"] = addresses.class_array(
            addresses.iid_class_codes(hi, lo, scopes), addresses.IID_CLASSES
        )
        columns[f"{side}_prefix48"] = pa.array(hi >> np.uint64(PREFIX48_SHIFT_BITS), pa.uint64())
        columns[f"{side}_prefix64"] = pa.array(hi, pa.uint64())
    schema = ENRICHED_SCHEMA
    if address_text:
        for text_field in ADDRESS_TEXT_FIELDS:
            columns[text_field.name] = addresses.text(table.column(text_field.name.removesuffix("_text")))
        schema = pa.schema(list(ENRICHED_SCHEMA) + ADDRESS_TEXT_FIELDS)
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


def _metadata_columns(
    result: ParseResult, metadata: capture_pb2.CaptureMetadata | None, n: int
) -> dict[str, pa.Array]:
    meta = metadata or capture_pb2.CaptureMetadata()
    # pcapng names its interfaces itself; a pcap's only name is the one the probe recorded.
    names = [iface.name or meta.interface.name for iface in result.interfaces] or [meta.interface.name]
    interface_index = (
        result.table.column("interface_index").combine_chunks() if n else pa.array([], pa.int32())
    )
    return {
        "probe_id": _constant(meta.probe_id, pa.string(), n),
        "labels": _constant(sorted(meta.labels.items()), LABELS_TYPE, n),
        "interface_name": pa.array(names, pa.string()).take(interface_index),
        "sequence": _constant(meta.sequence, pa.uint64(), n),
    }


def _constant(value: object, kind: pa.DataType, n: int) -> pa.Array:
    # take() rather than pa.repeat(): repeat refuses a map value for an empty column.
    return pa.array([value], kind).take(pa.array(np.zeros(n, np.int32)))
