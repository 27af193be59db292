"""The accounting audit in the web UI: /audit, /api/audit and the probe page show the CLI's numbers;
loss records reach the registry through the fleet's heartbeat handling, once each."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import func, select

from integration.web.webenv import WebEnv
from survey6.server import audit, catalog
from survey6.server.fleet import Fleet
from survey6.server.registry.models import SpoolLoss
from survey6.server.settings import LivenessSettings
from survey6.wire.v1 import capture_pb2, control_pb2


def spool_heartbeat(
    *, last_sealed: int, losses: list[control_pb2.SpoolLoss], recorded: int
) -> control_pb2.HeartbeatRequest:
    return control_pb2.HeartbeatRequest(
        software_version="test",
        capture_state=control_pb2.CAPTURE_STATE_STOPPED,
        spool=control_pb2.SpoolHealth(last_sealed_sequence=last_sealed, losses_recorded_total=recorded),
        losses=losses,
    )


def dropped(loss_id: int, sequence: int, packets: int) -> control_pb2.SpoolLoss:
    return control_pb2.SpoolLoss(
        id=loss_id,
        time_ns=1,
        kind="dropped-file",
        reason="spool full: dropped oldest file",
        sequence=sequence,
        packets=packets,
        interface="eth0",
        kernel_delta=capture_pb2.KernelCounters(received_packets=packets),
    )


def land(web_env: WebEnv, probe_id: str, sequence: int, packets: int, *, rows: int | None = None) -> None:
    metadata = capture_pb2.CaptureMetadata(
        sequence=sequence,
        packets=packets,
        interface=capture_pb2.InterfaceFacts(name="eth0"),
        kernel_delta=capture_pb2.KernelCounters(received_packets=packets),
    )
    with web_env.sessions.begin() as session:
        row = catalog.add_received(
            session, probe_id, metadata, sha256_hex="ab" * 32, size_bytes=100, landing_path="x"
        )
        catalog.mark_stored(session, row.id)
        catalog.set_state(session, probe_id, sequence, catalog.INGESTED)
        catalog.record_ingest_counts(
            session,
            probe_id,
            sequence,
            dataset_rows=packets if rows is None else rows,
            skipped_packets=0,
            quarantined_packets=None,
        )


def stored_losses(web_env: WebEnv, probe_id: str) -> int:
    with web_env.sessions() as session:
        query = select(func.count()).select_from(SpoolLoss).where(SpoolLoss.probe_id == probe_id)
        return int(session.scalar(query) or 0)


def test_losses_on_heartbeats_are_stored_once_and_acknowledged_after_the_write(web_env: WebEnv) -> None:
    probe_id = web_env.enrol("alpha")
    first = spool_heartbeat(last_sealed=3, losses=[dropped(1, 1, 5), dropped(2, 2, 5)], recorded=2)
    web_env.fleet.heartbeat(probe_id, first)
    # Not written yet: nothing may be acknowledged.
    assert web_env.fleet.losses_acknowledged(probe_id) == 0
    web_env.fleet.flush()
    assert web_env.fleet.losses_acknowledged(probe_id) == 2
    # The probe re-sends what it sent before the acknowledgement reached it: stored once.
    web_env.fleet.heartbeat(probe_id, first)
    web_env.fleet.flush()
    assert stored_losses(web_env, probe_id) == 2
    # A restarted server knows what it stored.
    restarted = Fleet(web_env.sessions, LivenessSettings(), web_env.clock)
    restarted.load()
    assert restarted.losses_acknowledged(probe_id) == 2
    restarted.heartbeat(probe_id, spool_heartbeat(last_sealed=3, losses=[dropped(2, 2, 5)], recorded=2))
    restarted.flush()
    assert stored_losses(web_env, probe_id) == 2
    # The health report kept for the pages does not carry the records.
    with web_env.sessions() as session:
        document = audit.audit_fleet(session, probe_id)
    assert document["probes"][0]["sequences"]["dropped_by_policy"] == [[1, 2]]


def test_the_audit_pages_show_the_clis_numbers(web_env: WebEnv, admin: tuple[FlaskClient, str]) -> None:
    client, _ = admin
    good = web_env.enrol("alpha")
    web_env.heartbeat(good)  # a probe page needs a heartbeat for its live facts; the spool comes next
    web_env.fleet.heartbeat(good, spool_heartbeat(last_sealed=3, losses=[dropped(1, 1, 4)], recorded=1))
    web_env.fleet.flush()
    land(web_env, good, 2, 7)
    land(web_env, good, 3, 6)
    bad = web_env.enrol("beta")
    web_env.fleet.heartbeat(bad, spool_heartbeat(last_sealed=3, losses=[], recorded=0))
    web_env.fleet.flush()
    land(web_env, bad, 1, 5)
    land(web_env, bad, 3, 5, rows=4)  # sequence 2 is a gap, and a row is missing

    with web_env.sessions() as session:
        expected = audit.audit_fleet(session)
    answer = client.get("/api/audit")
    assert answer.status_code == 200
    served = answer.get_json()
    assert {k: v for k, v in served.items() if k != "generated_at"} == {
        k: v for k, v in expected.items() if k != "generated_at"
    }
    assert served["exit_code"] == audit.EXIT_IDENTITY_FAILS
    one = client.get(f"/api/audit?probe={good}").get_json()
    assert [p["probe_id"] for p in one["probes"]] == [good] and one["ok"]
    assert client.get("/api/audit?probe=p-000000000000").status_code == 404

    page = client.get("/audit").get_data(as_text=True)
    assert f'data-exit-code="{audit.EXIT_IDENTITY_FAILS}"' in page
    assert f'data-probe="{good}" data-ok="true"' in page and f'data-probe="{bad}" data-ok="false"' in page
    bad_part = page[page.index(f'data-probe="{bad}"') :]
    assert re.search(r'data-sequences="gaps">2<', bad_part)
    assert re.search(r'data-identity="landed" data-holds="false"', bad_part)

    detail = client.get(f"/probes/{good}").get_data(as_text=True)
    assert 'id="accounting"' in detail and f'data-probe="{good}" data-ok="true"' in detail
    assert re.search(r'data-sequences="dropped_by_policy">1<', detail)
    assert re.search(r'data-term="lost_dropped_files">4<', detail)


def test_the_audit_needs_a_login(web_env: WebEnv, viewer: tuple[FlaskClient, str]) -> None:
    anonymous = web_env.client()
    assert anonymous.get("/api/audit").status_code == 401
    assert anonymous.get("/audit").status_code in (302, 303)
    client, _ = viewer
    assert client.get("/audit").status_code == 200


def test_the_report_is_computed_again_only_once_it_is_older_than_the_cache_time(
    web_env: WebEnv, admin: tuple[FlaskClient, str]
) -> None:
    client, _ = admin
    probe_id = web_env.enrol("alpha")
    web_env.fleet.heartbeat(probe_id, spool_heartbeat(last_sealed=2, losses=[], recorded=0))
    web_env.fleet.flush()
    land(web_env, probe_id, 1, 5)
    web_env.app.config["SURVEY6_AUDIT_CACHE_S"] = 3600.0
    first = client.get("/api/audit").get_json()
    land(web_env, probe_id, 2, 5)
    assert client.get("/api/audit").get_json() == first  # served again, not recomputed
    web_env.app.config["SURVEY6_AUDIT_CACHE_S"] = 0.0
    fresh = client.get("/api/audit").get_json()
    assert fresh["probes"][0]["sequences"]["landed"] == [[1, 2]]
