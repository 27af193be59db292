"""The spool's loss log as the audit needs it: ids, kinds, what travels on heartbeats, acknowledgement."""

from __future__ import annotations

import json
from pathlib import Path

import dpkt

from survey6.probe.agent import Agent, loss_message, record_ring_leftover
from survey6.probe.capture import Capture, CaptureOptions, Provenance
from survey6.probe.identity import Credentials, Identity
from survey6.probe.metadata import SCHEMA_VERSION, read_sidecar
from survey6.probe.pcap import CaptureHandle, KernelStats
from survey6.probe.pcapfile import repair_truncated
from survey6.probe.recovery import recover_open_files
from survey6.probe.settings import ProbeSettings
from survey6.probe.spool import Spool
from survey6.wire.v1 import capture_pb2

NO_KEYS = Credentials(b"", b"", b"")


def make_spool(root: Path, *, quota: int = 1 << 30, policy: str = "pause") -> Spool:
    spool = Spool(root, quota_bytes=quota, min_free_bytes=0, policy=policy)  # type: ignore[arg-type]
    spool.open()
    return spool


def seal_file(spool: Spool, packets: int, *, received: int) -> int:
    sequence, part = spool.begin_file({"interface": "eth0"})
    size = 24 + packets * 116
    part.write_bytes(b"\0" * size)
    spool.seal(
        sequence,
        capture_pb2.CaptureMetadata(
            sequence=sequence,
            packets=packets,
            captured_bytes=packets * 100,
            file_size_bytes=size,
            sha256_hex="ab" * 32,
            interface=capture_pb2.InterfaceFacts(name="eth0"),
            kernel_delta=capture_pb2.KernelCounters(received_packets=received, dropped_packets=2),
            file_format="pcap",
            schema_version=SCHEMA_VERSION,
        ),
    )
    return sequence


def test_a_dropped_file_keeps_its_kernel_window_in_the_loss(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, quota=2000, policy="drop-oldest")
    seal_file(spool, 10, received=13)
    seal_file(spool, 7, received=7)
    assert spool.make_room()
    (loss,) = spool.losses()
    assert loss["id"] == 1 and loss["kind"] == "dropped-file" and loss["sequence"] == 1
    assert loss["interface"] == "eth0" and loss["kernel"] == {
        "received": 13,
        "dropped": 2,
        "interface_dropped": 0,
    }
    message = loss_message(loss)
    assert message.HasField("kernel_delta") and message.kernel_delta.received_packets == 13
    assert (message.id, message.sequence, message.packets) == (1, 1, 10)


def test_packets_lost_while_full_name_the_interface_and_the_last_reserved_sequence(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    seal_file(spool, 1, received=1)
    spool.begin_file({"interface": "eth1"})  # another interface's file, open
    spool.record_lost_packets(42, "spool full (pause)", interface="eth0")
    (loss,) = spool.losses()
    assert (loss["kind"], loss["interface"], loss["after_sequence"], loss["sequence"]) == (
        "not-written",
        "eth0",
        2,
        None,
    )
    message = loss_message(loss)
    assert not message.HasField("kernel_delta") and message.sequence == 0 and message.after_sequence == 2


def test_records_wait_until_acknowledged_even_across_a_restart(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    for packets in (1, 2, 3):
        spool.record_lost_packets(packets, "spool full (pause)")
    assert [r["id"] for r in spool.unacknowledged_losses(2)] == [1, 2]
    spool.acknowledge_losses(2)
    assert [r["id"] for r in spool.unacknowledged_losses(100)] == [3]
    spool.acknowledge_losses(1)  # an older acknowledgement changes nothing
    spool.acknowledge_losses(99)  # nor one beyond what was recorded, past the records
    assert spool.state.losses_acknowledged_through == 3
    spool.record_lost_packets(4, "spool full (pause)")
    spool.close()
    again = make_spool(tmp_path)
    assert again.losses_recorded_total == 4
    assert [r["id"] for r in again.unacknowledged_losses(100)] == [4]


def test_old_logs_get_ids_and_kinds_and_a_torn_last_line_goes(tmp_path: Path) -> None:
    old = [
        {"time_ns": 1, "reason": "spool full: dropped oldest file", "sequence": 3, "packets": 5},
        {"time_ns": 2, "reason": "spool full (pause)", "sequence": None, "packets": 9},
    ]
    (tmp_path / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old) + '{"time_ns": 3, "rea')
    spool = make_spool(tmp_path)
    assert [(r["id"], r["kind"]) for r in spool.losses()] == [(1, "dropped-file"), (2, "not-written")]
    spool.record_lost_packets(1, "spool full (pause)")
    assert [r["id"] for r in spool.losses()] == [1, 2, 3]
    assert [r["id"] for r in spool.unacknowledged_losses(10)] == [1, 2, 3]


def test_a_crash_cut_record_is_a_recorded_loss_once(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    info = {"interface": "eth9", "link_type": 1, "snaplen_bytes": 65535, "precision": 1}
    sequence, part = spool.begin_file(info)
    with CaptureHandle.dead(1, 65535) as handle, handle.open_dumper(part) as dumper:
        for index in range(5):
            dumper.write(1_700_000_000_000_000_000 + index, bytes(60))
        dumper.flush()
    with open(part, "ab") as stream:
        stream.write(b"\x00" * 11)  # the start of a record header
    # A first repair that died after recording the loss, before cutting: it runs again.
    spool.record_truncated_record(sequence, 11)
    (ready,) = recover_open_files(spool, Provenance(probe_id="p-1"))
    losses = list(spool.losses())
    assert [(r["kind"], r["sequence"], r["packets"]) for r in losses] == [("truncated-record", sequence, 1)]
    assert spool.state.lost_packets_total == 1
    with open(ready.path, "rb") as stream:
        assert len(list(dpkt.pcap.Reader(stream))) == 5


def test_an_intact_part_file_loses_nothing(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    spool.begin_file({"interface": "eth9", "link_type": 1, "snaplen_bytes": 65535, "precision": 1})
    recover_open_files(spool, Provenance())
    assert list(spool.losses()) == [] and spool.state.lost_packets_total == 0


def test_the_backlog_starts_at_a_quiet_interfaces_open_file_below_the_sealed_ones(tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool")
    quiet, _ = spool.begin_file({"interface": "eth1"})  # still being written
    sealed = seal_file(spool, 3, received=3)
    spool.delivered(sealed)
    seal_file(spool, 2, received=2)
    agent = Agent(ProbeSettings(state_dir=tmp_path / "state"), Identity("p-1", "::1", 1, 2, 1000), NO_KEYS)
    agent.spool = spool
    health = agent.heartbeat_request().spool
    # Was the lowest in ready/ only (3): sequence 1 then looked like a gap to the audit.
    assert (health.backlog_first_sequence, health.last_sealed_sequence) == (quiet, 3)


def test_a_repair_stopped_after_its_cut_seals_with_the_recorded_cut(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    info = {"interface": "eth9", "link_type": 1, "snaplen_bytes": 65535, "precision": 1}
    sequence, part = spool.begin_file(info)
    with CaptureHandle.dead(1, 65535) as handle, handle.open_dumper(part) as dumper:
        for index in range(3):
            dumper.write(1_700_000_000_000_000_000 + index, bytes(60))
        dumper.flush()
    with open(part, "ab") as stream:
        stream.write(b"\x00" * 11)
    # A first repair recorded the loss and cut the file, then died before sealing.
    spool.record_truncated_record(sequence, 11)
    repair_truncated(part)
    (ready,) = recover_open_files(spool, Provenance(probe_id="p-1"))
    sealed = read_sidecar(ready.sidecar)
    # Was 0: the written identity then failed by the recorded packet.
    assert (sealed.packets, sealed.repaired_truncated_bytes) == (3, 11)
    assert [(r["kind"], r["packets"]) for r in spool.losses()] == [("truncated-record", 1)]


def test_the_ring_leftover_of_a_stopped_capture_is_recorded_in_its_last_files_run(tmp_path: Path) -> None:
    # The function the agent and the standalone capture command both call at a stop.
    spool = make_spool(tmp_path)
    options = CaptureOptions("lo", "ip6", 65535, 1 << 20, False, 60.0, 1 << 20)
    with CaptureHandle.dead(1, 65535) as handle:
        capture = Capture(handle, options, spool, Provenance(probe_id="p-1"))
        capture.status.kernel = KernelStats(20, 2, 0)
        capture.status.packets_written = 12
        capture.status.packets_lost_spool_full = 1
        capture.status.last_sealed_sequence = 6
        record_ring_leftover(spool, capture)
    (loss,) = spool.losses()
    assert (loss["kind"], loss["packets"], loss["interface"], loss["after_sequence"]) == (
        "left-in-ring",
        5,
        "lo",
        5,
    )
