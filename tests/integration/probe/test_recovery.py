"""Files left open by a crash are sealed on start, keeping every whole record and every sequence."""

from __future__ import annotations

from pathlib import Path

import dpkt

from survey6.probe.capture import Provenance
from survey6.probe.metadata import read_sidecar
from survey6.probe.pcap import CaptureHandle
from survey6.probe.recovery import recover_open_files
from survey6.probe.spool import Spool

INFO = {"interface": "eth9", "link_type": 1, "snaplen_bytes": 65535, "precision": 1, "filter": "ip6"}


def spool_at(root: Path) -> Spool:
    spool = Spool(root, quota_bytes=1 << 30, min_free_bytes=0, policy="pause")
    spool.open()
    return spool


def write_records(path: Path, count: int) -> None:
    with CaptureHandle.dead(1, 65535) as handle, handle.open_dumper(path) as dumper:
        for index in range(count):
            dumper.write(1_700_000_000_000_000_000 + index, bytes(60) + index.to_bytes(4, "big"))
        dumper.flush()


def test_every_kind_of_leftover_is_sealed_in_sequence(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    missing, _ = spool.begin_file(INFO)  # crashed before creating the part file
    short, short_part = spool.begin_file(INFO)  # crashed before the header was complete
    short_part.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")
    partial, partial_part = spool.begin_file(INFO)  # crashed mid-record
    write_records(partial_part, 25)
    with open(partial_part, "ab") as stream:
        stream.write(b"\x00" * 11)

    recovered = recover_open_files(spool, Provenance(probe_id="p-7", labels={"site": "lab"}))

    assert [r.sequence for r in recovered] == [missing, short, partial] == [1, 2, 3]
    assert not list(spool.open_dir.iterdir())
    metas = [read_sidecar(r.sidecar) for r in recovered]
    assert [m.packets for m in metas] == [0, 0, 25]
    assert all(m.repaired for m in metas)
    assert metas[2].repaired_truncated_bytes == 11
    assert metas[2].interface.name == "eth9" and metas[2].probe_id == "p-7"
    assert metas[2].first_packet_time_ns == 1_700_000_000_000_000_000
    assert metas[2].last_packet_time_ns == 1_700_000_000_000_000_024
    with open(recovered[2].path, "rb") as stream:
        payloads = [frame[-4:] for _ts, frame in dpkt.pcap.Reader(stream)]
    assert payloads == [i.to_bytes(4, "big") for i in range(25)]
    with open(recovered[0].path, "rb") as stream:  # an empty but valid capture
        assert list(dpkt.pcap.Reader(stream)) == []
    assert spool.begin_file(INFO)[0] == 4


def test_recovery_is_a_no_op_on_a_clean_spool(tmp_path: Path) -> None:
    assert recover_open_files(spool_at(tmp_path), Provenance()) == []
