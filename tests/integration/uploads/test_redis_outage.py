"""Redis away: files still land and wait in the catalog's outbox; when it returns each is queued once."""

from __future__ import annotations

import logging
import time

import pytest

from support.fleet_processes import wait_for
from support.redis_server import RedisServer
from support.upload_client import ProbeIdentity, UploadServer, make_capture, put, stream
from survey6.server.queue import job_id_for
from survey6.wire.v1 import upload_pb2, upload_pb2_grpc

DRAIN_ROUNDS_S = 1.0  # several drain intervals of the test server


def outage_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == "survey6.server.queue" and r.levelno == logging.WARNING)


def test_files_wait_in_the_outbox_while_redis_is_down(
    server: UploadServer,
    probe: ProbeIdentity,
    upload: upload_pb2_grpc.UploadStub,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="survey6.server.queue")
    redis_server.stop()
    for sequence in (1, 2, 3):
        receipt = put(upload, stream(make_capture(sequence)))
        assert receipt.durability == upload_pb2.DURABILITY_DURABLE  # landing does not need Redis
    time.sleep(DRAIN_ROUNDS_S)
    states = [server.state(probe.probe_id, s) for s in (1, 2, 3)]
    assert states == ["stored"] * 3
    assert outage_warnings(caplog) == 1  # once per outage, not every round

    redis_server.start()

    wait_for(
        lambda: all(server.state(probe.probe_id, s) == "queued" for s in (1, 2, 3)),
        15,
        "every stored file to be queued",
    )
    assert sorted(server.queue().job_ids) == sorted(job_id_for(probe.probe_id, s) for s in (1, 2, 3))
    assert any("reachable again" in r.getMessage() for r in caplog.records)

    # A second outage is reported again, once.
    redis_server.stop()
    put(upload, stream(make_capture(4)))
    time.sleep(DRAIN_ROUNDS_S)
    assert outage_warnings(caplog) == 2
    redis_server.start()
    wait_for(lambda: server.state(probe.probe_id, 4) == "queued", 15, "file 4 to be queued")
    assert len(server.queue().job_ids) == 1  # Redis kept nothing (no persistence): only the new job
