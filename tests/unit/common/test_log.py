from __future__ import annotations

import io
import json
import logging

from survey6.common.log import configure_logging
from survey6.common.settings import LoggingSettings


def test_json_records_carry_extra_fields_and_exceptions() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="DEBUG", format="json"), stream=stream)
    log = logging.getLogger("survey6.test")
    log.info("sealed %s", "f.pcap", extra={"sequence": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "sealed f.pcap"
    assert first["level"] == "info" and first["logger"] == "survey6.test" and first["sequence"] == 7
    assert first["ts"].endswith("Z")
    assert "ValueError: boom" in second["exc"]


def test_text_format_and_level_filtering() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="WARNING", format="text"), stream=stream)
    log = logging.getLogger("survey6.test")
    log.info("hidden")
    log.warning("shown", extra={"probe_id": "p1"})
    out = stream.getvalue()
    assert "hidden" not in out
    assert "WARNING survey6.test: shown probe_id=p1" in out
