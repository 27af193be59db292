from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fleet_processes import ProbeAgent, ServerProcess

# Short liveness thresholds so that state changes happen within a test's patience.
FAST_LIVENESS = {"heartbeat_interval_s": 0.5, "stale_after_s": 1.5, "offline_after_s": 3.0,
                 "write_behind_interval_s": 0.3}  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, **FAST_LIVENESS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[ProbeAgent]]:
    """Probe agents a test creates; killed at the end whatever happened."""
    created: list[ProbeAgent] = []
    yield created
    for agent in created:
        agent.cleanup()
