"""What every atheris harness shares: the import path, instrumentation of the project, and the run.

A harness is ``tests/fuzz/fuzz_<target>.py``; it names its target and calls ``run``. libFuzzer's own
flags pass through (``-max_total_time=600``, ``-timeout=10``, ``-rss_limit_mb=2048``) and so do its
corpus directories: the first one is where new inputs are kept.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # run as a script: tests/ makes `fuzz.targets` importable
    sys.path.insert(0, str(TESTS_DIR))


def run(module_name: str, target_name: str, argv: list[str]) -> None:
    """Instruments the project and fuzzes ``fuzz.<module_name>.<target_name>`` with libFuzzer."""
    import importlib

    import atheris  # type: ignore[import-untyped]  # no stubs; only this module touches it

    with atheris.instrument_imports(include=["survey6", "fuzz"]):
        module = importlib.import_module(f"fuzz.{module_name}")

    target: Callable[[bytes], object] = getattr(module, target_name)

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
