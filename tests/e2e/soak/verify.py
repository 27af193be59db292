"""The soak's own oracle: which packets were sent, which landed, which reached Parquet, and which
injected fault explains each one that did not.

Independent of the server's audit: it reads the generator's send log, the landed pcaps and sidecars,
the probes' loss logs and the ``packets`` dataset (DuckDB), and nothing from the registry.
"""

from __future__ import annotations

import bisect
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOAK_SOURCE_HEX = "FD00005A00000000"  # fd00:5a::/64, the generator's sources (traffic.py)
SOAK_SOURCE = bytes.fromhex(SOAK_SOURCE_HEX)
ETHERNET_IPV6 = b"\x86\xdd"
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\xa1\xb2\x3c\x4d": ">",
}
UNEXPLAINED_LISTED = 20
# How far before and after a fault's window its losses may reach, in seconds. Before: the send log
# stamps a batch when its last frame is out, and a killed probe loses what was still in its ring.
# Spool full: the oldest file dropped may have been sealed a rotation or two before the uploads stopped.
MARGIN_BEFORE_S = {"probe-kill": 1.0, "link-flap": 0.5, "spool-full": 6.0}
MARGIN_AFTER_S = {"probe-kill": 0.5, "link-flap": 1.0, "spool-full": 6.0}


@dataclass
class ProbeFacts:
    """What one probe's artifacts say."""

    sent: int = 0
    landed_files: int = 0
    landed_sequences: list[int] = field(default_factory=list)
    landed_packets: int = 0  # the sidecars' counts
    pcap_records: int = 0  # counted in the landed files themselves
    captured_ids: Counter[int] = field(default_factory=Counter)
    repaired_files: int = 0
    id_ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # sequence: lowest, highest id
    parquet_rows: int = 0
    parquet_ids: Counter[int] = field(default_factory=Counter)
    losses: list[dict[str, Any]] = field(default_factory=list)


class SendLog:
    """The generator's batches: ``probe first last time_ns errors`` per line."""

    def __init__(self, path: Path) -> None:
        self.batches: dict[int, list[tuple[int, int, float]]] = {}
        for line in path.read_text().splitlines():
            probe, first, last, time_ns, _errors = (int(x) for x in line.split())
            self.batches.setdefault(probe, []).append((first, last, time_ns / 1e9))
        self._lasts = {p: [b[1] for b in batches] for p, batches in self.batches.items()}

    def sent(self, probe: int) -> int:
        batches = self.batches.get(probe)
        return batches[-1][1] if batches else 0

    def time_of(self, probe: int, packet_id: int) -> float:
        index = bisect.bisect_left(self._lasts[probe], packet_id)
        return self.batches[probe][index][2]


def pcap_soak_ids(path: Path) -> tuple[int, Counter[int]]:
    """Records in a pcap and the soak ids (flow labels of frames from the soak's sources) among them."""
    data = path.read_bytes()
    order = PCAP_MAGICS.get(data[:4])
    if order is None:
        raise ValueError(f"{path} is not a pcap file")
    (linktype,) = struct.unpack_from(f"{order}I", data, 20)
    records, ids, offset = 0, Counter[int](), 24
    while offset + 16 <= len(data):
        captured = struct.unpack_from(f"{order}I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        records += 1
        if linktype == 1 and frame[12:14] == ETHERNET_IPV6 and frame[22:30] == SOAK_SOURCE:
            ids[struct.unpack_from("!I", frame, 14)[0] & 0xFFFFF] += 1
    return records, ids


def read_landed(server_dir: Path, probe_id: str, facts: ProbeFacts) -> None:
    for pcap in sorted((server_dir / "landing" / probe_id).rglob("*.pcap")):
        sidecar = json.loads(pcap.with_suffix(".json").read_text())
        facts.landed_files += 1
        facts.landed_sequences.append(int(sidecar["sequence"]))
        facts.landed_packets += int(sidecar.get("packets", 0))
        facts.repaired_files += 1 if sidecar.get("repaired") else 0
        records, ids = pcap_soak_ids(pcap)
        facts.pcap_records += records
        facts.captured_ids.update(ids)
        if ids:
            facts.id_ranges[int(sidecar["sequence"])] = (min(ids), max(ids))


def read_parquet(datasets_dir: Path, facts_by_id: dict[str, ProbeFacts]) -> None:
    import duckdb

    if not list(datasets_dir.glob("packets/*/*/*.parquet")):
        return
    packets = f"read_parquet('{datasets_dir}/packets/*/*/*.parquet', hive_partitioning = true)"
    con = duckdb.connect()
    try:
        for probe_id, rows in con.execute(f"SELECT probe_id, count(*) FROM {packets} GROUP BY 1").fetchall():
            if probe_id in facts_by_id:
                facts_by_id[probe_id].parquet_rows = int(rows)
        query = (f"SELECT probe_id, flow_label, count(*) FROM {packets} "
                 f"WHERE hex(src) LIKE '{SOAK_SOURCE_HEX}%' GROUP BY 1, 2")  # fmt: skip
        for probe_id, flow_label, count in con.execute(query).fetchall():
            if probe_id in facts_by_id:
                facts_by_id[probe_id].parquet_ids[int(flow_label)] = int(count)
    finally:
        con.close()


def read_losses(spool_dir: Path) -> list[dict[str, Any]]:
    path = spool_dir / "losses.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_kind(entry: dict[str, Any]) -> str:
    """The loss record's kind; records written before kinds existed are told apart by their reason."""
    if "kind" in entry:
        return str(entry["kind"])
    reason = str(entry.get("reason", ""))
    if "dropped oldest" in reason:
        return "dropped-file"
    if reason.startswith("spool full"):
        return "not-written"
    return "truncated-record" if "truncat" in reason else reason


def loss_windows(events: list[dict[str, Any]], probe: int, losses: list[dict[str, Any]]
                 ) -> list[tuple[int, float, float]]:  # fmt: skip
    """(event index, from, to) for each fault on `probe` that may lose packets."""
    windows = []
    loss_times = sorted(int(e.get("time_ns", 0)) / 1e9 for e in losses)
    for index, event in enumerate(events):
        if event["probe"] != probe or event["loss"] == "none":
            continue
        begin, end = float(event["begin"]), float(event["end"])
        # A window never reaches into the next fault on the same probe: each loss has one cause.
        following = [float(e["begin"]) for e in events[index + 1 :] if e["probe"] == probe]
        limit = following[0] if following else float("inf")
        if event["kind"] == "spool-full":
            # Drops go on until the uploads have made room again, after the server is back.
            end = max([end, *(t for t in loss_times if begin <= t < limit)])
        kind = str(event["kind"])
        windows.append((index, begin - MARGIN_BEFORE_S[kind], min(end + MARGIN_AFTER_S[kind], limit)))
    return windows


def explain(probe: int, facts: ProbeFacts, send_log: SendLog, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every packet sent and not in Parquet, attributed to the fault whose window holds its send time."""
    sent = send_log.sent(probe)
    windows = loss_windows(events, probe, facts.losses)
    by_event: Counter[int] = Counter()
    unexplained: list[int] = []
    missing = 0
    for packet_id in range(1, sent + 1):
        if facts.parquet_ids.get(packet_id):
            continue
        missing += 1
        at = send_log.time_of(probe, packet_id)
        owner = next((index for index, start, stop in windows if start <= at <= stop), None)
        if owner is None:
            unexplained.append(packet_id)
        else:
            by_event[owner] += 1
    recorded = Counter[str]()
    for entry in facts.losses:
        recorded[loss_kind(entry)] += int(entry.get("packets", 0))
    in_spool_windows = sum(n for i, n in by_event.items() if events[i]["kind"] == "spool-full")
    return {
        "sent": sent,
        "captured": sum(facts.captured_ids.values()),
        "landed": facts.landed_packets,
        "pcap_records": facts.pcap_records,
        "in_parquet": facts.parquet_rows,
        "soak_rows_in_parquet": sum(facts.parquet_ids.values()),
        "files_landed": facts.landed_files,
        "files_repaired": facts.repaired_files,
        "duplicates": sum(n - 1 for n in facts.parquet_ids.values() if n > 1),
        "not_sent_but_seen": sorted(i for i in facts.parquet_ids if not 1 <= i <= sent)[:UNEXPLAINED_LISTED],
        "missing": missing,
        "missing_by_fault": [
            {"event": i, "kind": events[i]["kind"], "loss": events[i]["loss"], "packets": n}
            for i, n in sorted(by_event.items())
        ],
        "missing_in_spool_full_windows": in_spool_windows,
        "recorded_losses": dict(recorded),
        "recorded_spool_losses": recorded["dropped-file"] + recorded["not-written"],
        "unexplained": len(unexplained),
        "unexplained_ids": unexplained[:UNEXPLAINED_LISTED],
        "unexplained_send_times": [round(send_log.time_of(probe, i), 3) for i in unexplained[:5]],
        "sequence_problems": sequence_problems(facts),
    }


def sequence_problems(facts: ProbeFacts) -> list[str]:
    """Sequences must run from 1 to the highest, each landed or dropped (recorded), never both; and
    packets must follow sequence order across files."""
    landed = Counter(facts.landed_sequences)
    dropped = {
        int(e["sequence"]) for e in facts.losses if loss_kind(e) == "dropped-file" and e.get("sequence")
    }
    problems = [f"sequence {s} landed {n} times" for s, n in landed.items() if n > 1]
    problems += [f"sequence {s} landed and was recorded dropped" for s in sorted(dropped & set(landed))]
    previous: tuple[int, int] | None = None
    for sequence, (lowest, highest_id) in sorted(facts.id_ranges.items()):
        # One interface per probe: files in sequence order hold the packets in the order they were sent.
        if previous is not None and lowest <= previous[1]:
            problems.append(f"sequence {sequence} holds id {lowest}, not after id {previous[1]} of "
                            f"sequence {previous[0]}")  # fmt: skip
        previous = (sequence, highest_id)
    highest = max([*landed, *dropped], default=0)
    gaps = sorted(set(range(1, highest + 1)) - set(landed) - dropped)
    if gaps:
        problems.append(f"sequences neither landed nor recorded dropped: {gaps[:UNEXPLAINED_LISTED]}")
    return problems
