"""The accounting identity (survey6.server.audit) on registry rows in a real temporary SQLite registry."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from survey6.server import audit, catalog
from survey6.server.errors import UnknownProbeError
from survey6.server.registry.models import Probe, SpoolLoss, utcnow
from survey6.wire.v1 import capture_pb2

PROBE = "p-0a1b2c3d4e5f"


def add_probe(
    session: Session,
    *,
    last_sealed: int = 0,
    backlog_first: int = 0,
    capturing: bool = False,
    losses_recorded: int = 0,
    probe_id: str = PROBE,
) -> None:
    spool = {
        "last_sealed_sequence": str(last_sealed),
        "backlog_first_sequence": str(backlog_first),
        "losses_recorded_total": str(losses_recorded),
    }
    state = "CAPTURE_STATE_CAPTURING" if capturing else "CAPTURE_STATE_STOPPED"
    session.add(
        Probe(
            id=probe_id,
            hostname="probe-1",
            cert_serial=probe_id,
            cert_not_after=utcnow(),
            last_health={"capture_state": state, "spool": spool},
            state="online",
        )
    )
    session.flush()


def add_file(
    session: Session,
    sequence: int,
    packets: int,
    *,
    received: int | None = None,
    dropped: int = 0,
    interface: str = "eth0",
    repaired: bool = False,
    truncated_bytes: int = 0,
    state: str = catalog.INGESTED,
    rows: int | None = None,
    skipped: int = 0,
    quarantined: int | None = None,
    probe_id: str = PROBE,
) -> None:
    """A file landed through the catalog as the upload path records it, then its ingest result."""
    metadata = capture_pb2.CaptureMetadata(
        sequence=sequence,
        packets=packets,
        interface=capture_pb2.InterfaceFacts(name=interface),
        kernel_delta=capture_pb2.KernelCounters(
            received_packets=packets + dropped if received is None else received, dropped_packets=dropped
        ),
        repaired=repaired,
        repaired_truncated_bytes=truncated_bytes,
    )
    row = catalog.add_received(
        session, probe_id, metadata, sha256_hex="a" * 64, size_bytes=100, landing_path="x"
    )
    catalog.mark_stored(session, row.id)
    if state != catalog.STORED:
        catalog.set_state(session, probe_id, sequence, state)
    if state == catalog.INGESTED:
        catalog.record_ingest_counts(
            session,
            probe_id,
            sequence,
            dataset_rows=packets - skipped if rows is None else rows,
            skipped_packets=skipped,
            quarantined_packets=None,
        )
    elif quarantined is not None:
        catalog.record_ingest_counts(
            session,
            probe_id,
            sequence,
            dataset_rows=None,
            skipped_packets=None,
            quarantined_packets=quarantined,
        )


def add_loss(session: Session, loss_id: int, kind: str, packets: int, **fields: Any) -> None:
    values: dict[str, Any] = {"time_ns": 1, "reason": kind, "interface": "eth0", "repaired": False}
    values.update(fields)
    session.add(SpoolLoss(probe_id=PROBE, loss_id=loss_id, kind=kind, packets=packets, **values))


def run(sessions: sessionmaker[Session], probe_id: str | None = None) -> dict[str, Any]:
    with sessions() as session:
        return audit.audit_fleet(session, probe_id)


def only_probe(document: dict[str, Any]) -> dict[str, Any]:
    assert len(document["probes"]) == 1
    probe: dict[str, Any] = document["probes"][0]
    return probe


def identity(probe: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(i for i in probe["identities"] if i["name"] == name)
    return found


def test_a_clean_probe_balances_with_carry_over_inside_a_run(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=3)
        # The ring carried 2 packets of file 1's window into file 2: per file the counts differ.
        add_file(session, 1, 8, received=10)
        add_file(session, 2, 7, received=5)
        add_file(session, 3, 4, received=4, skipped=1)
    document = run(sessions)
    probe = only_probe(document)
    assert document["exit_code"] == audit.EXIT_OK and document["ok"] and probe["ok"]
    assert probe["sequences"]["landed"] == [[1, 3]] and probe["sequences"]["gaps"] == []
    kernel = identity(probe, "kernel")
    assert kernel["holds"] and (kernel["left"], kernel["right"]) == (19, 19)
    assert [r["status"] for r in kernel["runs"]] == ["holds"]
    assert probe["terms"]["dataset_rows"] == 18 and probe["terms"]["skipped_by_parser"] == 1
    assert identity(probe, "landed")["holds"] and identity(probe, "written")["holds"]


def test_dropped_files_are_recorded_losses_not_gaps(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=4, losses_recorded=2)
        for loss_id, sequence in ((1, 1), (2, 2)):
            add_loss(
                session, loss_id, "dropped-file", 5, sequence=sequence, kernel_received=5, kernel_dropped=0
            )
        add_file(session, 3, 5)
        add_file(session, 4, 5)
    probe = only_probe(run(sessions))
    assert probe["ok"]
    assert probe["sequences"]["dropped_by_policy"] == [[1, 2]] and probe["sequences"]["gaps"] == []
    assert probe["terms"]["lost_dropped_files"] == 10 and probe["terms"]["losses_pending_on_probe"] == 0
    # The dropped files' kernel windows keep the run whole.
    assert [(r["first_sequence"], r["last_sequence"]) for r in identity(probe, "kernel")["runs"]] == [(1, 4)]


def test_a_sequence_nobody_accounts_for_is_a_gap(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=3)
        add_file(session, 1, 5)
        add_file(session, 3, 5)
    document = run(sessions)
    probe = only_probe(document)
    assert probe["sequences"]["gaps"] == [[2, 2]] and not probe["ok"]
    assert document["exit_code"] == audit.EXIT_GAPS
    assert document["summary"]["gap_sequences"] == 1


def test_files_still_in_the_spool_are_pending_not_gaps(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=5, backlog_first=4, capturing=True)
        add_file(session, 1, 5)
        add_file(session, 2, 5)
        add_file(session, 3, 5, state=catalog.QUEUED)
        add_file(session, 7, 5)  # sealed after the last health report we have
    probe = only_probe(run(sessions))
    assert probe["sequences"]["pending_on_probe"] == [[4, 6]]
    assert probe["sequences"]["not_yet_ingested"] == [[3, 3]]
    assert probe["terms"]["not_yet_ingested"] == 5
    assert probe["ok"]


def test_a_run_that_does_not_balance_fails_the_kernel_identity(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=2)
        add_file(session, 1, 8, received=10)
        add_file(session, 2, 7, received=6)  # one packet the kernel saw is nowhere
    document = run(sessions)
    kernel = identity(only_probe(document), "kernel")
    assert not kernel["holds"] and kernel["difference"] == 1
    assert kernel["runs"][0]["status"] == "fails"
    assert document["exit_code"] == audit.EXIT_IDENTITY_FAILS


def test_carry_over_into_a_file_not_sealed_yet_is_open_while_capturing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=2, capturing=True)
        add_file(session, 1, 8, received=8)
        add_file(session, 2, 7, received=9)  # 2 packets wait in the ring for file 3
    kernel = identity(only_probe(run(sessions)), "kernel")
    assert kernel["holds"] and kernel["runs"][0]["status"] == "open"


def test_kernel_drops_count_as_seen(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=1)
        add_file(session, 1, 227, received=20000, dropped=19773)
    probe = only_probe(run(sessions))
    assert identity(probe, "kernel")["holds"] and probe["terms"]["kernel_dropped"] == 19773


def test_packets_lost_while_paused_belong_to_the_next_files_window(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=2, losses_recorded=1)
        add_file(session, 1, 5)
        add_loss(session, 1, "not-written", 30, after_sequence=1)
        add_file(session, 2, 5, received=35)  # its window spans the pause
    probe = only_probe(run(sessions))
    kernel = identity(probe, "kernel")
    assert kernel["holds"] and kernel["runs"][0]["lost_not_written"] == 30
    assert probe["terms"]["lost_not_written"] == 30 and probe["ok"]


def test_losses_not_delivered_yet_are_reported(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=1, losses_recorded=3)
        add_file(session, 1, 5)
        add_loss(session, 1, "not-written", 1, after_sequence=1)
    assert only_probe(run(sessions))["terms"]["losses_pending_on_probe"] == 2


def test_a_crash_cut_record_must_be_recorded_as_a_loss(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=2)
        add_file(session, 1, 5)
        add_file(session, 2, 3, repaired=True, truncated_bytes=40)
    probe = only_probe(run(sessions))
    written = identity(probe, "written")
    assert not written["holds"] and written["difference"] == 1
    # A repaired file's kernel counts are unknown: reported, not a failure.
    assert probe["terms"]["kernel_unknown_files"] == 1 and identity(probe, "kernel")["holds"]
    with sessions.begin() as session:
        add_loss(session, 1, "truncated-record", 1, sequence=2)
    probe = only_probe(run(sessions))
    assert identity(probe, "written")["holds"] and probe["sequences"]["truncated"] == [[2, 2]]
    assert probe["ok"]


def test_a_file_recorded_dropped_that_also_landed_fails(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=1)
        add_file(session, 1, 5)
        add_loss(session, 1, "dropped-file", 5, sequence=1, kernel_received=5, kernel_dropped=0)
    written = identity(only_probe(run(sessions)), "written")
    assert not written["holds"] and written["difference"] == -5


def test_rows_that_do_not_match_the_files_packets_fail_the_landed_identity(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=3)
        add_file(session, 1, 5, rows=4)  # a row missing from the dataset, and not skipped either
        add_file(session, 2, 6, state=catalog.FAILED, quarantined=6)
        add_file(session, 3, 2, state=catalog.FAILED)  # failed without quarantine
    probe = only_probe(run(sessions))
    landed = identity(probe, "landed")
    assert not landed["holds"] and landed["difference"] == 1
    assert probe["sequences"]["quarantined"] == [[2, 2]] and probe["sequences"]["ingest_failed"] == [[3, 3]]
    assert probe["terms"]["quarantined"] == 6 and probe["terms"]["ingest_failed"] == 2


def test_runs_are_per_interface_and_split_at_unknown_files(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=6)
        add_file(session, 1, 5, received=6, interface="eth0")
        add_file(session, 2, 5, received=5, interface="eth1")
        add_file(session, 3, 5, received=4, interface="eth0")
        add_file(session, 4, 0, repaired=True, interface="eth1")
        add_file(session, 5, 5, interface="eth0")
        add_file(session, 6, 5, interface="eth1")
    kernel = identity(only_probe(run(sessions)), "kernel")
    runs = [(r["interface"], r["first_sequence"], r["last_sequence"], r["status"]) for r in kernel["runs"]]
    assert runs == [
        ("eth0", 1, 3, "holds"),
        ("eth1", 2, 2, "holds"),
        ("eth0", 5, 5, "holds"),
        ("eth1", 6, 6, "holds"),
    ]


def test_one_probe_or_an_unknown_one(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=0)
        add_probe(session, probe_id="p-ffffffffffff")
    assert [p["probe_id"] for p in run(sessions)["probes"]] == [PROBE, "p-ffffffffffff"]
    assert [p["probe_id"] for p in run(sessions, PROBE)["probes"]] == [PROBE]
    with pytest.raises(UnknownProbeError):
        run(sessions, "p-000000000000")


def test_ranges() -> None:
    assert audit.ranges([5, 1, 2, 3, 9, 8]) == [[1, 3], [5, 5], [8, 9]]
    assert audit.format_ranges([[1, 3], [5, 5]]) == "1-3, 5"


def test_packets_a_stop_left_in_the_ring_balance_the_last_files_window(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=3, losses_recorded=1)
        add_file(session, 1, 5)
        add_file(session, 2, 5, received=9)  # the capture stopped with 4 packets in the ring
        add_loss(session, 1, "left-in-ring", 4, after_sequence=1)
        add_file(session, 3, 5)  # the next capture
    probe = only_probe(run(sessions))
    kernel = identity(probe, "kernel")
    assert kernel["holds"] and kernel["runs"][0]["lost_not_written"] == 4
    assert probe["terms"]["lost_left_in_ring"] == 4 and probe["terms"]["lost_not_written"] == 0


def test_a_difference_while_loss_records_are_still_on_the_probe_is_pending(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        # File 2 was repaired; its truncated-record loss (id 1) and a not-written loss (id 2) that
        # belongs to file 2's run have not arrived yet.
        add_probe(session, last_sealed=2, losses_recorded=2)
        add_file(session, 1, 5, received=5)
        add_file(session, 2, 5, received=9, truncated_bytes=7)
    document = run(sessions)
    probe = only_probe(document)
    assert probe["terms"]["losses_pending_on_probe"] == 2
    written, kernel = identity(probe, "written"), identity(probe, "kernel")
    assert (written["status"], written["holds"], written["difference"]) == ("pending", False, 1)
    assert kernel["status"] == "pending" and [r["status"] for r in kernel["runs"]] == ["pending"]
    assert document["exit_code"] == audit.EXIT_OK and probe["ok"]  # exit 3 before the fix
    assert document["summary"]["identities_failed"] == 0
    assert "written pending" in audit.render_text(document).replace("  ", " ")


def test_with_nothing_pending_the_same_difference_fails(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=2, losses_recorded=0)
        add_file(session, 1, 5, received=5)
        add_file(session, 2, 5, received=9, truncated_bytes=7)
    document = run(sessions)
    probe = only_probe(document)
    assert identity(probe, "written")["status"] == "fails"
    assert identity(probe, "kernel")["status"] == "fails"
    assert document["exit_code"] == audit.EXIT_IDENTITY_FAILS


def test_a_loss_of_a_kind_the_audit_does_not_know_is_reported(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=1, losses_recorded=2)
        add_file(session, 1, 5)
        add_loss(session, 1, "invalid", 0)
        add_loss(session, 2, "lost-in-space", 7)
    document = run(sessions)
    probe = only_probe(document)
    assert (probe["terms"]["unknown_kind_records"], probe["terms"]["lost_unknown_kind"]) == (2, 7)
    assert not probe["ok"] and not document["ok"]
    assert document["exit_code"] == audit.EXIT_GAPS
    assert "unknown_kind_records 2" in audit.render_text(document)


def test_a_huge_sequence_from_a_heartbeat_is_a_range_not_a_loop(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_probe(session, last_sealed=10**12, backlog_first=5)
        for sequence in (1, 2, 4, 6):
            add_file(session, sequence, 5)
        add_file(session, 9, 5, interface="eth1")
    probe = only_probe(run(sessions))  # looped to 10**12 before the fix
    assert probe["sequences"]["gaps"] == [[3, 3]]
    assert probe["sequences"]["pending_on_probe"] == [[5, 5], [7, 8], [10, 10**12]]
    runs = identity(probe, "kernel")["runs"]
    assert [(r["first_sequence"], r["last_sequence"], r["status"]) for r in runs] == [
        (1, 2, "holds"),
        (4, 4, "holds"),
        (6, 6, "holds"),
        (9, 9, "holds"),
    ]
