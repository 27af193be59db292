"""The upload functions called directly (no gRPC) against a real registry: what a crash leaves behind."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from support.fleet_processes import wait_for
from support.upload_client import header, make_capture, stream
from survey6.server import catalog
from survey6.server.errors import OffsetMismatch, UploadCorrupt, UploadForbidden, UploadRejected
from survey6.server.registry import db
from survey6.server.registry.models import Probe, utcnow
from survey6.server.settings import UploadSettings
from survey6.server.uploads import Layout, UploadStore
from survey6.wire.v1 import upload_pb2

PROBE_ID = "p-0123456789ab"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(db.sqlite_url(tmp_path))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory.begin() as session:
        session.add(Probe(id=PROBE_ID, hostname="h", cert_serial="1", cert_not_after=utcnow()))
    yield factory
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path, sessions: sessionmaker[Session]) -> UploadStore:
    layout = Layout(receiving=tmp_path / "receiving", landing=tmp_path / "landing")
    layout.create()
    return UploadStore(sessions, layout, UploadSettings())


def test_errors_carry_their_cause_and_the_expected_offset(store: UploadStore) -> None:
    capture = make_capture(1)
    capture.metadata.schema_version = 9
    with pytest.raises(UploadRejected) as rejected:
        store.put(PROBE_ID, stream(capture))
    assert rejected.value.__cause__ is not None  # the MetadataError it came from
    capture = make_capture(1)
    store.put(PROBE_ID, stream(capture, 0, 100))
    with pytest.raises(OffsetMismatch) as mismatch:
        store.put(PROBE_ID, stream(capture, 50))
    assert mismatch.value.expected_offset_bytes == 100
    capture.metadata.probe_id = "p-someoneelse"
    with pytest.raises(UploadForbidden):
        store.put(PROBE_ID, stream(capture, 100))


def test_a_file_moved_into_landing_before_the_crash_is_found_stored(
    store: UploadStore, sessions: sessionmaker[Session]
) -> None:
    capture = make_capture(1)
    assert store.put(PROBE_ID, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE
    with sessions.begin() as session:  # the crash came before the row was marked stored
        catalog.set_state(session, PROBE_ID, 1, catalog.RECEIVED)

    assert store.recover() == 1

    with sessions() as session:
        row = catalog.find(session, PROBE_ID, 1)
        assert row is not None and row.state == catalog.STORED


def test_a_file_not_moved_before_the_crash_is_resumed_by_the_probe(
    store: UploadStore, sessions: sessionmaker[Session]
) -> None:
    capture = make_capture(2)
    size = len(capture.data)
    store.put(PROBE_ID, stream(capture, 0, size - 1))
    with open(store.layout.part(PROBE_ID, 2), "ab") as part:  # the last chunk was written...
        part.write(capture.data[-1:])
    with sessions.begin() as session:  # ...and the row added, then the process died
        catalog.add_received(
            session,
            PROBE_ID,
            capture.metadata,
            sha256_hex=capture.sha256_hex,
            size_bytes=size,
            landing_path=Layout.landing_relative(PROBE_ID, 2, dt.date(2024, 5, 6)),
        )

    assert store.recover() == 1

    with sessions() as session:
        assert catalog.find(session, PROBE_ID, 2) is None
    offset = store.get_offset(PROBE_ID, upload_pb2.OffsetRequest(
        sequence=2, sha256_hex=capture.sha256_hex, file_size_bytes=size))  # fmt: skip
    assert offset.offset_bytes == size and not offset.HasField("receipt")
    receipt = store.put(PROBE_ID, [header(capture, size)])  # nothing left to send: it lands
    assert receipt.durability == upload_pb2.DURABILITY_DURABLE
    assert (store.layout.landing / PROBE_ID / "2024/05/06/000000000002.pcap").read_bytes() == capture.data


def test_a_damaged_landed_file_is_not_taken_as_stored(
    store: UploadStore, sessions: sessionmaker[Session]
) -> None:
    capture = make_capture(3)
    store.put(PROBE_ID, stream(capture))
    with sessions.begin() as session:
        catalog.set_state(session, PROBE_ID, 3, catalog.RECEIVED)
    landed = store.layout.landing / PROBE_ID / "2024/05/06/000000000003.pcap"
    landed.write_bytes(capture.data[:-10])

    store.recover()

    with sessions() as session:
        assert catalog.find(session, PROBE_ID, 3) is None
    assert store.put(PROBE_ID, stream(capture)).durability == upload_pb2.DURABILITY_DURABLE
    assert landed.read_bytes() == capture.data


def test_a_sha256_mismatch_names_both_hashes(store: UploadStore) -> None:
    capture = make_capture(4)
    capture.metadata.sha256_hex = "0" * 64
    with pytest.raises(UploadCorrupt, match="sha256 mismatch.*resend from offset 0"):
        store.put(PROBE_ID, stream(capture))
    assert not store.layout.part(PROBE_ID, 4).exists()
    assert not store.layout.expect(PROBE_ID, 4).exists()


def test_a_resumed_upload_hashes_the_prefix_the_server_holds(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """The sha256 is computed as chunks arrive; a resumed stream hashes the held prefix from the disk
    first, so a prefix damaged between the streams is caught, and one intact across a restart lands."""
    layout = Layout(receiving=tmp_path / "receiving", landing=tmp_path / "landing")
    layout.create()
    settings = UploadSettings(writeback_bytes=64 << 10)  # the writeback path, every 64 KiB
    store = UploadStore(sessions, layout, settings)
    good, bad = make_capture(10, packets=400), make_capture(11, packets=400)
    half = len(good.data) // 2
    store.put(PROBE_ID, stream(good, 0, half))
    store.put(PROBE_ID, stream(bad, 0, half))
    with open(layout.part(PROBE_ID, 11), "r+b") as part:
        part.seek(1000)
        part.write(bytes([bad.data[1000] ^ 0xFF]))

    restarted = UploadStore(sessions, layout, settings)
    assert restarted.put(PROBE_ID, stream(good, half)).durability == upload_pb2.DURABILITY_DURABLE
    assert (layout.landing / PROBE_ID / "2024/05/06/000000000010.pcap").read_bytes() == good.data
    with pytest.raises(UploadCorrupt, match="sha256 mismatch"):
        restarted.put(PROBE_ID, stream(bad, half))
    assert not layout.part(PROBE_ID, 11).exists()


def test_abandoned_parts_go_after_their_retention_but_not_while_resumed(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    layout = Layout(receiving=tmp_path / "receiving", landing=tmp_path / "landing")
    layout.create()
    store = UploadStore(sessions, layout, UploadSettings(part_retention_s=3600))
    old, recent, resumed = make_capture(20), make_capture(21), make_capture(22)
    for capture in (old, recent, resumed):
        store.put(PROBE_ID, stream(capture, 0, 5000))
    two_hours_ago = time.time() - 7200
    for sequence in (20, 22):
        os.utime(layout.part(PROBE_ID, sequence), (two_hours_ago, two_hours_ago))
    orphan = layout.expect(PROBE_ID, 23)  # a crash between the .expect.json and its part
    orphan.write_text("{}")
    os.utime(orphan, (two_hours_ago, two_hours_ago))

    # File 22 is being resumed right now: its stream holds the file until it ends.
    release = threading.Event()

    def resuming() -> Iterator[upload_pb2.UploadChunk]:
        yield header(resumed, 5000)
        release.wait(30)

    receiver = threading.Thread(target=lambda: store.put(PROBE_ID, resuming()), daemon=True)
    receiver.start()
    wait_for(lambda: (PROBE_ID, 22) in store._busy, 10, "the resumed stream to hold file 22")
    try:
        assert store.remove_abandoned_parts() == 1
    finally:
        release.set()
        receiver.join(timeout=30)

    assert not layout.part(PROBE_ID, 20).exists() and not layout.expect(PROBE_ID, 20).exists()
    assert not orphan.exists()
    offsets = {
        c.metadata.sequence: store.get_offset(PROBE_ID, c.offset_request()).offset_bytes
        for c in (old, recent, resumed)
    }
    assert offsets == {20: 0, 21: 5000, 22: 5000}  # the probes of 21 and 22 keep their offsets
    assert store.put(PROBE_ID, stream(old)).durability == upload_pb2.DURABILITY_DURABLE
    assert store.remove_abandoned_parts(now=time.time() + 7200) == 2  # nobody came back for 21, 22
