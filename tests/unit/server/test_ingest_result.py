"""Worker results are checked before they reach the catalog: one bad message must not block the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from survey6.server.queue import IngestResult


def message(**changes: Any) -> bytes:
    data: dict[str, Any] = {
        "probe_id": "p-0a1b2c3d4e5f",
        "sequence": 7,
        "sha256_hex": "ab" * 32,
        "state": "ingested",
        "detail": "",
        "packets": 5,
        "rows": 4,
        "skipped": 1,
    }
    data.update(changes)
    return json.dumps(data).encode()


def test_a_well_formed_result_is_read() -> None:
    result = IngestResult.from_message(message(claimed_packets=2**63 - 1))
    assert (result.sequence, result.rows, result.skipped, result.claimed_packets) == (7, 4, 1, 2**63 - 1)


@pytest.mark.parametrize(
    "changes",
    [
        {"rows": -1},
        {"skipped": 2**63},
        {"claimed_packets": 2**64},
        {"packets": -5},
        {"sequence": 2**70},
    ],
)
def test_counts_outside_the_catalogs_columns_are_malformed(changes: dict[str, Any]) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=f"{name} .* is out of range"):
        IngestResult.from_message(message(**changes))
