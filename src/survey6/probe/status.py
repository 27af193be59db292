"""The one-line terminal status of a running capture, and the summary printed when it ends."""

from __future__ import annotations

from survey6.probe.capture import CaptureStatus
from survey6.probe.spool import SpoolUsage


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def status_line(statuses: list[CaptureStatus], usage: SpoolUsage, quota_bytes: int, rate_pps: float) -> str:
    packets = sum(s.packets_written for s in statuses)
    dropped = sum(s.kernel.dropped + s.kernel.interface_dropped for s in statuses)
    lost = sum(s.packets_lost_spool_full for s in statuses)
    files = sum(s.files_sealed for s in statuses)
    states = ",".join(sorted({s.state for s in statuses}))
    return (
        f"{packets:,} packets  {rate_pps:,.0f}/s  kernel drops {dropped:,}  lost (spool full) {lost:,}  "
        f"files {files}  spool {_human_bytes(usage.used_bytes)}/{_human_bytes(quota_bytes)}  [{states}]"
    )


def summary(statuses: list[CaptureStatus], spool_dir: str) -> str:
    packets = sum(s.packets_written for s in statuses)
    files = sum(s.files_sealed for s in statuses)
    dropped = sum(s.kernel.dropped for s in statuses)
    if_dropped = sum(s.kernel.interface_dropped for s in statuses)
    lost = sum(s.packets_lost_spool_full for s in statuses)
    return (
        f"captured {packets:,} packets into {files} file(s) in {spool_dir}; "
        f"kernel dropped {dropped:,}, interface dropped {if_dropped:,}, lost to a full spool {lost:,}"
    )
