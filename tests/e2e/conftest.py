"""Options of the end-to-end tests: the long soak runs through them (see docs/RELIABILITY.md).

pytest tests/e2e/test_soak.py --soak-minutes 30 --soak-seed 7 --soak-report soak.json
"""

from __future__ import annotations

import pytest

SHORT_RUN_TIMEOUT_S = 900.0  # the short run takes about 5 minutes, under load; its traffic may run late
# Past the traffic: start-up, delivery of every spool and ingest of every file (see soak/runner.py).
LONG_RUN_EXTRA_TIMEOUT_S = 1500.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soak", "the soak and fault-injection scenario (tests/e2e/test_soak.py)")
    group.addoption(
        "--soak-minutes",
        type=float,
        default=None,
        help="minutes of traffic for the soak (default: the short run, each fault kind once)",
    )
    group.addoption("--soak-seed", type=int, default=7, help="seed of the soak's fault schedule (default 7)")
    group.addoption("--soak-report", default=None, help="also write the soak's JSON report to this file")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The soak's time limit follows its length: longer than the suite's default for every run."""
    minutes = config.getoption("--soak-minutes", default=None)
    limit = SHORT_RUN_TIMEOUT_S if minutes is None else minutes * 60 + LONG_RUN_EXTRA_TIMEOUT_S
    for item in items:
        if item.path.name == "test_soak.py":
            item.add_marker(pytest.mark.timeout(limit))
